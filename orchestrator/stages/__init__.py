"""The stages of a run, one module each, peers that never import one another: each reads what
earlier stages committed through ``orchestrator.artifacts`` and commits its own units the same
way (docs/internals.md, "Stages")."""

from __future__ import annotations


class StageFailed(RuntimeError):
    """Some units of a stage failed after their retries; every other unit is committed and running
    the same command again computes only the rest (the CLI names that command)."""

    def __init__(self, stage: str, failed: dict[str, str]) -> None:
        self.stage, self.failed = stage, failed
        lines = [f"{stage}: {len(failed)} failed; everything else is committed"]
        lines += [f"  {key}: {error}" for key, error in sorted(failed.items())]
        super().__init__("\n".join(lines))
