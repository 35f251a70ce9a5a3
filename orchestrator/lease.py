"""The lease on a run or pool directory: one driver writes a directory at a time.

The lease is the file ``lease.json`` in the directory: who holds it (host, process
id, command, since when), a random token, and the time of its last renewal. The
holder renews it from a background thread every ``renew_every_s``; a lease whose
renewals stopped for ``stale_after_s`` belongs to a dead driver and may be taken over.

Staleness is measured on the taker's own clock. Every renewal writes a new renewal
time, so the pair (token, renewal time) changes with each one, whatever the holder's
clock says; a driver that finds the lease held watches that pair and takes the lease
over once it has seen it unchanged for ``stale_after_s`` on its monotonic clock. The
holder's time stamps never decide staleness: a holder whose clock runs ahead is taken
over ``stale_after_s`` after it stopped (not never), and a live holder whose clock runs
behind renews while it is watched and keeps its lease. Those stamps serve messages and
one choice: a driver without ``wait`` refuses a lease that looks live at once, but
watches one last renewed more than ``stale_after_s`` ago by its holder's clock (a
driver that died a while ago, or a clock behind ours) before taking it over or, on
seeing a renewal, refusing.

Object stores have no atomic create-if-absent (pyarrow.fs exposes no conditional
write), so a driver claims the lease in four steps, the same on a local disk:

1. read the lease: a held one is refused, watched (above) or waited for with
   ``wait=True``; a free or stale one is claimed:
2. write its own record with a fresh token (atomically: complete or absent);
3. wait ``settle_s``;
4. read it back: the lease is its own only if the token is still its own;
   otherwise the other driver won and is the holder.

A holder on this host whose process is gone is stale at once (a killed driver resumed on the
same machine need not wait). A renewal reads the lease first: a different token (or none) means it was taken
over, and the holder marks itself lost (``Lease.lost``, ``Lease.check()`` raises
``LeaseLost``) instead of overwriting it. So does a holder that could not renew
for ``stale_after_s``, since by then another driver may have taken over.

When two drivers can both believe they hold it. With storage that reads back the
last completed write (local disks; S3 since 2020), two claims overlap only when a
lease write lands more than ``settle_s`` after the read that justified it: the
earlier claimer's read-back, ``settle_s`` after its own write, then still shows
its token. A claimer measures that delay from its read to its write's completion
and, when it exceeds ``settle_s``, waits one more renewal interval before its
read-back, by which time a live holder has renewed, seen the foreign token and
stepped down (or overwritten it, and the claimer refuses). What remains:

* a holder stalled (paused, swapped out, in a network write that took storage
  retries) between its renewal's read and its write overwrites a claim made in
  between, after the claimer's read-back: both hold until the claimer's next
  renewal, at most ``renew_every_s`` (plus that renewal's I/O) later;
* a holder stalled for over ``stale_after_s`` (no renewal landed while a taker
  watched) is legitimately taken over and holds, by its own belief, until its next
  renewal.

In each case the overlap ends at one driver's next renewal, and a driver that
checks ``Lease.check()`` between units commits nothing after it. Work already in
flight stays correct anyway: every unit is committed atomically (each file
under a temporary name, then moved onto its final name; then the manifest, with
every file's sha256, moved in last), so each file and each manifest is complete
whichever driver wrote it last. On the CPU a unit computed twice has the same
bytes, so both drivers write the same files and manifest. On CUDA the bytes
differ: the last writer's files and manifest are each complete, and if the last
files and the last manifest came from different drivers, the sha256 check of
every read reports the unit corrupt and the stage recomputes it; it is never
read as valid with foreign files.

Every reading of the time and every wait goes through a ``Clock`` (``SYSTEM_CLOCK``
unless given), so that tests run the protocol on virtual time.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator import storage
from orchestrator.errors import RunError

LEASE_FILE = "lease.json"
_READS, _REREAD_S = 4, 0.05  # re-reads of a torn record


class LeaseHeld(RunError):
    """Another live driver holds the directory's lease."""


class LeaseLost(RunError):
    """This driver's lease was taken over, or could not be renewed, while it worked."""


class Clock(Protocol):
    """Where the lease reads the time and waits."""

    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward: every duration the lease measures."""

    def wall(self) -> float:
        """Unix time: the stamps written in ``lease.json``, for messages."""

    def sleep(self, seconds: float) -> None: ...

    def every(self, interval_s: float, step: Callable[[], bool], name: str) -> Callable[[], None]:
        """Call ``step`` every ``interval_s`` until it returns False; the function returned stops
        that, waiting for a step in progress."""


class SystemClock:
    """The machine's clocks; ``every`` runs its steps on a daemon thread."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def every(self, interval_s: float, step: Callable[[], bool], name: str) -> Callable[[], None]:
        stopped = threading.Event()

        def loop() -> None:
            while not stopped.wait(interval_s) and step():
                pass

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()

        def stop() -> None:
            stopped.set()
            thread.join()

        return stop


SYSTEM_CLOCK = SystemClock()


class LeaseRecord(BaseModel):
    """The content of ``lease.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    host: str
    pid: int
    command: str
    since: float  # unix time of the claim, the holder's clock
    renewed: float  # unix time of the last renewal, the holder's clock: new at every renewal

    def holder(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {_clock(self.since)})"

    def stamp(self) -> tuple[str, float]:
        """What every renewal changes, whatever the holder's clock says."""
        return self.token, self.renewed

    def renewed_ago(self, now: float) -> str:
        """When it was last renewed, by its holder's clock against ``now`` (ours)."""
        age = now - self.renewed
        if age >= 0:
            return f"last renewed {_secs(age)} ago by its host's clock"
        return f"last renewed {_secs(-age)} in the future by its host's clock (the two clocks differ)"


@dataclass(frozen=True)
class LeaseTimings:
    renew_every_s: float = 20.0
    stale_after_s: float = 120.0  # several missed renewals: one slow or retried write is not death
    settle_s: float = 2.0  # far above one small write's latency; see the module docstring
    poll_every_s: float = 5.0  # while waiting or watching

    def __post_init__(self) -> None:
        if self.stale_after_s < 2 * self.renew_every_s:
            raise ValueError(f"stale_after_s ({self.stale_after_s}) must be at least twice renew_every_s "
                             f"({self.renew_every_s}) so that one late renewal is not taken for a dead holder")


class _Watch:
    """A lease as one taker has seen it, on the taker's clock: since when its stamp is
    unchanged, and whether it saw the stamp change (a live holder renewing, or a new one)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seen = False
        self._stamp: tuple[str, float] | None = None
        self._since = 0.0
        self.saw_change = False

    def unchanged_s(self, record: LeaseRecord | None) -> float:
        """Seconds this stamp has been seen unchanged, counting this look."""
        now, stamp = self._clock.monotonic(), None if record is None else record.stamp()
        if not self._seen or stamp != self._stamp:
            self.saw_change = self._seen
            self._seen, self._stamp, self._since = True, stamp, now
        return now - self._since


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _secs(s: float) -> str:
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


def _read(path: str, clock: Clock) -> LeaseRecord | None:
    """The lease, None when there is none.

    On an object store a read racing a rewrite can come back torn (the size comes
    from one request, the bytes from the next), so an unreadable record is read
    again; one that stays unreadable was written by something else.
    """
    for attempt in range(_READS):
        try:
            data = storage.read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            return LeaseRecord.model_validate_json(data)
        except ValidationError as exc:
            error = exc.errors()[0]["msg"]
        clock.sleep(_REREAD_S * (attempt + 1))
    raise LeaseHeld(f"{path} is not a lease this version reads ({error}); "
                    "if no other driver works in this directory, remove it")


def _dead_here(record: LeaseRecord) -> bool:
    """The holder ran on this host and its process is gone (killed): its lease is stale at once.
    A holder elsewhere, or whose process id is alive (or reused), is watched for ``stale_after_s``."""
    if record.host != socket.gethostname() or record.pid == os.getpid():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _looks_abandoned(record: LeaseRecord, timings: LeaseTimings, clock: Clock) -> bool:
    """Last renewed longer ago than ``stale_after_s`` by its holder's clock: worth watching
    (module docstring), never enough to take it over."""
    return clock.wall() - record.renewed > timings.stale_after_s


def _write(path: str, record: LeaseRecord) -> None:
    storage.write_json_atomic(path, record.model_dump(mode="json"))


def _held_message(folder: str, current: LeaseRecord, timings: LeaseTimings, clock: Clock) -> str:
    return (f"{folder} is in use: {current.holder()} holds its lease, {current.renewed_ago(clock.wall())}; "
            f"wait for it to finish, or pass --wait to wait here: if that process is dead, its lease is "
            f"taken over once no renewal of it has been seen for {_secs(timings.stale_after_s)}")


def _waiting_message(folder: str, current: LeaseRecord, timings: LeaseTimings, clock: Clock) -> str:
    return (f"waiting for {current.holder()} to release the lease of {folder} "
            f"({current.renewed_ago(clock.wall())}); it is taken over if no renewal of it is seen for "
            f"{_secs(timings.stale_after_s)}")


def _lost_message(folder: str, current: LeaseRecord | None) -> str:
    now = f"{current.holder()} holds it now" if current else "it is gone"
    return f"lost the lease of {folder}: {now}; stop writing there"


def _claim(path: str, mine: LeaseRecord, read_at: float, timings: LeaseTimings, clock: Clock) -> LeaseRecord | None:
    """Write ``mine``, let concurrent claims settle, and return whoever holds the lease after."""
    _write(path, mine)
    slow = clock.monotonic() - read_at > timings.settle_s
    # A slow write may have landed after another claimer's read-back: give a holder
    # that believes it won one renewal to see our token and step down.
    clock.sleep(timings.settle_s + (timings.renew_every_s if slow else 0.0))
    return _read(path, clock)


def acquire(folder: str, command: str, *, wait: bool = False, timings: LeaseTimings = LeaseTimings(),
            notify: Callable[[str], None] = lambda message: None, clock: Clock = SYSTEM_CLOCK) -> "Lease":
    """Hold ``folder``'s lease, renewed until released (use it as a context manager).

    A free lease, or a stale one (module docstring), is claimed. Another live holder:
    ``LeaseHeld`` at once, or with ``wait`` poll until it is free or stale. A lease taken
    over: ``notify`` hears so and ``Lease.took_over`` is the former holder. ``notify``
    also hears that this driver starts waiting (or watching) and that it lost the lease.
    """
    path = storage.join(folder, LEASE_FILE)
    watch = _Watch(clock)
    announced = False
    while True:
        read_at = clock.monotonic()
        current = _read(path, clock)
        unchanged_s = watch.unchanged_s(current)
        dead = current is not None and _dead_here(current)
        if current is None or dead or unchanged_s >= timings.stale_after_s:
            now = clock.wall()
            mine = LeaseRecord(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                               command=command, since=now, renewed=now)
            holder = _claim(path, mine, read_at, timings, clock)
            if holder is not None and holder.token == mine.token:
                if current is not None:
                    why = "its process is gone" if dead else f"no renewal of it seen for {_secs(unchanged_s)}"
                    notify(f"took over the lease of {folder} from {current.holder()}: {why}")
                return Lease(folder, holder, timings, current, notify, clock)
            if holder is None:
                continue  # the winner already released it: free again
            current = holder
            watch.unchanged_s(current)  # another driver's claim: a holder seen alive
        if not wait and (watch.saw_change or not _looks_abandoned(current, timings, clock)):
            raise LeaseHeld(_held_message(folder, current, timings, clock))
        if not announced:
            notify(_waiting_message(folder, current, timings, clock))
            announced = True
        clock.sleep(timings.poll_every_s)


class Lease:
    """A held lease, renewed every ``renew_every_s`` (``Clock.every``) until ``release``."""

    def __init__(self, folder: str, record: LeaseRecord, timings: LeaseTimings, took_over: LeaseRecord | None,
                 notify: Callable[[str], None], clock: Clock = SYSTEM_CLOCK) -> None:
        self.folder = folder
        self.record = record
        self.took_over = took_over  # the stale holder this driver replaced, if any
        self._path = storage.join(folder, LEASE_FILE)
        self._timings = timings
        self._notify = notify
        self._clock = clock
        self._lost: str | None = None
        self._renewed_at = clock.monotonic()
        self._stop_renewing = clock.every(timings.renew_every_s, self._renew_step, f"lease {folder}")

    @property
    def lost(self) -> str | None:
        """Why this driver no longer holds the lease; None while it does."""
        return self._lost

    def check(self) -> None:
        """Raise ``LeaseLost`` once the lease is no longer this driver's: call it between units."""
        if self._lost is not None:
            raise LeaseLost(self._lost)

    def release(self) -> None:
        """Stop renewing and remove the lease, unless another driver holds it by now."""
        self._stop_renewing()
        if self._lost is not None:
            return
        current = _read(self._path, self._clock)
        if current is not None and current.token == self.record.token:
            storage.remove(self._path)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew_step(self) -> bool:
        """One renewal; False once the lease is lost, which ends the renewals."""
        try:
            self._lost = self._renew()
            self._renewed_at = self._clock.monotonic()
        except OSError as exc:
            if self._clock.monotonic() - self._renewed_at > self._timings.stale_after_s:
                self._lost = (f"lost the lease of {self.folder}: not renewed for "
                              f"{_secs(self._timings.stale_after_s)} ({str(exc).splitlines()[0]}), "
                              "so another driver may have taken it over; stop writing there")
        except LeaseHeld as exc:  # replaced by something this version cannot read
            self._lost = str(exc)
        if self._lost is None:
            return True
        self._notify(self._lost)
        return False

    def _renew(self) -> str | None:
        """Renew; the reason it is lost when another driver holds it (read before writing)."""
        current = _read(self._path, self._clock)
        if current is None or current.token != self.record.token:
            return _lost_message(self.folder, current)
        self.record = self.record.model_copy(update={"renewed": self._clock.wall()})
        _write(self._path, self.record)
        return None
