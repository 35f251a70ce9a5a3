"""The NAS stage: a committed synthetic set as a proxy for neural architecture search (paper 3.6).

Every architecture of a (seeded sample of the) paper's space of ConvNets is trained on each
proxy (the synthetic set; as many random real images; "early stopping": the whole training
set for as many steps as proxy training takes) and on the whole training set, and scored on a
validation split held out of train. A proxy is as good as the Spearman rank correlation, over
the top architectures by proxy accuracy, between its accuracies and the whole set's. Training
jobs go to an actor pool through the one Ray helper; every finished job's score is kept, so
an interrupted search resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console
from scipy.stats import spearmanr

from orchestrator import ray_work, storage
from orchestrator.config import NasSpace, RunConfig
from orchestrator.figures import plt, png
from orchestrator.run_dir import RunDir, RunError
from orchestrator.stages import StageFailed
from orchestrator.stages.evaluate import pool_capacity
from orchestrator.stages.training_sets import TrainingSet, load, training_set
from orchestrator.stages.worker_setup import check_gpus_usable, run_reader
from workers.data import normalize
from workers.devices import Precision, compute_device
from workers.networks import build_network
from workers.pool_training import train_size, validation_split
from workers.seeding import derive_seed
from workers.train_eval import (
    TrainSettings,
    fresh_network,
    score_networks,
    train_for_steps,
    train_network,
)

STAGE = "nas"
WHOLE = "whole"  # the whole training set: the reference every proxy is measured against
_ACT = {"sigmoid": "AS", "relu": "AR", "leakyrelu": "AL"}
_NORM = {"none": "NN", "batchnorm": "BN", "layernorm": "LN", "instancenorm": "IN", "groupnorm": "GN"}
_POOL = {"none": "NP", "maxpooling": "MP", "avgpooling": "AP"}


@dataclass(frozen=True)
class NasJob:
    architecture: str
    proxy: str  # synthetic | random | early_stopping | whole
    data: TrainingSet | None  # the proxy's images (None: the run's training split)
    epochs: int
    steps: int | None  # early stopping: as many steps as the proxy training takes

    @property
    def key(self) -> str:
        return f"{self.architecture} on {self.proxy}"


@dataclass(frozen=True)
class NasScore:
    architecture: str
    proxy: str
    accuracy: float  # on the validation split held out of train
    train_seconds: float


@dataclass(frozen=True)
class ProxyQuality:
    proxy: str
    spearman_top: float  # over the top architectures by proxy accuracy
    spearman_all: float
    selected: str  # the architecture the proxy ranks first
    selected_whole_accuracy: float  # that architecture's accuracy when trained on the whole set
    train_seconds: float  # every architecture trained on this proxy, summed


def architectures(space: NasSpace) -> list[str]:
    """The space's ConvNets by registry name (ConvNetD<depth>W<width><act><norm><pool>)."""
    return [f"ConvNetD{d}W{w}{_ACT[a]}{_NORM[n]}{_POOL[p]}" for d in space.depths for w in space.widths
            for a in space.activations for n in space.norms for p in space.pools]


def sampled(cfg: RunConfig, info_shape: tuple[int, int, int], num_classes: int) -> list[str]:
    """The architectures of the search (a seeded sample of nas.sample), each checked to build on
    the dataset's images before any task starts."""
    names = architectures(cfg.nas.space)
    if cfg.nas.sample is not None and cfg.nas.sample < len(names):
        picks = np.random.default_rng(derive_seed(cfg.nas.seed, "nas-sample")).choice(len(names), cfg.nas.sample,
                                                                                     replace=False)
        names = [names[i] for i in sorted(picks)]
    for name in names:
        try:
            build_network(name, info_shape[0], num_classes, info_shape[1:])
        except ValueError as exc:
            raise RunError(f"nas.space: {name} cannot be built for {info_shape[1]}x{info_shape[2]} images ({exc}); "
                           "remove the depth or pooling it needs from nas.space") from None
    return names


def settings_key(cfg: RunConfig, run: RunDir) -> str:
    n = cfg.nas
    shaping = {"epochs": n.epochs, "whole_epochs": n.whole_epochs, "batch": n.batch, "lr": n.lr,
               "validation_fraction": n.validation_fraction, "seed": n.seed, "run": run.record.config_hash,
               "precision": cfg.precision.model_dump()}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def nas(run: RunDir, console: Console) -> tuple[list[NasScore], list[ProxyQuality]]:
    """Train and score every architecture on every proxy and the whole set (only what is not
    scored yet); write RUN/nas/results.parquet and the scatter plot; return scores and qualities."""
    cfg, info = run.config, run.dataset
    names = sampled(cfg, (info.channels, *info.im_size), info.num_classes)
    proxies = {p: _proxy_set(run, p) for p in cfg.nas.proxies}
    proxy_size = max((_size(run, ts) for ts in proxies.values() if ts is not None), default=len(run.record.classes))
    proxy_steps, whole_steps = step_budget(cfg, [info.train_counts[c] for c in run.record.classes], proxy_size)
    if "early_stopping" in proxies and proxy_steps >= whole_steps:
        console.print(f"nas: early stopping trains {proxy_steps} steps and the whole set {whole_steps}: it is the "
                      "whole training, so it ranks as the whole set does by construction; raise nas.whole_epochs "
                      "(in the paper early stopping is about 2% of the whole training)", highlight=False)
    jobs = [NasJob(a, p, ts, cfg.nas.epochs, proxy_steps if p == "early_stopping" else None)
            for a in names for p, ts in proxies.items()]
    jobs += [NasJob(a, WHOLE, None, cfg.nas.whole_epochs, None) for a in names]
    folder = run.path("nas", "scores", settings_key(cfg, run))
    done = _stored(folder)
    todo = [j for j in jobs if j.key not in done]
    if done and todo:
        console.print(f"nas: {len(jobs) - len(todo)} of {len(jobs)} trainings were scored by an earlier attempt",
                      highlight=False)
    if todo:
        capacity, use_gpu = pool_capacity(cfg, ray_work.cluster_resources())  # the evaluation's actor pool
        gpus = 1.0 / cfg.evaluate.actors_per_gpu if use_gpu else 0.0
        check_gpus_usable(cfg.resources, gpus, "NAS actors (evaluate.gpus)")
        data = ray_work.compute_shared(read_train_split, run, options={"num_cpus": 1})
        outcome = ray_work.run_on_actors(
            NasActor, (run, folder, use_gpu), "train", [ray_work.Work(j.key, (j, data)) for j in todo],
            actors=capacity, options=ray_work.actor_options(cfg, gpus), label=STAGE, unit="trainings",
            console=console, done_units=len(jobs) - len(todo))
        if outcome.failed:
            raise StageFailed(STAGE, outcome.failed, again=f"dmcondense nas {run.uri}")
    scores = [s for key, s in _stored(folder).items() if key in {j.key for j in jobs}]
    qualities = proxy_qualities(scores, cfg.nas.top_fraction)
    storage.write_parquet_atomic(run.path("nas", "results.parquet"), pa.Table.from_pylist([asdict(s) for s in scores]))
    storage.write_bytes_atomic(run.path("nas", "proxy-vs-whole.png"), scatter_png(scores))
    return scores, qualities


def step_budget(cfg: RunConfig, train_counts: list[int], proxy_size: int) -> tuple[int, int]:
    """(proxy training steps, whole-set training steps); early stopping trains the first number.
    The whole set is the training split less what validation_split holds out of each class."""
    n = cfg.nas
    return (n.epochs * math.ceil(proxy_size / n.batch),
            n.whole_epochs * math.ceil(train_size(train_counts, n.validation_fraction) / n.batch))


def _proxy_set(run: RunDir, proxy: str) -> TrainingSet | None:
    if proxy == "synthetic":
        return training_set(run, "dm")
    if proxy == "random":
        return training_set(run, "random")
    return None  # early stopping trains on the training split


def _size(run: RunDir, ts: TrainingSet) -> int:
    return len(run.record.classes) * run.config.condense.ipc * (ts.factor**2)


def _stored(folder: str) -> dict[str, NasScore]:
    out = {}
    for name in storage.list_names(folder):
        if name.endswith(".json"):
            score = NasScore(**storage.read_json(storage.join(folder, name)))
            out[f"{score.architecture} on {score.proxy}"] = score
    return out


def read_train_split(run: RunDir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images, labels, whether each is held out for validation) of the whole training
    split: shared by every actor through the object store."""
    real = run_reader(run).read_train(run.record.classes)
    _, held_out = validation_split(real.labels.tolist(), run.config.nas.validation_fraction, run.config.nas.seed)
    mask = np.zeros(len(real.labels), dtype=bool)
    mask[held_out] = True
    return real.images.numpy(), real.labels.numpy(), mask


class NasActor:
    """Trains one architecture on one proxy per call; keeps the loaded sets."""

    def __init__(self, run: RunDir, folder: str, use_gpu: bool) -> None:
        torch.set_num_threads(1)
        self.run, self.folder = run, folder
        self.device = compute_device(run.config.resources.device, reserved_gpu=use_gpu)
        self._sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _split(self, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        if "train" in self._sets:
            return
        images, labels, held_out = data
        info = self.run.dataset
        with warnings.catch_warnings():  # the object store's arrays are read-only; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            x, y = torch.from_numpy(images), torch.from_numpy(labels)
        mask = torch.from_numpy(held_out)
        self._sets["train"] = (normalize(x[~mask], info.mean, info.std, device=self.device), y[~mask].to(self.device))
        self._sets["validation"] = (x[mask], y[mask])

    def train(self, job: NasJob, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> NasScore:
        self._split(data)
        if job.data is None:
            x, y = self._sets["train"]
        else:
            if job.proxy not in self._sets:
                self._sets[job.proxy] = tuple(t.to(self.device) for t in load(self.run, job.data))
            x, y = self._sets[job.proxy]
        cfg, info = self.run.config, self.run.dataset
        settings = TrainSettings(epochs=job.epochs, lr=cfg.nas.lr, batch=cfg.nas.batch,
                                 dsa_strategy=cfg.condense.dsa_strategy if job.proxy in ("synthetic", "random") else None,
                                 precision=Precision(tf32=cfg.precision.tf32, deterministic=cfg.precision.deterministic))
        seed = derive_seed(cfg.nas.seed, "nas-network", job.architecture)
        net = fresh_network(job.architecture, channels=info.channels, num_classes=info.num_classes,
                            im_size=tuple(info.im_size), seed=seed, device=self.device)
        started = time.perf_counter()
        if job.steps is not None:
            train_for_steps(net, x, y, settings, seed, job.steps)
        else:
            train_network(net, x, y, settings, seed)
        seconds = time.perf_counter() - started
        val_x, val_y = self._sets["validation"]
        [accuracy] = score_networks([net], val_x, val_y, settings, self.device, info.mean, info.std)
        score = NasScore(job.architecture, job.proxy, float(accuracy), seconds)
        name = hashlib.sha256(job.key.encode()).hexdigest()[:16]
        storage.write_json_atomic(storage.join(self.folder, f"{name}.json"), asdict(score))
        return score


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


def scatter_png(scores: list[NasScore]) -> bytes:
    whole = {s.architecture: 100 * s.accuracy for s in scores if s.proxy == WHOLE}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for proxy in dict.fromkeys(s.proxy for s in scores if s.proxy != WHOLE):
        mine = [s for s in scores if s.proxy == proxy and s.architecture in whole]
        ax.scatter([100 * s.accuracy for s in mine], [whole[s.architecture] for s in mine], s=12, label=proxy,
                   alpha=0.7)
    ax.set_xlabel("validation accuracy after proxy training (%)")
    ax.set_ylabel("validation accuracy after whole-set training (%)")
    ax.set_title("NAS: each point an architecture", fontsize=9)
    ax.legend(fontsize=8)
    return png(fig)
