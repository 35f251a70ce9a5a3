"""The evaluation stage: a pool of Ray actors that train and score networks.

Each actor loads the real test split once, reads the synthetic (and baseline)
sets straight from the run directory, and runs (method, architecture, seeds)
jobs; the seeds of one job are trained together when that is faster.

An actor that dies (a lost node, an OOM kill, an unreachable process) is
replaced and its job runs again, up to ``resources.max_retries`` times. Every
finished job's scores are written at once under RUN/eval/partial/, so an
evaluation that stops for any reason resumes, on the next ``evaluate`` or
``resume``, with only the networks that were not scored yet.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from rich.console import Console
from rich.progress import Progress

from orchestrator import faults, shards, storage
from orchestrator.config import RunConfig
from orchestrator.plan import ShardSpec
from workers.data import open_dataset
from workers.seeding import derive_seed
from workers.train_eval import TrainSettings, train_and_score_many

SNAPSHOT_PREFIX = "dm@"
JOBS_PER_ACTOR = 4


def snapshot_iteration(method: str) -> int | None:
    """The iteration of a ``dm@<iteration>`` method (a kept checkpoint); None for any other."""
    rest = method[len(SNAPSHOT_PREFIX):] if method.startswith(SNAPSHOT_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def snapshot_methods(run: str, plan: list[dict]) -> list[str]:
    """``dm@<iteration>`` for every kept checkpoint of the run (condense.keep_checkpoints)."""
    specs = [ShardSpec.from_dict(d) for d in plan]
    return [f"{SNAPSHOT_PREFIX}{it}" for it in shards.snapshot_iterations(run, specs)]


class EvaluationError(RuntimeError):
    """The evaluation stage stopped; the networks it scored are kept for the next attempt."""


def results_path(run: str) -> str:
    return storage.join(run, "eval", "results.parquet")


def partial_root(run: str) -> str:
    return storage.join(run, "eval", "partial")


def partial_dir(run: str, cfg: RunConfig) -> str:
    """Where an unfinished evaluation keeps its scores, keyed by every setting that shapes a
    score, so that a later evaluation under other settings never reuses them."""
    e = cfg.evaluate
    shaping = {"epochs": e.epochs, "batch": e.batch, "lr": e.lr, "vectorized": e.vectorized,
               "dsa_strategy": cfg.condense.dsa_strategy}
    key = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    return storage.join(partial_root(run), key)


def read_partial(folder: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in storage.list_names(folder):
        if name.endswith(".parquet"):
            rows += pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(folder, name)))).to_pylist()
    return rows


def write_partial(folder: str, rows: list[dict[str, Any]]) -> None:
    """One file per finished job, named by its networks (a rerun of the job rewrites it)."""
    first = rows[0]
    name = hashlib.sha256(f"{first['method']}|{first['model']}|{first['seed']}".encode()).hexdigest()[:16]
    storage.write_parquet_atomic(storage.join(folder, f"{name}.parquet"), pa.Table.from_pylist(rows))


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


def make_jobs(cfg: RunConfig, n_actors: int, methods: list[str] | None = None,
              done: set[tuple[str, str, int]] = frozenset()) -> list[dict[str, Any]]:
    """(method, model, seed chunk) jobs; the same seeds for every method, so comparisons are
    paired. Networks in ``done`` ((method, model, seed) already scored) get no job."""
    e = cfg.evaluate
    jobs = []
    methods = methods or ["dm", *e.baselines]
    groups = len(methods) * len(e.models)
    # Several jobs per actor, so that the last jobs do not leave most actors idle; the
    # seeds of one job are trained together where that pays (vmap on a GPU).
    chunks = max(1, math.ceil(JOBS_PER_ACTOR * n_actors / max(groups, 1)))
    chunk = max(1, math.ceil(e.num_models / chunks))
    for model in e.models:
        seeds = [derive_seed(cfg.seed, "eval", model, i) for i in range(e.num_models)]
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


def run_jobs(jobs: list[dict[str, Any]], spawn: Callable[[], Any], n_actors: int, retries: int,
             on_rows: Callable[[list[dict[str, Any]]], None], console: Console) -> None:
    """Run ``jobs`` on up to ``n_actors`` actors made by ``spawn``, one job per actor at a time.

    A job whose actor dies goes to a fresh actor, up to ``retries`` times; an exception
    raised by the job itself is not retried (bad input or a bug does not heal)."""
    queue = deque((job, 0) for job in jobs)
    idle = [spawn() for _ in range(min(n_actors, len(jobs)))]
    running: dict[Any, tuple[Any, dict[str, Any], int]] = {}
    try:
        while queue or running:
            while queue and idle:
                job, attempt = queue.popleft()
                actor = idle.pop()
                running[actor.score.remote(job)] = (actor, job, attempt)
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, job, attempt = running.pop(ref)
            what = f"{job['method']} / {job['model']}, {len(job['seeds'])} network(s)"
            try:
                rows = ray.get(ref)
            except RayActorError as exc:
                _kill(actor)
                if attempt >= retries:
                    raise EvaluationError(f"{what}: its actor was lost {attempt + 1} times "
                                          f"(resources.max_retries={retries}): {exc}") from exc
                console.print(f"[yellow]evaluate: lost the actor of {what}; retry {attempt + 1} of {retries} "
                              "on a fresh actor[/]", highlight=False)
                idle.append(spawn())
                queue.append((job, attempt + 1))
                continue
            except RayTaskError as exc:
                raise EvaluationError(f"{what}: {exc.cause if exc.cause is not None else exc}") from exc
            idle.append(actor)
            on_rows(rows)
    finally:
        for actor in idle + [a for a, _, _ in running.values()]:
            _kill(actor)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - already gone is fine
        pass


def evaluate_run(run: str, cfg: RunConfig, plan: list[dict], console: Console,
                 methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Score DM and the baselines (or only ``methods``, keeping the other methods' earlier
    rows); writes RUN/eval/results.parquet and returns its rows. Networks scored by an
    earlier, unfinished evaluation under the same settings are not trained again."""
    if cfg.evaluate.num_models == 0:
        return []
    kept = [r for r in read_results(run) if r["method"] not in methods] if methods else []
    folder = partial_dir(run, cfg)
    planned = {(j["method"], j["model"], s) for j in make_jobs(cfg, 1, methods) for s in j["seeds"]}
    rows = [r for r in read_partial(folder) if (r["method"], r["model"], r["seed"]) in planned]
    capacity, use_gpu = pool_capacity(cfg, ray.cluster_resources())
    jobs = make_jobs(cfg, n_actors=capacity, methods=methods, done={(r["method"], r["model"], r["seed"]) for r in rows})
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
    rows.sort(key=lambda r: (*_method_key(r["method"]), r["model"], r["seed"]))
    storage.write_parquet_atomic(results_path(run), pa.Table.from_pylist(rows))
    storage.remove(folder, recursive=True)
    if not storage.list_names(partial_root(run)):  # no other settings' scores wait there
        storage.remove(partial_root(run))
    return rows


def _method_key(method: str) -> tuple[str, int]:
    """dm@200 before dm@1000: snapshots in iteration order after their method."""
    iteration = snapshot_iteration(method)
    return (method, -1) if iteration is None else ("dm", iteration)


def read_results(run: str) -> list[dict[str, Any]]:
    """The rows of RUN/eval/results.parquet ([] before any evaluation)."""
    path = results_path(run)
    if not storage.exists(path):
        return []
    return pq.read_table(pa.BufferReader(storage.read_bytes(path))).to_pylist()


def evaluation_state(run: str) -> dict[str, Any]:
    """What the run directory says of the evaluation stage: "unfinished" while scores of a
    stopped attempt wait under eval/partial/, else "done" or "not run"."""
    root = partial_root(run)
    waiting = sum(len(read_partial(storage.join(root, key))) for key in storage.list_names(root))
    if waiting:
        return {"state": "unfinished", "networks_scored": waiting}
    done = len(read_results(run))
    return {"state": "done" if done else "not run", "networks_scored": done}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mean +- std (percent) per (method, model), in the order methods first appear."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["model"]), []).append(100.0 * r["accuracy"])
    out = []
    for (method, model), accs in groups.items():
        t = torch.tensor(accs, dtype=torch.float64)
        std = float(t.std(unbiased=False)) if len(accs) > 1 else 0.0
        out.append({"method": method, "model": model, "n": len(accs), "mean": float(t.mean()), "std": std})
    return out
