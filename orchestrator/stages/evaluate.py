"""The evaluate stage: a pool of actors that train fresh networks on each method's set and
score them on the real test split.

The test split is decoded once, by one task, and shared through Ray's object store
(one copy per node); each actor reads the training sets straight from the run
directory. An actor that dies is restarted by Ray and its job run again
(``resources.max_retries``); every finished job's scores are written at once
(``eval_scores``), so an evaluation that stops for any reason resumes with only
the networks not scored yet.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console

from orchestrator import faults, ray_work
from orchestrator.config import RunConfig
from orchestrator.run_dir import RunDir
from orchestrator.stages import StageFailed
from orchestrator.stages.eval_scores import (
    Score, result_order, settings_key, stored_scores, write_job_scores, write_results,
)
from orchestrator.stages.training_sets import TrainingSet, data_key, load, snapshot_iteration, training_set
from orchestrator.stages.worker_setup import check_gpus_usable, run_reader
from workers.devices import Precision, compute_device
from workers.seeding import derive_seed
from workers.network_costs import training_bytes_per_image
from workers.train_eval import CUDA_BUDGET_FRACTION, TrainSettings, train_and_score_many

STAGE = "evaluate"
JOBS_PER_ACTOR = 4
Network = tuple[str, str, int]  # (method, model, seed)


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


def make_jobs(cfg: RunConfig, sets: list[TrainingSet], n_actors: int, done: set[Network] = frozenset(),
              test_classes: list[int] | None = None) -> list[Job]:
    """Jobs for every planned network not in ``done``, about JOBS_PER_ACTOR per actor so that
    the last jobs do not leave most actors idle; the seeds of one job train together where
    that pays (vmap on a GPU)."""
    e, key = cfg.evaluate, settings_key(cfg, test_classes)
    classes = tuple(sorted(test_classes)) if test_classes is not None else None
    groups = len(sets) * len(e.models)
    chunks = max(1, math.ceil(JOBS_PER_ACTOR * n_actors / max(groups, 1)))
    chunk = max(1, math.ceil(e.num_models / chunks))
    jobs = []
    for model in e.models:
        seeds = model_seeds(cfg, model)
        for ts in sets:
            todo = [(i, s) for i, s in enumerate(seeds) if (ts.method, model, s) not in done]
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                jobs.append(Job(ts, model, tuple(s for _, s in part), key, first=part[0][0], test_classes=classes))
    return jobs


def pool_capacity(cfg: RunConfig, resources: dict[str, float]) -> tuple[int, bool]:
    """(how many actors the cluster can host at once, whether they use GPUs). Every actor takes
    a CPU (and a share of a GPU on GPU clusters): a larger pool would wait for ever."""
    e = cfg.evaluate
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0)) if e.gpus else 0
    if gpus > 0:
        return max(1, min(gpus * e.actors_per_gpu, cpus)), True
    return max(1, min(e.num_actors or min(4, cpus), cpus)), False


def evaluate(run: RunDir, console: Console, methods: list[str] | None = None,
             test_classes: list[int] | None = None) -> list[Score]:
    """Score ``methods`` (default: dm and the baselines asked for) with the run's evaluation
    settings, on the test images of ``test_classes`` (None: all), training only networks not
    scored yet under them; writes eval/results.parquet and returns its rows. Raises
    StageFailed naming failed jobs (the others' scores are kept)."""
    cfg = run.config
    sets = [training_set(run, m) for m in (methods or asked_methods(cfg))]
    key, keys = settings_key(cfg, test_classes), {**data_keys(run), **{ts.method: ts.data_key for ts in sets}}
    planned = planned_networks(cfg, [ts.method for ts in sets])
    done = {s.network for s in stored_scores(run, key, keys)} & planned
    capacity, use_gpu = pool_capacity(cfg, ray_work.cluster_resources())
    jobs = make_jobs(cfg, sets, capacity, done, test_classes)
    if done and jobs:
        console.print(f"evaluate: {len(done)} of {len(planned)} networks were scored by an earlier attempt; "
                      f"training the other {len(planned) - len(done)}", highlight=False)
    if jobs:
        gpus = 1.0 / cfg.evaluate.actors_per_gpu if use_gpu else 0.0
        check_gpus_usable(run.config.resources, gpus, "evaluation actors (evaluate.gpus)")
        test = ray_work.compute_shared(read_test_split, run, options={"num_cpus": 1})
        # The test split goes with every call, not to the constructor: Ray maps it from the node's
        # object store each time (no copy), and a restarted actor never needs it again.
        outcome = ray_work.run_on_actors(
            EvalActor, (run, use_gpu), "score", [ray_work.Work(j.label, (j, test), len(j.seeds)) for j in jobs],
            actors=capacity, options=ray_work.actor_options(cfg, gpus), label=STAGE, unit="networks",
            console=console, done_units=len(done))
        if outcome.failed:
            raise StageFailed(STAGE, outcome.failed, again=f"dmcondense evaluate {run.uri}")
    results = sorted(_asked(cfg, stored_scores(run, key, keys)), key=result_order)
    write_results(run, results)
    return results


def _asked(cfg: RunConfig, scores: list[Score]) -> list[Score]:
    """The scores the config asks for, and those of every kept checkpoint scored under the same
    settings (an iteration sweep stays in the results); the others stay in the score store."""
    methods = set(asked_methods(cfg))
    networks = {(model, s) for model in cfg.evaluate.models for s in model_seeds(cfg, model)}
    return [s for s in scores if (s.model, s.seed) in networks
            and (s.method in methods or snapshot_iteration(s.method) is not None)]


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


def read_test_split(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """The real test split as uint8 arrays: numpy, so actors map it from the object store."""
    test = run_reader(run).read_test()
    return test.images.numpy(), test.labels.numpy()


@dataclass(frozen=True)
class ActorMemory:
    """What one evaluation actor holds, an estimate from the dataset's info (bytes)."""

    training_set: int  # the largest method's images, float32
    step: int  # one training step of the largest model (workers.network_costs, an upper estimate)
    test_split: int  # uint8, shared through the object store: one copy per node, not per actor

    @property
    def per_actor(self) -> int:
        return self.training_set + self.step


def actor_memory(run: RunDir) -> ActorMemory:
    cfg, info = run.config, run.dataset
    image = info.channels * info.im_size[0] * info.im_size[1]
    images = len(run.record.classes) * cfg.condense.ipc
    shape = (info.channels, *info.im_size)
    step = max(training_bytes_per_image(m, shape, info.num_classes) for m in cfg.evaluate.models)
    return ActorMemory(4 * images * image, step * min(cfg.evaluate.batch, images), sum(info.test_counts) * image)


class EvalActor:
    """Keeps the training sets it has loaded; trains and scores jobs."""

    def __init__(self, run: RunDir, use_gpu: bool) -> None:
        torch.set_num_threads(1)
        self.run = run
        self.device = compute_device(run.config.resources.device, reserved_gpu=use_gpu)
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
        cfg, info = self.run.config, self.run.dataset
        e = cfg.evaluate
        precision = Precision(tf32=cfg.precision.tf32, deterministic=cfg.precision.deterministic)
        settings = TrainSettings(epochs=e.epochs, lr=e.lr, batch=e.batch, dsa_strategy=cfg.condense.dsa_strategy,
                                 precision=precision)
        started = time.perf_counter()
        accs = train_and_score_many(
            job.model, x, y, test_x, test_y, channels=info.channels, num_classes=info.num_classes,
            im_size=tuple(info.im_size), settings=settings, seeds=list(job.seeds), device=self.device,
            mean=info.mean, std=info.std, vectorized=e.vectorized, memory_budget=self.memory_budget,
        )
        per_model = (time.perf_counter() - started) / len(accs)
        scores = [Score(job.data.method, job.model, s, float(a), cfg.condense.ipc, per_model, str(self.device),
                        job.settings, job.data.data_key) for s, a in zip(job.seeds, accs)]
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
