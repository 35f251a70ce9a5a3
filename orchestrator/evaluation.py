"""The evaluation stage: a pool of Ray actors that train and score networks.

Each actor loads the real test split once, reads the synthetic (and baseline)
sets straight from the run directory, and runs (method, architecture, seeds)
jobs; the seeds of one job are trained together when that is faster.

An actor that dies (a lost node, an OOM kill, an unreachable process) is
replaced and its job runs again, up to ``resources.max_retries`` times
(``orchestrator.eval_pool``). Every finished job's scores are written at once
under RUN/eval/partial/ (``orchestrator.eval_scores``), so an evaluation that
stops for any reason resumes, on the next ``evaluate`` or ``resume``, with
only the networks that were not scored yet.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import pyarrow as pa
import ray
import torch
from rich.console import Console
from rich.progress import Progress

from orchestrator import faults, shards, storage
from orchestrator.config import RunConfig
from orchestrator.eval_pool import run_jobs
from orchestrator.eval_scores import (
    SNAPSHOT_PREFIX, method_key, partial_dir, partial_root, read_partial, read_results, results_path,
    snapshot_iteration, write_partial,
)
from orchestrator.plan import ShardSpec
from workers.data import open_dataset
from workers.seeding import derive_seed
from workers.train_eval import TrainSettings, train_and_score_many

JOBS_PER_ACTOR = 4


def snapshot_methods(run: str, plan: list[dict]) -> list[str]:
    """``dm@<iteration>`` for every kept checkpoint of the run (condense.keep_checkpoints)."""
    specs = [ShardSpec.from_dict(d) for d in plan]
    return [f"{SNAPSHOT_PREFIX}{it}" for it in shards.snapshot_iterations(run, specs)]


class EvalWorker:
    """Holds the test split and the training sets of one run; scores jobs."""

    def __init__(self, run: str, config: dict, plan: list[dict], use_gpu: bool, threads: int):
        cfg = RunConfig.model_validate(config)
        torch.set_num_threads(max(1, threads))
        reader = open_dataset(cfg.dataset.name, cfg.dataset.root, resolution=cfg.dataset.resolution)
        self.info = reader.info
        self.test = reader.read_test()
        self.run, self.cfg = run, cfg
        self.plan = [ShardSpec.from_dict(d) for d in plan]
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self._sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _training_set(self, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        if method not in self._sets:
            iteration = snapshot_iteration(method)
            if iteration is not None:
                self._sets[method] = shards.load_snapshot(self.run, self.plan, iteration)
            else:
                self._sets[method] = shards.load_method(self.run, self.plan, method)
        return self._sets[method]

    def score(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        self._maybe_fault(job["method"])
        x, y = self._training_set(job["method"])
        e = self.cfg.evaluate
        settings = TrainSettings(epochs=e.epochs, lr=e.lr, batch=e.batch, dsa_strategy=self.cfg.condense.dsa_strategy)
        started = time.perf_counter()
        accs = train_and_score_many(
            job["model"], x, y, self.test.images, self.test.labels,
            channels=self.info.channels, num_classes=self.info.num_classes, im_size=tuple(self.info.im_size),
            settings=settings, seeds=job["seeds"], device=self.device,
            mean=self.info.mean, std=self.info.std, vectorized=e.vectorized,
        )
        per_model = (time.perf_counter() - started) / len(accs)
        return [
            {"method": job["method"], "model": job["model"], "seed": s, "accuracy": float(a),
             "ipc": self.cfg.condense.ipc, "train_seconds": per_model, "device": str(self.device)}
            for s, a in zip(job["seeds"], accs)
        ]


    def _maybe_fault(self, method: str) -> None:
        target = f"eval-{method}"
        fault = faults.fault_for(target)
        if fault == "raise":
            raise RuntimeError(f"injected fault in {target}")
        if fault == "kill-once" and faults.first_time(self.run, target, fault):
            faults.kill_this_process()


Network = tuple[str, str, int]  # (method, model, seed): one evaluation network


def _seeds(cfg: RunConfig, model: str) -> list[int]:
    return [derive_seed(cfg.seed, "eval", model, i) for i in range(cfg.evaluate.num_models)]


def planned_networks(cfg: RunConfig, methods: list[str] | None = None) -> set[Network]:
    """Every network the evaluation settings ask for (the same seeds for every method)."""
    methods = methods or ["dm", *cfg.evaluate.baselines]
    return {(method, model, s) for model in cfg.evaluate.models for s in _seeds(cfg, model) for method in methods}


def make_jobs(cfg: RunConfig, n_actors: int, methods: list[str] | None = None,
              done: set[Network] = frozenset()) -> list[dict[str, Any]]:
    """(method, model, seed chunk) jobs; the same seeds for every method, so comparisons are
    paired. Networks in ``done`` (already scored) get no job."""
    e = cfg.evaluate
    jobs = []
    methods = methods or ["dm", *e.baselines]
    groups = len(methods) * len(e.models)
    # Several jobs per actor, so that the last jobs do not leave most actors idle; the
    # seeds of one job are trained together where that pays (vmap on a GPU).
    chunks = max(1, math.ceil(JOBS_PER_ACTOR * n_actors / max(groups, 1)))
    chunk = max(1, math.ceil(e.num_models / chunks))
    for model in e.models:
        seeds = _seeds(cfg, model)
        for method in methods:
            todo = [s for s in seeds if (method, model, s) not in done]
            for i in range(0, len(todo), chunk):
                jobs.append({"method": method, "model": model, "seeds": todo[i : i + chunk]})
    return jobs


def pool_capacity(cfg: RunConfig, resources: dict[str, float]) -> tuple[int, bool]:
    """(how many evaluation actors the cluster can host at once, whether they use GPUs).

    Every actor takes one CPU (and a fraction of a GPU on GPU clusters): a pool larger
    than that would hand jobs to actors that never start."""
    e = cfg.evaluate
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0)) if e.gpus else 0
    if gpus > 0:
        return max(1, min(gpus * e.actors_per_gpu, cpus)), True
    return max(1, min(e.num_actors or min(4, cpus), cpus)), False


def actor_options(cfg: RunConfig, use_gpu: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": 1}
    if use_gpu:
        options["num_gpus"] = 1.0 / cfg.evaluate.actors_per_gpu
    runtime_env = cfg.resources.runtime_env(**faults.worker_env())
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options


def _spawner(cfg: RunConfig, run: str, plan: list[dict], use_gpu: bool) -> Callable[[], Any]:
    config = cfg.model_dump(mode="json")
    actor = ray.remote(**actor_options(cfg, use_gpu))(EvalWorker)
    return lambda: actor.remote(run, config, plan, use_gpu, 1)


def evaluate_run(run: str, cfg: RunConfig, plan: list[dict], console: Console,
                 methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Score DM and the baselines (or only ``methods``, keeping the other methods' earlier
    rows); writes RUN/eval/results.parquet and returns its rows. Networks scored by an
    earlier, unfinished evaluation under the same settings are not trained again."""
    if cfg.evaluate.num_models == 0:
        return []
    kept = [r for r in read_results(run) if r["method"] not in methods] if methods else []
    folder = partial_dir(run, cfg)
    planned = planned_networks(cfg, methods)
    rows = [r for r in read_partial(folder) if (r["method"], r["model"], r["seed"]) in planned]
    done = {(r["method"], r["model"], r["seed"]) for r in rows}
    capacity, use_gpu = pool_capacity(cfg, ray.cluster_resources())
    jobs = make_jobs(cfg, n_actors=capacity, methods=methods, done=done)
    total = len(rows) + sum(len(j["seeds"]) for j in jobs)
    if rows:
        console.print(f"evaluate: {len(rows)} of {total} networks were scored by an earlier attempt; "
                      f"training the other {total - len(rows)}", highlight=False)
    started = time.monotonic()
    with Progress(console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"evaluate ({min(capacity, len(jobs))} actors)", total=total, completed=len(rows))

        def finished(result: list[dict[str, Any]]) -> None:
            write_partial(folder, result)
            rows.extend(result)
            bar.advance(task, len(result))
            if not console.is_terminal:  # logs get one line per finished job
                console.print(f"evaluate: {len(rows)}/{total} networks scored "
                              f"({result[0]['method']}, {result[0]['model']}), "
                              f"{time.monotonic() - started:.0f} s elapsed", highlight=False)

        run_jobs(jobs, _spawner(cfg, run, plan, use_gpu), capacity, cfg.resources.max_retries, finished, console)
    rows = kept + rows
    rows.sort(key=lambda r: (*method_key(r["method"]), r["model"], r["seed"]))
    storage.write_parquet_atomic(results_path(run), pa.Table.from_pylist(rows))
    storage.remove(folder, recursive=True)
    if not storage.list_names(partial_root(run)):  # no other settings' scores wait there
        storage.remove(partial_root(run))
    return rows


