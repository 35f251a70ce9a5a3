"""The NAS stage: a committed synthetic set as a proxy for neural architecture search (paper 3.6).

Every architecture of a (seeded sample of the) paper's space of ConvNets is trained on each
proxy (the synthetic set; as many random real images; "early stopping": the whole training
set for as many steps as proxy training takes) and on the whole training set, and scored on a
validation split held out of train. A proxy is as good as the Spearman rank correlation, over
the top architectures by proxy accuracy, between its accuracies and the whole set's. Training
jobs run as an actor stage (``orchestrator.stage_runner.ActorStage``); every finished job's
score is kept, so an interrupted search resumes.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from orchestrator.artifacts.nas_results import (
    WHOLE, NasScore, ProxyQuality, proxy_qualities, scores_folder, stored_scores, training_key, write_results,
    write_score,
)
from orchestrator.artifacts.training_sets import TrainingSet, load, training_set
from orchestrator.components.eval_pool import actor_pool
from orchestrator.components.pictures import draw_nas
from orchestrator.components.settings import Purpose, train_settings
from orchestrator.components.worker_setup import run_reader
from orchestrator.config import NasSpace, RunConfig
from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from orchestrator.stage_runner import ActorStage, Unit, run_units
from workers.data import normalize
from workers.devices import compute_device
from workers.networks import build_network, convnet_name
from workers.pool_training import train_size, validation_split
from workers.seeding import derive_seed
from workers.training.plain import fresh_network, train_for_steps, train_network
from workers.training.scoring import score_networks

STAGE = "nas"


@dataclass(frozen=True)
class NasJob:
    architecture: str
    proxy: str  # synthetic | random | early_stopping | whole
    data: TrainingSet | None  # the proxy's images (None: the run's training split)
    steps: int | None  # early stopping: as many steps as the proxy training takes

    @property
    def key(self) -> str:
        return training_key(self.architecture, self.proxy)

    @property
    def purpose(self) -> Purpose:
        """How it trains (components.settings): proxies like the evaluation, the training split not."""
        return {"early_stopping": "nas_early_stopping", WHOLE: "nas_whole"}.get(self.proxy, "nas_proxy")


def architectures(space: NasSpace) -> list[str]:
    """The space's ConvNets by registry name (ConvNetD<depth>W<width><act><norm><pool>)."""
    return [convnet_name(depth=d, width=w, act=a, norm=n, pool=p) for d in space.depths for w in space.widths
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
    jobs = [NasJob(a, p, ts, proxy_steps if p == "early_stopping" else None) for a in names for p, ts in proxies.items()]
    jobs += [NasJob(a, WHOLE, None, None) for a in names]
    folder = scores_folder(run)
    done = stored_scores(folder)
    todo = [j for j in jobs if j.key not in done]
    if done and todo:
        console.print(f"nas: {len(jobs) - len(todo)} of {len(jobs)} trainings were scored by an earlier attempt",
                      highlight=False)
    actors = actor_pool(cfg)  # as many as the evaluation's
    stage = ActorStage(STAGE, "trainings", NasActor, (run, folder, actors.use_gpu), "train", actors,
                       shared_task=(read_train_split, (run,)))
    units = [Unit(j.key, (j,), failure=run.job_failure(STAGE, j.key)) for j in todo]
    run_units(stage, units, console, done_units=len(jobs) - len(todo))
    scores = [s for key, s in stored_scores(folder).items() if key in {j.key for j in jobs}]
    write_results(run, scores)
    draw_nas(run, scores)
    return scores, proxy_qualities(scores, cfg.nas.top_fraction)


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
        settings = train_settings(cfg, job.purpose)
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
        [accuracy] = score_networks([net], val_x, val_y, info, settings, self.device)
        score = NasScore(job.architecture, job.proxy, float(accuracy), seconds)
        write_score(self.folder, score)
        return score
