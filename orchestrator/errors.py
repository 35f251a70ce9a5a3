"""The errors that many layers raise, below every module that raises them."""

from __future__ import annotations


class RunError(RuntimeError):
    """A problem the user must fix before the run can go on; nothing computed is lost."""


class DamagedRecord(RunError):
    """RUN/run.json is there but unreadable; the units beside it are not affected."""
