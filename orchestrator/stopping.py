"""SIGINT and SIGTERM over the whole life of a command: one line and exit 130 / 143, never a traceback.

One ``Stop`` takes both signals from the command's first instant (``orchestrator.__main__``,
before the heavy imports) until it returns:

- while only Python runs and nothing needs undoing (imports, parsing, the plan, the address
  check, a lease's ``--wait``), the first signal raises ``Interrupted`` at once;
- from Ray's start on (``Stop.defer``) it is only recorded, and raised where the driver polls
  (``Stop.check``): raised inside Ray's native code it would surface as a SystemError, or leave
  a half-started Ray behind;
- a signal after the first (a second Ctrl-C while the work in flight is cancelled and Ray shuts
  down) changes nothing: the stop under way finishes and says what is done;
- once the command has returned its exit status, a signal while the interpreter shuts down
  (its exit handlers take seconds with torch and Ray loaded) ends the process at once with that
  status; after the last exit handler signals are ignored, since Python's finalisation puts the
  default handlers back and a Ctrl-C would then kill the process with no word.

This module imports nothing but the standard library, so that it is in force before the rest
of the program is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The command got SIGINT or SIGTERM. A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` (the project's or a library's) takes it for an ordinary failure."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Stop:
    """The first signal received, if any (module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at_once = True
        self.exit_status: int | None = None  # set once the command is over

    def record(self, signum: int, frame: object) -> None:
        """The signal handler."""
        if self.exit_status is not None:
            _exit_now(self.exit_status)
        if self.signum is not None:
            return
        self.signum = signum
        if self.at_once:
            raise Interrupted(signum)

    def defer(self) -> None:
        """From now on, for the rest of the command, a signal is raised only by ``check``."""
        self.at_once = False

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def interrupted(self, exc: BaseException) -> Interrupted | None:
        """``exc`` as the interrupt it is, or follows from (an error raised because a signal broke
        into native code): None when no signal came."""
        if isinstance(exc, Interrupted):
            return exc
        return Interrupted(self.signum) if self.signum is not None else None


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a write the signal broke into may refuse a flush
            stream.flush()
    os._exit(status)


def _ignore_signals() -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


_IN_FORCE: list[Stop] = []


def program(body: Callable[[Stop], int]) -> int:
    """A program's ``body``, its exit status returned, with SIGINT and SIGTERM going to one Stop
    for the rest of the process (the program's entry points; ``handled`` joins it)."""
    stop = Stop()
    for s in SIGNALS:
        signal.signal(s, stop.record)
    _IN_FORCE.append(stop)
    atexit.register(_ignore_signals)  # exit handlers run in reverse: before the heavy imports, it runs last
    stop.exit_status = body(stop)
    return stop.exit_status


@contextlib.contextmanager
def handled() -> Iterator[Stop]:
    """The command's ``Stop``: the one in force already (nested calls share it), else a new one
    that SIGINT and SIGTERM go to until the context ends. A command run from another thread (an
    embedding program) leaves signals to that program: its Stop never fires."""
    if _IN_FORCE:
        yield _IN_FORCE[-1]
        return
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    saved = {s: signal.signal(s, stop.record) for s in SIGNALS}
    _IN_FORCE.append(stop)
    try:
        yield stop
    finally:
        _IN_FORCE.remove(stop)
        for s, handler in saved.items():
            signal.signal(s, handler)


def stopped_before_work(exc: Interrupted, again: str | None = None) -> str:
    """The line of a command stopped before it started any work (``again``: the command line, as
    it may be shown; None while it cannot be shown yet)."""
    return f"stopped by {exc.name} before any work started; " + (
        f"run again with: {again}" if again else "run the same command again")
