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
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import pyarrow as pa

from orchestrator import storage
from orchestrator.artifacts.pool_networks import best_network, network_state
from orchestrator.fair_scores import (
    AugmentationAccuracies, LabelAccuracies, augmentation_robust_score, label_robust_score,
)
from orchestrator.artifacts.shards import snapshot_iteration
from orchestrator.artifacts.training_sets import data_key
from orchestrator.config import RunConfig
from orchestrator.pool_dir import PoolDir, pool_of
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
    # DD-Ranking's fair scores of this network's round (orchestrator.fair_scores; None: not computable)
    ior: float | None = None  # minus the random set's network of the same seed, same protocol
    hlr: float | None = None  # the real data's hard-label accuracy minus this set's, hard labels
    lrs: float | None = None  # their blend
    ars: float | None = None  # augmentation-robust: needs this round scored with and without augmentation
    protocol: str = "paper"  # evaluate.protocol that trained it (rows from before protocols: paper)

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
    ior: float | None = None  # the fair scores' means over the rounds, in percent (None: not for every round)
    hlr: float | None = None
    lrs: float | None = None
    ars: float | None = None


FAIR_SCORES = ("ior", "hlr", "lrs", "ars")


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


def teacher_identity(run: RunDir) -> str | None:
    """What makes the soft labels (None under hard labels): the pool network, or the torchvision
    architecture and the sha256 of its weights."""
    e = run.config.evaluate
    if e.labels == "hard":
        return None
    if e.teacher.source == "pool":
        pool = PoolDir.for_run(run.config, run.dataset)
        return f"pool {pool.record.key} net {best_network(pool)}"
    return f"{e.teacher.arch} {hashlib.sha256(storage.read_bytes(e.teacher.weights)).hexdigest()[:16]}"


def run_settings_key(run: RunDir, test_classes: list[int] | None = None) -> str:
    """The settings key of ``run``'s evaluation, its teacher included."""
    return settings_key(run.config, test_classes, teacher_identity(run))


def settings_key(cfg: RunConfig, test_classes: list[int] | None = None, teacher: str | None = None) -> str:
    """A key of every setting that shapes a score, the test classes included (None: all) and, under
    soft labels, the temperature and the teacher's identity, and the protocol; how the work is
    spread shapes none."""
    e = cfg.evaluate
    shaping = {"epochs": e.protocol_epochs, "batch": e.batch, "lr": e.protocol_lr, "vectorized": e.vectorized,
               "dsa_strategy": cfg.condense.dsa_strategy, "precision": cfg.precision.model_dump()}
    if test_classes is not None:
        shaping["test_classes"] = sorted(test_classes)
    if e.labels == "soft":  # hard-label keys stay as they were
        shaping.update(labels="soft", temperature=e.protocol_temperature, teacher=teacher)
    if not e.augment:  # so do augmented ones
        shaping["augment"] = False
    if e.protocol != "paper":  # and the paper protocol's
        shaping["protocol"] = e.protocol
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


def with_fair_scores(run: RunDir, scores: list[Score], test_classes: list[int] | None = None) -> list[Score]:
    """``scores`` with DD-Ranking's scores per round (one seed: the same network initialisation for
    every method): IOR against the random set's network of the same seed under the same protocol;
    HLR and LRS where the real data's accuracy (the pool's final states, on its validation split)
    and this set's hard-label score are known; ARS where the round is also scored with the other
    ``evaluate.augment``."""
    by_network = {s.network: s.accuracy for s in scores}
    hard = by_network if run.config.evaluate.labels == "hard" else {
        s.network: s.accuracy for s in hard_label_scores(run, test_classes)}
    other = {s.network: s.accuracy for s in other_augmentation_scores(run, test_classes)}
    real = real_accuracy(run)
    out = []
    for s in scores:
        rnd, syn_hard = by_network.get(("random", s.model, s.seed)), hard.get(s.network)
        fair = {"ior": s.accuracy - rnd if rnd is not None else None,
                "hlr": real - syn_hard if real is not None and syn_hard is not None else None}
        if fair["ior"] is not None and fair["hlr"] is not None:
            fair["lrs"] = label_robust_score(LabelAccuracies(real, syn_hard, s.accuracy, rnd)).lrs  # type: ignore[arg-type]
        fair["ars"] = _augmentation_robust(run.config.evaluate.augment, s.accuracy, rnd, other.get(s.network),
                                           other.get(("random", s.model, s.seed)))
        out.append(replace(s, **fair))
    return out


def _augmentation_robust(augmented: bool, syn: float, rnd: float | None, syn_other: float | None,
                         rnd_other: float | None) -> float | None:
    """ARS of one round from this protocol's accuracies and the other augmentation's (None: one missing)."""
    if rnd is None or syn_other is None or rnd_other is None:
        return None
    mine, theirs = (syn, rnd), (syn_other, rnd_other)
    (syn_aug, rnd_aug), (syn_plain, rnd_plain) = (mine, theirs) if augmented else (theirs, mine)
    return augmentation_robust_score(AugmentationAccuracies(syn_aug, rnd_aug, syn_plain, rnd_plain)).ars


def real_accuracy(run: RunDir) -> float | None:
    """acc(real, hard): the mean validation accuracy of the final states of the run's pool (networks
    trained on the whole training split with hard labels); None without a committed pool."""
    pool = pool_of(run.config, run.dataset) or PoolDir.for_run(run.config, run.dataset)
    finals = [st.manifest.val_accuracy[-1] for i in range(pool.networks)
              if (st := network_state(pool, i, deep=False)).state == "committed"]
    return statistics.fmean(finals) if finals else None


def hard_label_scores(run: RunDir, test_classes: list[int] | None = None) -> list[Score]:
    """The run's stored scores under its evaluation settings with hard labels (the paper protocol's)."""
    return _scores_under(run, test_classes, None, labels="hard", protocol="paper")


def other_augmentation_scores(run: RunDir, test_classes: list[int] | None = None) -> list[Score]:
    """The run's stored scores under its evaluation settings with the other ``evaluate.augment``."""
    return _scores_under(run, test_classes, teacher_identity(run), augment=not run.config.evaluate.augment)


def _scores_under(run: RunDir, test_classes: list[int] | None, teacher: str | None, **evaluate) -> list[Score]:
    cfg = run.config
    changed = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=evaluate)})
    return stored_scores(run, settings_key(changed, test_classes, teacher), data_keys(run))


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
    groups: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        groups.setdefault((s.method, s.model), []).append(s)
    return [Summary(method, model, len(group), statistics.fmean(100.0 * s.accuracy for s in group),
                    statistics.pstdev([100.0 * s.accuracy for s in group]),
                    *(_mean_of(group, name) for name in FAIR_SCORES))
            for (method, model), group in groups.items()]


def _mean_of(group: list[Score], name: str) -> float | None:
    values = [getattr(s, name, None) for s in group]  # continual's step scores carry none
    return 100.0 * statistics.fmean(values) if values and None not in values else None


@dataclass(frozen=True)
class EvaluationState:
    state: str  # done | unfinished | not run | not asked
    scored: int  # networks of the current settings scored so far
    planned: int


def evaluation_state(run: RunDir) -> EvaluationState:
    """What the run directory holds of the evaluation its config asks for (no file read but scores)."""
    cfg = run.config
    planned = planned_networks(cfg, asked_methods(cfg))
    scored = len({s.network for s in stored_scores(run, run_settings_key(run), data_keys(run))} & planned)
    if not planned:
        return EvaluationState("not asked", 0, 0)
    state = "done" if scored == len(planned) else "unfinished" if scored else "not run"
    return EvaluationState(state, scored, len(planned))
