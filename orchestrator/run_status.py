"""What a run directory says of every stage, read from the directory alone (no Ray, no dataset)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.run_dir import RunDir
from orchestrator.stages.baselines import selection_state
from orchestrator.stages.condense import shard_state
from orchestrator.stages.evaluate import EvaluationState, evaluation_state

STATES = ("committed", "in_progress", "failed", "corrupt", "pending")


@dataclass(frozen=True)
class ShardRow:
    shard: str
    state: str
    classes: list[int]
    rows: int | None
    wall_time_s: float | None
    detail: str


@dataclass(frozen=True)
class RunStatus:
    run: str
    config_hash: str
    shards: list[ShardRow]
    baselines: dict[str, int]  # method -> shards with a valid selection
    evaluation: EvaluationState

    @property
    def exit_code(self) -> int:
        """0 only when every shard is committed."""
        return 0 if all(r.state == "committed" for r in self.shards) else 1

    def shard_summary(self) -> str:
        counts = {s: sum(r.state == s for r in self.shards) for s in STATES}
        return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def run_status(run: RunDir) -> RunStatus:
    rows = []
    for spec in run.shards:
        st = shard_state(run, spec)
        m = st.manifest
        rows.append(ShardRow(spec.name, st.state, list(spec.class_ids), m.rows if m else None,
                             m.wall_time_s if m else None, st.detail))
    baselines = {method: sum(selection_state(run, spec, method).state == "committed" for spec in run.shards)
                 for method in run.config.evaluate.baselines}
    return RunStatus(run.uri, run.record.config_hash, rows, baselines, evaluation_state(run))
