"""The stages of a run, one module each with one entry function (docs/internals.md)."""

from __future__ import annotations


class StageFailed(RuntimeError):
    """Some units of a stage failed; every other unit is committed and a re-run does only the rest."""

    def __init__(self, stage: str, failed: dict[str, str], again: str) -> None:
        self.stage, self.failed, self.again = stage, failed, again
        lines = [f"{stage}: {len(failed)} failed; everything else is committed"]
        lines += [f"  {key}: {error}" for key, error in sorted(failed.items())]
        super().__init__("\n".join(lines))
