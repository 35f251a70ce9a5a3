"""The one progress display of every stage: a live bar on a terminal, a plain line every
few seconds elsewhere (logs, CI, job submission), each with units done, ETA and a note.

The ETA is the pace of the units gained while this display runs: units done before it (finished
work, and the part of a resumed task that its checkpoint held) are not part of that pace."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressDisplay:
    def __init__(self, console: Console, label: str, total: int, unit: str, *, done: int = 0,
                 log_every_s: float = 15.0) -> None:
        self.console, self.label, self.unit = console, label, unit
        self.total = max(1, total)
        self.live = console.is_terminal
        self.log_every_s, self._last_log, self._started = log_every_s, 0.0, time.monotonic()
        self._start_units = self.completed = done
        self.resumed = 0  # units the running tasks' checkpoints held when they resumed
        self.note = ""
        self._logged: tuple[int, str] | None = None  # what the last plain line said
        self.bar = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(),
            TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"), TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console, disable=not self.live,
        )
        self.task = self.bar.add_task(label, total=self.total, completed=done, note="", eta="")

    def __enter__(self) -> "ProgressDisplay":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()
        if not self.live:
            self._log(force=True)

    def update(self, completed: int, note: str, resumed: int = 0) -> None:
        """``resumed``: of ``completed``, the units that running tasks found in their checkpoints."""
        self.completed, self.note, self.resumed = completed, note, resumed
        eta = self.eta_s()
        self.bar.update(self.task, completed=completed, note=note, eta="" if eta is None else f"ETA {eta:.0f} s")
        if not self.live:
            self._log()

    def eta_s(self) -> float | None:
        """Seconds left at the pace of the units gained so far; None before any is gained, or at the end."""
        gained = self.completed - self._start_units - self.resumed
        left = self.total - self.completed
        if gained <= 0 or left <= 0:
            return None
        return (time.monotonic() - self._started) * left / gained

    def print(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.log_every_s or self._logged == (self.completed, self.note):
            return
        self._last_log, self._logged = now, (self.completed, self.note)
        elapsed, left_s = now - self._started, self.eta_s()
        eta = "" if left_s is None else f", ETA {left_s:.0f} s"
        self.console.print(f"{self.label}: {self.completed:,}/{self.total:,} {self.unit}, {self.note}, "
                           f"{elapsed:.0f} s elapsed{eta}", highlight=False)
