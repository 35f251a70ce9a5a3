"""The evaluation actor pool: actors that train fresh networks on a set and score them on a
real test split, run as an actor stage (``orchestrator.stage_runner.ActorStage``) by the
evaluate stage (class-incremental learning's too) and, with actors of its own, the NAS proxy.

The test split is decoded once, by one task, and shared through Ray's object store
(one copy per node); each actor reads the training sets straight from the run
directory. An actor that dies is restarted by Ray and its job run again
(``resources.max_retries``); every finished job's scores are written at once
(``orchestrator.artifacts.scores``), so an evaluation that stops for any reason resumes
with only the networks not scored yet.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from orchestrator import faults, ray_work
from orchestrator.artifacts.scores import Score, write_job_scores
from orchestrator.artifacts.training_sets import TrainingSet, load
from orchestrator.components.settings import set_settings
from orchestrator.components.teacher import teacher_bytes, teacher_spec
from orchestrator.components.worker_setup import run_reader
from orchestrator.config import RunConfig
from orchestrator.evaluation_plan import Network
from orchestrator.run_dir import RunDir
from orchestrator.stage_runner import Actors
from workers.devices import compute_device
from workers.network_costs import training_bytes_per_image
from workers.teachers import load_teacher
from workers.training.evaluation import Placement, train_and_score
from workers.training.memory import CUDA_BUDGET_FRACTION

JOBS_PER_ACTOR = 4


@dataclass(frozen=True)
class Job:
    """Networks of one architecture, trained on one method's set from their seeds."""

    data: TrainingSet
    model: str
    seeds: tuple[int, ...]
    settings: str
    first: int  # the position of its first seed among the model's seeds: labels stay unique
    test_classes: tuple[int, ...] | None = None  # score on these classes' test images only (None: all)

    @property
    def label(self) -> str:
        return f"{self.data.method} / {self.model}, networks {self.first + 1}-{self.first + len(self.seeds)}"


def make_jobs(plan_seeds: Mapping[str, Sequence[int]], sets: list[TrainingSet], n_actors: int, key: str,
              done: set[Network] = frozenset(), test_classes: list[int] | None = None) -> list[Job]:
    """Jobs for every planned network (``plan_seeds``: model -> its seeds, ``EvaluationPlan.seeds``)
    not in ``done``, about JOBS_PER_ACTOR per actor so that the last jobs do not leave most
    actors idle; the seeds of one job train together where that pays (vmap on a GPU). ``key``:
    the scores' settings key."""
    classes = tuple(sorted(test_classes)) if test_classes is not None else None
    groups = len(sets) * len(plan_seeds)
    chunks = max(1, math.ceil(JOBS_PER_ACTOR * n_actors / max(groups, 1)))
    chunk = max(1, math.ceil(max(map(len, plan_seeds.values()), default=0) / chunks))
    jobs = []
    for model, seeds in plan_seeds.items():
        for ts in sets:
            todo = [(i, s) for i, s in enumerate(seeds) if (ts.method, model, s) not in done]
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                jobs.append(Job(ts, model, tuple(s for _, s in part), key, first=part[0][0], test_classes=classes))
    return jobs


def actor_pool(cfg: RunConfig) -> Actors:
    """The actors this cluster affords (``evaluate.*``), each with a CPU and a share of a GPU."""
    capacity, use_gpu = pool_capacity(cfg, ray_work.cluster_resources())
    gpus = 1.0 / cfg.evaluate.actors_per_gpu if use_gpu else 0.0
    return Actors(capacity, gpus, cfg.resources, cfg.precision.deterministic)


def pool_capacity(cfg: RunConfig, resources: dict[str, float]) -> tuple[int, bool]:
    """(how many actors the cluster can host at once, whether they use GPUs). Every actor takes
    a CPU (and a share of a GPU on GPU clusters): a larger pool would wait for ever."""
    e = cfg.evaluate
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0)) if e.gpus else 0
    if gpus > 0:
        return max(1, min(gpus * e.actors_per_gpu, cpus)), True
    return max(1, min(e.num_actors or min(4, cpus), cpus)), False


def read_test_split(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """The real test split as uint8 arrays: numpy, so actors map it from the object store."""
    test = run_reader(run).read_test()
    return test.images.numpy(), test.labels.numpy()


@dataclass(frozen=True)
class ActorMemory:
    """What one evaluation actor holds, an estimate from the dataset's info (bytes)."""

    training_set: int  # the largest method's images, float32 (stored images decoded)
    step: int  # one training step of the largest model (workers.network_costs, an upper estimate)
    test_split: int  # uint8, shared through the object store: one copy per node, not per actor
    teacher: int = 0  # soft labels: the teacher's weights and its forward of a batch

    @property
    def per_actor(self) -> int:
        return self.training_set + self.step + self.teacher


def actor_memory(run: RunDir) -> ActorMemory:
    cfg, info = run.config, run.dataset
    image = info.channels * info.im_size[0] * info.im_size[1]
    images = len(run.record.classes) * cfg.condense.ipc * cfg.condense.factor**2
    shape = (info.channels, *info.im_size)
    step = max(training_bytes_per_image(m, shape, info.num_classes) for m in cfg.evaluate.models)
    batch = min(cfg.evaluate.batch, images)
    return ActorMemory(4 * images * image, step * batch, sum(info.test_counts) * image, teacher_bytes(run, batch))


class EvalActor:
    """Keeps the training sets it has loaded; trains and scores jobs (under soft labels, with the
    teacher it loaded once on its own device)."""

    def __init__(self, run: RunDir, use_gpu: bool) -> None:
        torch.set_num_threads(1)
        self.run = run
        self.device = compute_device(run.config.resources.device, reserved_gpu=use_gpu)
        info, teacher = run.dataset, teacher_spec(run)  # read here, not shipped from the driver
        self.teacher = None if teacher is None else load_teacher(
            teacher, channels=info.channels, num_classes=info.num_classes, im_size=tuple(info.im_size),
            device=self.device)
        self.memory_budget = None  # the CPU's default
        if self.device.type == "cuda":  # this actor's share of the GPU, of which the usual fraction for a step
            share = torch.cuda.get_device_properties(self.device).total_memory / run.config.evaluate.actors_per_gpu
            self.memory_budget = int(share * CUDA_BUDGET_FRACTION)
        self._sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def score(self, job: Job, test: tuple[np.ndarray, np.ndarray]) -> list[Score]:
        self._maybe_fault(job.data.method)
        images, labels = test
        if job.test_classes is not None:
            keep = np.isin(labels, job.test_classes)
            images, labels = images[keep], labels[keep]
        with warnings.catch_warnings():  # the object store's arrays are read-only; nothing writes to them
            warnings.simplefilter("ignore", UserWarning)
            test_x, test_y = torch.from_numpy(images), torch.from_numpy(labels)
        if job.data.data_key not in self._sets:
            self._sets[job.data.data_key] = load(self.run, job.data)
        x, y = self._sets[job.data.data_key]
        cfg = self.run.config
        settings = set_settings(cfg, job.data.method, len(torch.unique(y)))
        placement = Placement(self.device, cfg.evaluate.vectorized, self.memory_budget)
        started = time.perf_counter()
        accs = train_and_score(job.model, x, y, test_x, test_y, self.run.dataset, settings, list(job.seeds), placement,
                               teacher=self.teacher)
        per_model = (time.perf_counter() - started) / len(accs)
        scores = [Score(job.data.method, job.model, s, float(a), cfg.condense.ipc, per_model, str(self.device),
                        job.settings, job.data.data_key, protocol=cfg.evaluate.protocol)
                  for s, a in zip(job.seeds, accs)]
        write_job_scores(self.run, scores)
        return scores

    def _maybe_fault(self, method: str) -> None:
        """Injected evaluation faults (orchestrator.faults): eval-<method>=raise | kill-once."""
        target = f"eval-{method}"
        fault = faults.fault_for(target)
        if fault == "raise":
            raise RuntimeError(f"injected fault in {target}")
        if fault == "kill-once" and faults.first_time(self.run, target, fault):
            faults.kill_this_process()
