"""The one progress display of every stage: a live bar on a terminal, a plain line every
few seconds elsewhere (logs, CI, job submission), each with units done, ETA and a note."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ProgressDisplay:
    def __init__(self, console: Console, label: str, total: int, unit: str, *, done: int = 0,
                 log_every_s: float = 15.0) -> None:
        self.console, self.label, self.unit = console, label, unit
        self.total = max(1, total)
        self.live = console.is_terminal
        self.log_every_s, self._last_log, self._started = log_every_s, 0.0, time.monotonic()
        self._start_units = self.completed = done
        self.note = ""
        self._logged: tuple[int, str] | None = None  # what the last plain line said
        self.bar = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(),
            TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"), TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not self.live,
        )
        self.task = self.bar.add_task(label, total=self.total, completed=done, note="")

    def __enter__(self) -> "ProgressDisplay":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()
        if not self.live:
            self._log(force=True)

    def update(self, completed: int, note: str) -> None:
        self.completed, self.note = completed, note
        self.bar.update(self.task, completed=completed, note=note)
        if not self.live:
            self._log()

    def print(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.log_every_s or self._logged == (self.completed, self.note):
            return
        self._last_log, self._logged = now, (self.completed, self.note)
        elapsed = now - self._started
        gained = self.completed - self._start_units
        left = self.total - self.completed
        eta = f", ETA {elapsed * left / gained:.0f} s" if gained > 0 and left > 0 else ""
        self.console.print(f"{self.label}: {self.completed:,}/{self.total:,} {self.unit}, {self.note}, "
                           f"{elapsed:.0f} s elapsed{eta}", highlight=False)
