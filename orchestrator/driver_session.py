"""What a command that writes a run (or pool) directory holds while it works, in this order:

1. the cluster answers (``--address``, RAY_ADDRESS) within ``ADDRESS_TIMEOUT_S``: nothing is
   written for a cluster that is not there;
2. the lease of every directory it writes (``orchestrator.lease``): a second driver stops at
   once, or waits with ``--wait``;
3. the Ray session;
4. SIGINT and SIGTERM turned into ``Interrupted``: the work in flight is cancelled (the one Ray
   helper cancels its tasks and kills its actors on the way out), what is committed stays, the
   leases are released, and the CLI says what is done and which command finishes;
5. a check of the leases between units: a driver whose lease was taken over stops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

from orchestrator import commands, lease, ray_work
from orchestrator.local_ray import check_reachable, ray_session
from orchestrator.run_dir import RunError


class Interrupted(Exception):
    """The driver got SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextlib.contextmanager
def driver_session(address: str | None, writes: Sequence[str], *, command: str, wait: bool = False,
                   notify: Callable[[str], None] = lambda message: None) -> Iterator[str]:
    """Yields where work runs (module docstring); ``writes``: the directories this command writes."""
    check_reachable(address)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(_lease(d, command, wait, notify)) for d in writes]
        where = stack.enter_context(ray_session(address))
        stop = stack.enter_context(_signals_interrupt())
        stack.enter_context(ray_work.guarded(lambda: [stop.check(), *(h.check() for h in held)]))
        yield where
        stop.check()  # a signal that came after the last unit still ends as an interrupt


def _lease(folder: str, command: str, wait: bool, notify: Callable[[str], None]) -> lease.Lease:
    """The directory's lease; a location that cannot be written is bad input, named here."""
    try:
        return lease.acquire(folder, command, wait=wait, notify=notify)
    except OSError as exc:
        raise RunError(f"cannot write {folder} ({str(exc).splitlines()[0]}); {commands.unwritable_fix(command)}") \
            from None


class _Stop:
    """The signal received, if any; ``check`` raises it as ``Interrupted`` where Python code runs.
    (Raised from the handler itself, it would surface inside Ray's native wait as a SystemError.)"""

    def __init__(self) -> None:
        self.signum: int | None = None

    def record(self, signum: int, frame: object) -> None:
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[_Stop]:
    """SIGINT and SIGTERM recorded, to stop the driver between two polls of its work (after Ray set
    its own handlers); a driver run from another thread (an embedding program) leaves signals to
    that program."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    saved = {s: signal.signal(s, stop.record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
