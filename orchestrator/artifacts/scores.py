"""The evaluation's score store in the run directory.

Every finished job writes its networks' scores at once to RUN/eval/scores/<settings key>/
(one file per job), keyed by every setting that shapes a score (``evaluation_plan.settings_key``)
and, per row, by the identity of the data the network trained on. They are kept: a stopped
evaluation resumes with the networks not scored yet, and one asked for a new method or model
trains only those. RUN/eval/results.parquet is the table of the current settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from collections.abc import Iterable, Mapping

import pyarrow as pa

from orchestrator import storage
from orchestrator.artifacts.shards import snapshot_iteration
from orchestrator.evaluation_plan import Network, asked_methods, planned_networks
from orchestrator.run_dir import RunDir
from workers.data.tensor_table import from_parquet_bytes


@dataclass(frozen=True)
class Score:
    """One trained and scored network."""

    method: str
    model: str
    seed: int
    accuracy: float  # top-1 on the real test split, in [0, 1]
    ipc: int
    train_seconds: float
    device: str
    settings: str  # evaluation_plan.settings_key() of the evaluation that trained it
    data: str  # identity of the set it trained on (TrainingSet.data_key)
    # DD-Ranking's fair scores of this network's round (orchestrator.fair_scores; None: not computable)
    ior: float | None = None  # minus the random set's network of the same seed, same protocol
    hlr: float | None = None  # the real data's hard-label accuracy minus this set's, hard labels
    lrs: float | None = None  # their blend
    ars: float | None = None  # augmentation-robust: needs this round scored with and without augmentation
    protocol: str = "paper"  # evaluate.protocol that trained it (rows from before protocols: paper)

    @property
    def network(self) -> Network:
        return (self.method, self.model, self.seed)


def write_job_scores(run: RunDir, scores: list[Score]) -> None:
    """One file per finished job, named by its networks (a rerun of the job rewrites it)."""
    first = scores[0]
    name = hashlib.sha256(f"{first.data}|{first.method}|{first.model}|{first.seed}".encode()).hexdigest()[:16]
    uri = storage.join(run.scores_dir(first.settings), f"{name}.parquet")
    storage.write_parquet_atomic(uri, pa.Table.from_pylist([asdict(s) for s in scores]))


def stored_scores(run: RunDir, key: str, current: Mapping[str, str]) -> list[Score]:
    """Scores under settings ``key`` of networks trained on the current data of their method
    (``current``: method -> data key; snapshot methods always count)."""
    folder = run.scores_dir(key)
    rows: dict[tuple[str, str, int], Score] = {}
    for name in storage.list_names(folder):
        if name.endswith(".parquet"):
            for row in from_parquet_bytes(storage.read_bytes(storage.join(folder, name))).to_pylist():
                score = Score(**row)
                if current.get(score.method, score.data) == score.data:
                    rows[score.network] = score
    return list(rows.values())


def write_results(run: RunDir, scores: Iterable[Score]) -> None:
    storage.write_parquet_atomic(run.results(), pa.Table.from_pylist([asdict(s) for s in scores]))


def read_results(run: RunDir) -> list[Score]:
    """The rows of RUN/eval/results.parquet ([] before any evaluation)."""
    if not storage.exists(run.results()):
        return []
    return [Score(**row) for row in from_parquet_bytes(storage.read_bytes(run.results())).to_pylist()]


def result_order(score: Score) -> tuple:
    """dm first, then its kept checkpoints (dm@200 before dm@1000), then the baselines by name."""
    iteration = snapshot_iteration(score.method)
    if score.method == "dm":
        rank: tuple = (0, "", 0)
    elif iteration is not None:
        rank = (1, "", iteration)
    else:
        rank = (2, score.method, 0)
    return (*rank, score.model, score.seed)


@dataclass(frozen=True)
class EvaluationState:
    state: str  # done | unfinished | not run | not asked
    scored: int  # networks of the current settings scored so far
    planned: int


def evaluation_state(run: RunDir) -> EvaluationState:
    """What the run directory holds of the evaluation its config asks for (no file read but scores)."""
    if not run.resolved.ready:  # its teacher's pool is not trained yet: nothing is scored
        planned = planned_networks(run.config, asked_methods(run.config))
        return EvaluationState("not run" if planned else "not asked", 0, len(planned))
    plan = run.resolved.evaluation
    planned = plan.planned
    scored = len({s.network for s in stored_scores(run, plan.settings_key, plan.data_keys)} & planned)
    if not planned:
        return EvaluationState("not asked", 0, 0)
    state = "done" if scored == len(planned) else "unfinished" if scored else "not run"
    return EvaluationState(state, scored, len(planned))
