"""The lease on a run directory, on a local disk and on S3 (a moto server on loopback)."""

from __future__ import annotations

import os
import socket
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

# Short, but stale only after many renewals: a loaded machine can stall one renewal by a second.
FAST = LeaseTimings(renew_every_s=0.2, stale_after_s=2.5, settle_s=0.3, poll_every_s=0.05)
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


def _lease_file(folder: str) -> str:
    return storage.join(folder, LEASE_FILE)


def _foreign(command: str, pid: int, renewed: float) -> LeaseRecord:
    return LeaseRecord(token=uuid.uuid4().hex, host="elsewhere", pid=pid, command=command, since=renewed - 50,
                       renewed=renewed)


def _put(folder: str, record: LeaseRecord) -> None:
    storage.write_json_atomic(_lease_file(folder), record.model_dump(mode="json"))


def _until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_second_driver_refuses_at_once_naming_the_holder_and_release_removes_the_lease(folder):
    with acquire(folder, "run", timings=FAST) as lease:
        assert lease.took_over is None and storage.exists(_lease_file(folder))
        started = time.monotonic()
        with pytest.raises(LeaseHeld) as refused:
            acquire(folder, "resume", timings=FAST)
        assert time.monotonic() - started < 1.0
    message = str(refused.value)
    assert isinstance(refused.value, RunError) and "\n" not in message
    for part in ("`run`", f"pid {os.getpid()}", socket.gethostname(), "since ", "last renewed", "--wait",
                 "taken over in"):
        assert part in message, part
    assert not storage.exists(_lease_file(folder))


def test_wait_acquires_once_the_holder_releases(folder):
    first = acquire(folder, "run", timings=FAST)
    released_at: list[float] = []

    def release_later() -> None:
        time.sleep(0.5)
        released_at.append(time.monotonic())
        first.release()

    threading.Thread(target=release_later).start()
    heard: list[str] = []
    with acquire(folder, "resume", wait=True, timings=FAST, notify=heard.append) as second:
        assert released_at and time.monotonic() >= released_at[0], heard
        assert second.took_over is None and second.record.command == "resume", (heard, first.lost)
    assert len(heard) == 1 and heard[0].startswith("waiting for `run`"), heard


def test_stale_lease_is_taken_over_and_the_taker_is_told(folder):
    _put(folder, _foreign("run", 4242, renewed=time.time()))
    with pytest.raises(LeaseHeld, match=r"pid 4242 on elsewhere.*taken over in [12]\.\ds"):
        acquire(folder, "resume", timings=FAST)
    time.sleep(FAST.stale_after_s)
    heard: list[str] = []
    with acquire(folder, "resume", timings=FAST, notify=heard.append) as lease:
        assert lease.took_over is not None and lease.took_over.pid == 4242
    assert len(heard) == 1 and "took over the lease" in heard[0] and "`run` (pid 4242 on elsewhere" in heard[0]


def test_renewal_keeps_a_live_lease_from_being_taken(folder):
    with acquire(folder, "run", timings=FAST) as lease:
        deadline = time.monotonic() + 1.5 * FAST.stale_after_s
        while time.monotonic() < deadline:
            with pytest.raises(LeaseHeld):
                acquire(folder, "resume", timings=FAST)
            time.sleep(0.1)
        assert lease.lost is None
        lease.check()


def test_a_holder_taken_over_notices_and_leaves_the_new_lease(folder):
    heard: list[str] = []
    with acquire(folder, "run", timings=FAST, notify=heard.append) as lease:
        _put(folder, _foreign("resume", 7, renewed=time.time()))
        assert _until(lambda: lease.lost is not None, 2.0)
        with pytest.raises(LeaseLost, match=r"`resume` \(pid 7 on elsewhere"):
            lease.check()
    assert heard == [lease.lost]
    assert LeaseRecord.model_validate_json(storage.read_bytes(_lease_file(folder))).pid == 7


def _reads_meet(monkeypatch, parties: int) -> None:
    """The first ``parties`` reads of a lease return only once all are done: every claimer finds it free."""
    meet, lock, waiting = threading.Barrier(parties), threading.Lock(), [parties]
    read = storage.read_bytes

    def first_reads_meet(uri: str) -> bytes:
        with lock:
            meets = waiting[0] > 0
            waiting[0] -= 1
        try:
            return read(uri)
        finally:
            if meets:
                meet.wait(timeout=5)

    monkeypatch.setattr(storage, "read_bytes", first_reads_meet)


def _claim_in_threads(folder: str, parties: int) -> tuple[list, list[str]]:
    held, refused = [], []

    def claim() -> None:
        try:
            held.append(acquire(folder, "run", timings=FAST))
        except LeaseHeld as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=claim) for _ in range(parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return held, refused


def test_claims_racing_on_a_free_lease_have_one_winner(folder, monkeypatch):
    """All read it free, all write their claim: the last write wins, the others refuse naming it."""
    _reads_meet(monkeypatch, 3)
    held, refused = _claim_in_threads(folder, 3)
    assert len(held) == 1 and len(refused) == 2
    winner = held[0]
    assert all(f"pid {os.getpid()}" in message for message in refused)
    time.sleep(2 * FAST.renew_every_s)
    assert winner.lost is None
    winner.release()
    assert not storage.exists(_lease_file(folder))


def test_a_claim_landing_late_never_overlaps_the_early_one(folder, monkeypatch):
    """The stated window: a claim written more than settle_s after its read. The late claimer
    waits one renewal before trusting its claim, so an early claimer that won has stepped down
    by then (or, slow itself, saw the late claim and refused)."""
    write, late = storage.write_json_atomic, threading.Event()

    def write_late_once(uri: str, obj: dict) -> None:
        if threading.current_thread().name == "late" and not late.is_set():
            late.set()
            time.sleep(FAST.settle_s + 0.2)  # the early claimer's read-back has passed by now
        write(uri, obj)

    monkeypatch.setattr(storage, "write_json_atomic", write_late_once)
    _reads_meet(monkeypatch, 2)
    stepped_down: list[float] = []
    early: list = []
    late_claim: list = []

    def claim_early() -> None:
        try:
            early.append(acquire(folder, "run", timings=FAST, notify=lambda _: stepped_down.append(time.monotonic())))
        except LeaseHeld:
            pass

    threads = [threading.Thread(target=claim_early),
               threading.Thread(target=lambda: late_claim.append((acquire(folder, "resume", timings=FAST),
                                                                  time.monotonic())), name="late")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ((second, second_at),) = late_claim
    assert second.lost is None
    for first in early:  # it won first: it stepped down before the late claim was trusted
        assert first.lost is not None and "`resume`" in first.lost
        assert stepped_down and stepped_down[0] < second_at
        first.release()
    second.release()
    assert not storage.exists(_lease_file(folder))


def test_drivers_taking_turns_never_overlap(folder):
    """Waiting drivers race for each release; one at a time gets it."""
    inside, most = [0], [0]
    lock = threading.Lock()

    def driver() -> None:
        for _ in range(2):
            with acquire(folder, "run", wait=True, timings=FAST) as lease:
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.05)
                lease.check()
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=driver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_a_holder_that_cannot_renew_steps_down(tmp_path, monkeypatch):
    """Past stale_after_s without a renewal another driver may have taken over: the holder stops."""
    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(attempts=2, first_delay_s=0.01, max_delay_s=0.01))
    flaky = Flaky(pafs.LocalFileSystem())
    with storage.mounted(pafs.PyFileSystem(flaky), str(tmp_path)) as base:
        lease = acquire(base, "run", timings=FAST)
        flaky.break_path(str(tmp_path / LEASE_FILE))
        assert _until(lambda: lease.lost is not None, 2 * FAST.stale_after_s)
        assert "not renewed for" in lease.lost and "connection refused" in lease.lost
        with pytest.raises(LeaseLost):
            lease.check()
        lease.release()


def test_a_lease_whose_process_died_on_this_host_is_taken_over_at_once(tmp_path):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    now = time.time()
    dead = LeaseRecord(token="t", host=socket.gethostname(), pid=gone.pid, command="dmcondense run (killed)",
                       since=now, renewed=now)
    folder = str(tmp_path / "run")
    storage.write_json_atomic(storage.join(folder, LEASE_FILE), dead.model_dump(mode="json"))
    heard = []
    with acquire(folder, "dmcondense resume", timings=FAST, notify=heard.append) as held:
        assert held.took_over == dead and "its process is gone" in heard[0]
