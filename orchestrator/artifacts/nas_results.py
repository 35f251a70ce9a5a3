"""The NAS proxy's results: one score per (architecture, proxy) under RUN/nas/scores/<settings key>/,
kept so that a search resumes; RUN/nas/results.parquet and the scatter plot; the proxies'
quality (Spearman rank correlation with the whole set's accuracies)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import pyarrow as pa
from scipy.stats import spearmanr

from orchestrator import storage
from orchestrator.config import RunConfig
from orchestrator.run_dir import RunDir

WHOLE = "whole"  # the whole training set: the reference every proxy is measured against


@dataclass(frozen=True)
class NasScore:
    architecture: str
    proxy: str
    accuracy: float  # on the validation split held out of train
    train_seconds: float

    @property
    def key(self) -> str:
        return training_key(self.architecture, self.proxy)


@dataclass(frozen=True)
class ProxyQuality:
    proxy: str
    spearman_top: float  # over the top architectures by proxy accuracy
    spearman_all: float
    selected: str  # the architecture the proxy ranks first
    selected_whole_accuracy: float  # that architecture's accuracy when trained on the whole set
    train_seconds: float  # every architecture trained on this proxy, summed


def training_key(architecture: str, proxy: str) -> str:
    return f"{architecture} on {proxy}"


def settings_key(cfg: RunConfig, run: RunDir) -> str:
    """Every setting that shapes a NAS score, the run's images included."""
    n = cfg.nas
    shaping = {"epochs": n.epochs, "whole_epochs": n.whole_epochs, "batch": n.batch, "lr": n.lr,
               "validation_fraction": n.validation_fraction, "seed": n.seed, "run": run.record.units_key,
               "precision": cfg.precision.model_dump()}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def scores_folder(run: RunDir) -> str:
    return run.path("nas", "scores", settings_key(run.config, run))


def write_score(folder: str, score: NasScore) -> None:
    name = hashlib.sha256(score.key.encode()).hexdigest()[:16]
    storage.write_json_atomic(storage.join(folder, f"{name}.json"), asdict(score))


def stored_scores(folder: str) -> dict[str, NasScore]:
    """Every score kept in ``folder``, by training key."""
    out = {}
    for name in storage.list_names(folder):
        if name.endswith(".json"):
            score = NasScore(**storage.read_json(storage.join(folder, name)))
            out[score.key] = score
    return out


def write_results(run: RunDir, scores: list[NasScore]) -> None:
    storage.write_parquet_atomic(run.path("nas", "results.parquet"), pa.Table.from_pylist([asdict(s) for s in scores]))


def proxy_qualities(scores: list[NasScore], top_fraction: float) -> list[ProxyQuality]:
    """Per proxy: the Spearman rank correlation between its accuracies and the whole set's,
    over the top ``top_fraction`` of architectures by proxy accuracy (at least two) and over
    all of them; the architecture it would select, with its whole-set accuracy."""
    whole = {s.architecture: s.accuracy for s in scores if s.proxy == WHOLE}
    out = []
    for proxy in dict.fromkeys(s.proxy for s in scores if s.proxy != WHOLE):
        mine = sorted((s for s in scores if s.proxy == proxy and s.architecture in whole),
                      key=lambda s: (-s.accuracy, s.architecture))
        if len(mine) < 2:
            continue
        top = mine[: max(2, math.ceil(top_fraction * len(mine)))]
        out.append(ProxyQuality(
            proxy, _spearman(top, whole), _spearman(mine, whole), mine[0].architecture,
            whole[mine[0].architecture], sum(s.train_seconds for s in mine)))
    return out


def _spearman(scores: list[NasScore], whole: dict[str, float]) -> float:
    proxy, reference = [s.accuracy for s in scores], [whole[s.architecture] for s in scores]
    if len(set(proxy)) < 2 or len(set(reference)) < 2:
        return 0.0  # a proxy (or a reference) that ranks nothing apart correlates with nothing
    return float(spearmanr(proxy, reference).statistic)
