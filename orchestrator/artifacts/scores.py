"""The evaluation's scores in the run directory, and which networks a config asks for.

Every finished job writes its networks' scores at once to RUN/eval/scores/<settings key>/
(one file per job), keyed by every setting that shapes a score and, per row, by the
identity of the data the network trained on. They are kept: a stopped evaluation
resumes with the networks not scored yet, and one asked for a new method or model
trains only those. RUN/eval/results.parquet is the table of the current settings.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable

import pyarrow as pa

from orchestrator import storage
from orchestrator.artifacts.shards import snapshot_iteration
from orchestrator.artifacts.training_sets import data_key
from orchestrator.config import RunConfig
from orchestrator.run_dir import RunDir
from workers.data.tensor_table import from_parquet_bytes
from workers.seeding import derive_seed

Network = tuple[str, str, int]  # (method, model, seed)


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
    settings: str  # settings_key() of the evaluation that trained it
    data: str  # identity of the set it trained on (TrainingSet.data_key)

    @property
    def network(self) -> Network:
        return (self.method, self.model, self.seed)


@dataclass(frozen=True)
class Summary:
    method: str
    model: str
    n: int
    mean: float  # percent
    std: float


def asked_methods(cfg: RunConfig) -> list[str]:
    return ["dm", *cfg.evaluate.baselines]


def data_keys(run: RunDir) -> dict[str, str]:
    """The identity of the current data of every method the config asks for (no file read)."""
    return {m: data_key(run, m) for m in asked_methods(run.config)}


def model_seeds(cfg: RunConfig, model: str) -> list[int]:
    """The same seeds for every method, so that comparisons are paired."""
    return [derive_seed(cfg.seed, "eval", model, i) for i in range(cfg.evaluate.num_models)]


def planned_networks(cfg: RunConfig, methods: list[str]) -> set[Network]:
    return {(m, model, s) for model in cfg.evaluate.models for s in model_seeds(cfg, model) for m in methods}


def settings_key(cfg: RunConfig, test_classes: list[int] | None = None) -> str:
    """A key of every setting that shapes a score, the test classes included (None: all); how
    the work is spread shapes none."""
    e = cfg.evaluate
    shaping = {"epochs": e.epochs, "batch": e.batch, "lr": e.lr, "vectorized": e.vectorized,
               "dsa_strategy": cfg.condense.dsa_strategy, "precision": cfg.precision.model_dump()}
    if test_classes is not None:
        shaping["test_classes"] = sorted(test_classes)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def write_job_scores(run: RunDir, scores: list[Score]) -> None:
    """One file per finished job, named by its networks (a rerun of the job rewrites it)."""
    first = scores[0]
    name = hashlib.sha256(f"{first.data}|{first.method}|{first.model}|{first.seed}".encode()).hexdigest()[:16]
    uri = storage.join(run.scores_dir(first.settings), f"{name}.parquet")
    storage.write_parquet_atomic(uri, pa.Table.from_pylist([asdict(s) for s in scores]))


def stored_scores(run: RunDir, key: str, current: dict[str, str]) -> list[Score]:
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


def summarize(scores: Iterable[Score]) -> list[Summary]:
    """mean +- std (percent, population std) per (method, model), in the order methods first appear."""
    groups: dict[tuple[str, str], list[float]] = {}
    for s in scores:
        groups.setdefault((s.method, s.model), []).append(100.0 * s.accuracy)
    return [Summary(method, model, len(accs), statistics.fmean(accs), statistics.pstdev(accs))
            for (method, model), accs in groups.items()]


@dataclass(frozen=True)
class EvaluationState:
    state: str  # done | unfinished | not run | not asked
    scored: int  # networks of the current settings scored so far
    planned: int


def evaluation_state(run: RunDir) -> EvaluationState:
    """What the run directory holds of the evaluation its config asks for (no file read but scores)."""
    cfg = run.config
    planned = planned_networks(cfg, asked_methods(cfg))
    scored = len({s.network for s in stored_scores(run, settings_key(cfg), data_keys(run))} & planned)
    if not planned:
        return EvaluationState("not asked", 0, 0)
    state = "done" if scored == len(planned) else "unfinished" if scored else "not run"
    return EvaluationState(state, scored, len(planned))
