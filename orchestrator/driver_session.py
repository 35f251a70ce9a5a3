"""What a command that writes a run (or pool) directory holds while it works, in this order:

1. the cluster answers (``--address``, RAY_ADDRESS) as a Ray cluster within
   ``ADDRESS_TIMEOUT_S``: nothing is written, no lease taken, for a cluster that is not there;
2. the lease of every directory it writes (``orchestrator.lease``): a second driver stops at
   once, or waits with ``--wait``;
3. the Ray session;
4. SIGINT and SIGTERM as ``orchestrator.stopping`` says: until Ray starts a signal stops the
   command at once; from then on it is raised between two polls of the work, which cancels the
   work in flight (the one Ray helper cancels its tasks and kills its actors on the way out);
   what is committed stays, Ray shuts down, the leases are released, and the CLI says what is
   done and which command finishes;
5. a check of the leases between units: a driver whose lease was taken over stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence

from orchestrator import commands, lease, ray_work, stopping, storage
from orchestrator.local_ray import check_reachable, ray_session
from orchestrator.errors import RunError


@contextlib.contextmanager
def driver_session(address: str | None, writes: Sequence[str], *, command: str, wait: bool = False,
                   notify: Callable[[str], None] = lambda message: None) -> Iterator[str]:
    """Yields where work runs (module docstring); ``writes``: the directories this command writes."""
    with stopping.handled() as stop:
        check_reachable(address)
        with contextlib.ExitStack() as stack:
            held = [stack.enter_context(_lease(d, command, wait, notify)) for d in writes]
            stop.defer()
            where = _start_ray(stack, address, stop)
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
    except stopping.Interrupted:
        _withdraw_claim(folder)
        raise


def _withdraw_claim(folder: str) -> None:
    """Remove the lease record this process wrote when a signal cut its claim short (a claim
    settles for seconds before it is held, and only a held lease is released)."""
    path = storage.join(folder, lease.LEASE_FILE)
    try:
        record = lease.LeaseRecord.model_validate(storage.read_json(path))
    except (OSError, ValueError):  # none, or not one this version wrote: not this claim's
        return
    if record.pid == os.getpid() and record.host == socket.gethostname():
        storage.remove(path)


def _start_ray(stack: contextlib.ExitStack, address: str | None, stop: stopping.Stop) -> str:
    """The Ray session, shut down with the stack; a signal during its start stops the command once
    it has started (or failed to: Ray's own SIGTERM handler, in force while it starts, exits with
    status 15)."""
    try:
        where = stack.enter_context(ray_session(address))
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        raise stopping.Interrupted(signal.SIGTERM) from None
    stop.check()
    return where
