"""What a run directory says of every stage, read from the directory alone (no Ray, no dataset).

Each committed unit's files are checked against its manifest by their lengths (one stat each,
nothing read), or with ``verify`` by their sha256 (every byte read: on object storage, every
byte downloaded)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import commits
from orchestrator.artifacts.pool_networks import network_state
from orchestrator.artifacts.scores import EvaluationState, evaluation_state
from orchestrator.artifacts.selections import selection_state
from orchestrator.artifacts.shards import shard_state
from orchestrator.run_dir import RunDir

STATES = ("committed", "in_progress", "failed", "corrupt", "foreign", "pending")


@dataclass(frozen=True)
class ShardRow:
    shard: str
    state: str
    classes: list[int]
    rows: int | None
    wall_time_s: float | None
    detail: str


@dataclass(frozen=True)
class PoolStatus:
    uri: str
    committed: int  # networks with a valid commit
    networks: int  # asked for
    states: int  # kept states of the committed networks


@dataclass(frozen=True)
class RunStatus:
    run: str
    config_hash: str
    shards: list[ShardRow]
    baselines: dict[str, int]  # method -> shards with a valid selection
    evaluation: EvaluationState
    pool: PoolStatus | None  # the pool the run reads, if any

    @property
    def exit_code(self) -> int:
        """0 only when every shard is committed."""
        return 0 if all(r.state == "committed" for r in self.shards) else 1

    def shard_summary(self) -> str:
        counts = {s: sum(r.state == s for r in self.shards) for s in STATES}
        return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def run_status(run: RunDir, verify: bool = False) -> RunStatus:
    rows = []
    for spec in run.shards:
        st = commits.verified(run, shard_state(run, spec, deep=False), hashes=verify)
        m = st.manifest
        rows.append(ShardRow(spec.name, st.state, list(spec.class_ids), m.rows if m else None,
                             m.wall_time_s if m else None, st.detail))
    baselines = {method: sum(commits.verified(run, selection_state(run, spec, method, deep=False),
                                              hashes=verify).state == "committed" for spec in run.shards)
                 for method in run.config.evaluate.baselines}
    return RunStatus(run.uri, run.record.config_hash, rows, baselines, evaluation_state(run),
                     _pool_status(run, verify))


def _pool_status(run: RunDir, verify: bool) -> PoolStatus | None:
    pool = run.resolved.pool
    if pool is None:
        return None
    states = [commits.verified(pool, network_state(pool, i, deep=False), hashes=verify) for i in range(pool.networks)]
    manifests = [st.manifest for st in states if st.state == "committed"]
    return PoolStatus(pool.uri, len(manifests), pool.networks, sum(len(m.steps) for m in manifests))
