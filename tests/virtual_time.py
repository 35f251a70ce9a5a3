"""Virtual time for the lease tests: the protocol's waits and renewals without sleeping.

``VirtualTime`` is one timeline shared by threads that take turns: one runs at a time,
and a thread that sleeps gives the turn to whoever wakes first (ties: first come),
the time jumping to that moment. Periodic steps (``every``: a lease's renewals) run
at their moments on the way. What a thread does between two sleeps (its reads and
writes) thus takes no virtual time and is never interleaved with another's: a test
makes a race happen on purpose, by sleeping inside a storage call.

The thread that makes a ``VirtualTime`` holds the first turn; ``spawn`` adds threads
and ``join`` hands the turn over until they end. ``clock(skew_s)`` is a
``orchestrator.lease.Clock`` on this timeline whose wall clock is off by ``skew_s``:
a host whose clock runs ahead (positive) or behind.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Entry:
    when: float
    seq: int
    thread: threading.Thread | None = field(default=None, compare=False)  # a sleeper to wake, or:
    step: Callable[[], bool] | None = field(default=None, compare=False)  # a step, again while it returns True
    interval: float = field(default=0.0, compare=False)
    stopped: bool = field(default=False, compare=False)


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.epoch = time.time()  # the wall clock at virtual time 0
        self._cond = threading.Condition()
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._turn: threading.Thread | None = threading.current_thread()
        self._errors: list[BaseException] = []

    def clock(self, skew_s: float = 0.0) -> "VirtualClock":
        return VirtualClock(self, skew_s)

    def sleep(self, seconds: float) -> None:
        me = threading.current_thread()
        with self._cond:
            assert self._turn is me, f"{me.name} runs without the turn"
            self._push(_Entry(self.now + seconds, next(self._seq), thread=me))
            self._pass_turn()
            self._cond.wait_for(lambda: self._turn is me)

    def every(self, interval_s: float, step: Callable[[], bool]) -> Callable[[], None]:
        entry = _Entry(self.now + interval_s, next(self._seq), step=step, interval=interval_s)
        with self._cond:
            self._push(entry)

        def stop() -> None:
            entry.stopped = True

        return stop

    def at(self, delay_s: float, action: Callable[[], object]) -> None:
        """``action()`` once, ``delay_s`` from now."""
        def once() -> bool:
            action()
            return False

        self.every(delay_s, once)

    def spawn(self, target: Callable[[], object], name: str | None = None) -> threading.Thread:
        """A thread that runs ``target`` when its turn comes (after the threads spawned before it)."""
        def run() -> None:
            with self._cond:
                self._cond.wait_for(lambda: self._turn is thread)
            try:
                target()
            except BaseException as exc:  # raised again by join
                self._errors.append(exc)
            finally:
                with self._cond:
                    self._pass_turn()

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._cond:
            self._push(_Entry(self.now, next(self._seq), thread=thread))
        thread.start()
        return thread

    def join(self, *threads: threading.Thread) -> None:
        """Hand the turn over until every spawned thread has ended (``threads`` among them), take it back."""
        me = threading.current_thread()
        with self._cond:
            self._pass_turn()
        for thread in threads:
            thread.join()
        with self._cond:
            self._cond.wait_for(lambda: self._turn is None)
            self._turn = me
        if self._errors:
            raise self._errors.pop(0)

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, entry)

    def _pass_turn(self) -> None:
        """Run the steps due up to the first sleeper's moment, then wake it; no sleeper: nobody runs."""
        while any(e.thread is not None for e in self._heap):
            entry = heapq.heappop(self._heap)
            if entry.stopped:
                continue
            self.now = max(self.now, entry.when)
            if entry.thread is not None:
                self._turn = entry.thread
                self._cond.notify_all()
                return
            if entry.step():
                entry.when += entry.interval
                self._push(entry)
        self._turn = None
        self._cond.notify_all()


@dataclass(frozen=True)
class VirtualClock:
    """A host's clocks on a ``VirtualTime``: its monotonic clock is the timeline, its wall clock off by ``skew_s``."""

    time: VirtualTime
    skew_s: float = 0.0

    def monotonic(self) -> float:
        return self.time.now

    def wall(self) -> float:
        return self.time.epoch + self.time.now + self.skew_s

    def sleep(self, seconds: float) -> None:
        self.time.sleep(seconds)

    def every(self, interval_s: float, step: Callable[[], bool], name: str) -> Callable[[], None]:
        return self.time.every(interval_s, step)
