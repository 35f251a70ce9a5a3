"""The lease on a run directory, on a local disk and on S3 (a moto server on loopback).

The protocol runs on virtual time (tests/virtual_time.py) with the production timings: no
test sleeps, so none depends on how loaded the machine is, and a host whose clock runs
ahead or behind is a wall-clock skew of its ``Clock``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
import uuid

import pyarrow.fs as pafs
import pytest

from orchestrator import storage
from orchestrator.lease import LEASE_FILE, LeaseHeld, LeaseLost, LeaseRecord, LeaseTimings, acquire
from orchestrator.run_dir import RunError

from .conftest import moto_s3
from .flaky_fs import Flaky
from .virtual_time import VirtualTime

T = LeaseTimings()  # renew every 20 s, stale after 120 s, settle 2 s, poll every 5 s: free on virtual time
SKEWS = {"in-step": 0.0, "ahead": 3600.0, "behind": -3600.0}  # the holder's wall clock against the taker's
BUCKET = "dmc-lease"


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/run?endpoint_override={endpoint}&scheme=http"


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


def _lease_file(folder: str) -> str:
    return storage.join(folder, LEASE_FILE)


def _foreign(command: str, pid: int, renewed: float) -> LeaseRecord:
    """A lease written by a driver on another host, never renewed after ``renewed`` (its clock)."""
    return LeaseRecord(token=uuid.uuid4().hex, host="elsewhere", pid=pid, command=command, since=renewed - 50,
                       renewed=renewed)


def _put(folder: str, record: LeaseRecord) -> None:
    storage.write_json_atomic(_lease_file(folder), record.model_dump(mode="json"))


def _on_disk(folder: str) -> LeaseRecord:
    return LeaseRecord.model_validate_json(storage.read_bytes(_lease_file(folder)))


def test_second_driver_refuses_at_once_naming_the_holder_and_release_removes_the_lease(folder, vt):
    clock = vt.clock()
    with acquire(folder, "run", timings=T, clock=clock) as lease:
        assert lease.took_over is None and storage.exists(_lease_file(folder))
        held_at = vt.now
        with pytest.raises(LeaseHeld) as refused:
            acquire(folder, "resume", timings=T, clock=clock)
        assert vt.now == held_at  # refused without waiting at all
    message = str(refused.value)
    assert isinstance(refused.value, RunError) and "\n" not in message
    for part in ("`run`", f"pid {os.getpid()}", socket.gethostname(), "since ", "last renewed 2.0s ago by its host's clock", "--wait",
                 "taken over once no renewal of it has been seen for 120s"):
        assert part in message, part
    assert not storage.exists(_lease_file(folder))


@pytest.mark.parametrize("skew", SKEWS.values(), ids=SKEWS)
def test_a_live_holder_keeps_its_lease_whatever_its_clock(folder, vt, skew):
    """Renewing, it is refused to a driver without --wait (at once, or on its first renewal
    seen when its stamps look abandoned) and never taken over by one waiting."""
    holder = acquire(folder, "run", timings=T, clock=vt.clock(skew))
    taker, held_at = vt.clock(), vt.now
    with pytest.raises(LeaseHeld, match=r"`run` \(pid"):
        acquire(folder, "resume", timings=T, clock=taker)
    if skew < 0:  # an hour old by its stamps: watched until a renewal shows it alive
        assert 0 < vt.now - held_at <= T.renew_every_s + T.poll_every_s
    else:
        assert vt.now == held_at
    release_at = vt.now + 3 * T.stale_after_s
    vt.at(3 * T.stale_after_s, holder.release)
    heard: list[str] = []
    with acquire(folder, "resume", wait=True, timings=T, notify=heard.append, clock=taker) as second:
        assert vt.now >= release_at and second.took_over is None and holder.lost is None
    assert len(heard) == 1 and heard[0].startswith("waiting for `run`") and "seen for 120s" in heard[0], heard


@pytest.mark.parametrize("skew", SKEWS.values(), ids=SKEWS)
def test_a_dead_holder_is_taken_over_once_seen_unchanged_for_the_promised_time(folder, vt, skew):
    """Measured on the taker's clock: a holder whose clock ran ahead is not held forever; the time
    the refusal promises is the time --wait takes."""
    clock = vt.clock()
    _put(folder, _foreign("run", 4242, renewed=clock.wall() + skew))
    wait = skew >= 0  # its stamps look live: refused at once, naming the time --wait takes
    if wait:
        with pytest.raises(LeaseHeld, match=r"pid 4242 on elsewhere") as refused:
            acquire(folder, "resume", timings=T, clock=clock)
        assert vt.now == 0.0
        promised = float(re.search(r"no renewal of it has been seen for (\d+)s", str(refused.value)).group(1))
    else:  # an hour old by its stamps: watched without --wait, for the same time
        promised = T.stale_after_s
    heard: list[str] = []
    with acquire(folder, "resume", wait=wait, timings=T, notify=heard.append, clock=clock) as lease:
        claimed_after = vt.now - T.settle_s
        assert promised <= claimed_after < promised + T.poll_every_s
        assert lease.took_over is not None and lease.took_over.pid == 4242 and lease.record.command == "resume"
    assert len(heard) == 2 and heard[0].startswith("waiting for `run` (pid 4242 on elsewhere"), heard
    assert heard[1].startswith(f"took over the lease of {folder} from `run` (pid 4242 on elsewhere")
    assert heard[1].endswith("no renewal of it seen for 120s")


def test_a_holder_taken_over_notices_and_leaves_the_new_lease(folder, vt):
    heard: list[str] = []
    clock = vt.clock()
    with acquire(folder, "run", timings=T, notify=heard.append, clock=clock) as lease:
        _put(folder, _foreign("resume", 7, renewed=clock.wall()))
        vt.sleep(T.renew_every_s)
        with pytest.raises(LeaseLost, match=r"`resume` \(pid 7 on elsewhere"):
            lease.check()
    assert heard == [lease.lost]
    assert _on_disk(folder).pid == 7


def _reads_meet(monkeypatch, vt: VirtualTime, parties: int) -> None:
    """The first ``parties`` reads of a lease hand the turn on: every claimer reads before any writes."""
    read, left = storage.read_bytes, [parties]

    def read_then_yield(uri: str) -> bytes:
        try:
            return read(uri)
        finally:
            if left[0] > 0:
                left[0] -= 1
                vt.sleep(0.0)

    monkeypatch.setattr(storage, "read_bytes", read_then_yield)


def test_claims_racing_on_a_free_lease_have_one_winner(folder, vt, monkeypatch):
    """All read it free, all write their claim: the last write wins, the others refuse naming it."""
    _reads_meet(monkeypatch, vt, 3)
    clock, held, refused = vt.clock(), [], []

    def claim() -> None:
        try:
            held.append(acquire(folder, "run", timings=T, clock=clock))
        except LeaseHeld as exc:
            refused.append(str(exc))

    vt.join(*[vt.spawn(claim) for _ in range(3)])
    assert len(held) == 1 and len(refused) == 2
    assert all(f"pid {os.getpid()}" in message for message in refused)
    winner = held[0]
    vt.sleep(3 * T.renew_every_s)
    assert winner.lost is None and _on_disk(folder).token == winner.record.token
    winner.release()
    assert not storage.exists(_lease_file(folder))


def test_a_claim_landing_late_never_overlaps_the_early_one(folder, vt, monkeypatch):
    """The stated window: a claim written more than settle_s after its read. The late claimer
    waits one renewal before trusting its claim, so the early claimer that won has stepped down
    by then."""
    write, slowed = storage.write_json_atomic, []

    def write_late_once(uri: str, obj: dict) -> None:
        if threading.current_thread().name == "late" and not slowed:
            slowed.append(vt.now)
            vt.sleep(T.settle_s + 1.0)  # the early claimer's read-back has passed by now
        write(uri, obj)

    monkeypatch.setattr(storage, "write_json_atomic", write_late_once)
    _reads_meet(monkeypatch, vt, 2)
    clock, stepped_down, early, late = vt.clock(), [], [], []
    vt.join(vt.spawn(lambda: early.append(acquire(folder, "run", timings=T, clock=clock,
                                                  notify=lambda _: stepped_down.append(vt.now)))),
            vt.spawn(lambda: late.append((acquire(folder, "resume", timings=T, clock=clock), vt.now)), name="late"))
    ((first,),) = (early,)
    ((second, second_at),) = late
    assert slowed and second.lost is None
    assert first.lost is not None and "`resume`" in first.lost
    assert stepped_down and stepped_down[0] < second_at
    first.release()
    second.release()
    assert not storage.exists(_lease_file(folder))


def test_drivers_taking_turns_never_overlap(folder, vt):
    """Waiting drivers take each release in turn; one at a time holds it."""
    clock, inside, most, turns = vt.clock(), [0], [0], []

    def driver() -> None:
        for _ in range(2):
            with acquire(folder, "run", wait=True, timings=T, clock=clock) as lease:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                vt.sleep(30.0)  # work across a renewal
                lease.check()
                inside[0] -= 1
                turns.append(lease.record.token)

    vt.join(*[vt.spawn(driver) for _ in range(3)])
    assert most[0] == 1 and len(set(turns)) == 6


def test_a_holder_that_cannot_renew_steps_down(tmp_path, vt, monkeypatch):
    """Past stale_after_s without a renewal another driver may have taken over: the holder stops."""
    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(attempts=2, first_delay_s=0.01, max_delay_s=0.01))
    flaky = Flaky(pafs.LocalFileSystem())
    with storage.mounted(pafs.PyFileSystem(flaky), str(tmp_path)) as base:
        lease = acquire(base, "run", timings=T, clock=vt.clock())
        flaky.break_path(str(tmp_path / LEASE_FILE))
        vt.sleep(T.stale_after_s)
        assert lease.lost is None  # failed renewals, but not yet for stale_after_s
        vt.sleep(2 * T.renew_every_s)
        assert "not renewed for 120s" in lease.lost and "connection refused" in lease.lost
        with pytest.raises(LeaseLost):
            lease.check()
        lease.release()


def test_a_lease_whose_process_died_on_this_host_is_taken_over_at_once(tmp_path, vt):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    clock = vt.clock()
    dead = LeaseRecord(token="t", host=socket.gethostname(), pid=gone.pid, command="dmcondense run (killed)",
                       since=clock.wall(), renewed=clock.wall())
    folder = str(tmp_path / "run")
    _put(folder, dead)
    heard = []
    with acquire(folder, "dmcondense resume", timings=T, notify=heard.append, clock=clock) as held:
        assert held.took_over == dead and heard[0].endswith("its process is gone")
        assert vt.now == T.settle_s  # no watch: only the claim's settling


def test_the_system_clock_renews_from_a_thread_until_released(tmp_path):
    """The one test on real time: its bound is generous, nothing in it is a race."""
    folder = str(tmp_path / "run")
    lease = acquire(folder, "run", timings=LeaseTimings(renew_every_s=0.05, stale_after_s=60.0, settle_s=0.01))
    first = lease.record.renewed
    deadline = time.monotonic() + 30.0
    while _on_disk(folder).renewed == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _on_disk(folder).renewed > first
    lease.release()
    assert lease.lost is None and not storage.exists(_lease_file(folder))
    assert not any(t.name == f"lease {folder}" for t in threading.enumerate())
