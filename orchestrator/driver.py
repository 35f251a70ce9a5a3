"""The driver: plan, schedule one Ray task per shard, stream results, retry, then evaluate.

Failures cost only their shard: a dead worker or node is retried by Ray
(``resources.max_retries``), an exception is resubmitted by the driver up to
``resources.retry_exceptions`` times, and a shard that still fails is recorded
in RUN/failed/ while the others finish.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orchestrator import faults, shards, storage
from orchestrator.condense_task import condense_shard
from orchestrator.config import RunConfig, config_hash, differing_keys, from_dict, identity, to_dict
from orchestrator.plan import PlanError, ShardSpec, estimate_work, make_plan
from workers.data import open_dataset
from workers.data.types import DatasetInfo


class RunError(RuntimeError):
    """A problem the user must fix before the run can go on; nothing computed is lost."""


# -------------------------------------------------------------- run.json
def run_json_path(run: str) -> str:
    return storage.join(run, "run.json")


def load_run(run: str) -> dict[str, Any]:
    path = run_json_path(run)
    if not storage.exists(path):
        raise RunError(f"{run} is not a run directory (no run.json); start one with `dmcondense run CONFIG --out {run}`")
    return storage.read_json(path)


def plan_of(record: dict[str, Any]) -> list[ShardSpec]:
    return [ShardSpec.from_dict(d) for d in record["plan"]["shards"]]


def _versions() -> dict[str, str]:
    import pyarrow
    import torch

    from importlib.metadata import version

    return {
        "dmcondense": version("dmcondense"),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }


def prepare_run(cfg: RunConfig, run: str) -> tuple[dict[str, Any], DatasetInfo]:
    """Validate the dataset, make (or extend) the plan and write run.json; no task starts."""
    reader = open_dataset(cfg.dataset.name, cfg.dataset.root, resolution=cfg.dataset.resolution,
                          download=cfg.dataset.download)
    info = reader.info
    classes = _classes(cfg, info)
    existing: list[ShardSpec] = []
    if storage.exists(run_json_path(run)):
        old = load_run(run)
        _check_same_identity(old["config"], to_dict(cfg), run)
        existing = plan_of(old)
    try:
        plan = make_plan(classes, cfg.plan.classes_per_shard, cfg.seed, existing)
    except PlanError as exc:
        raise RunError(str(exc)) from None
    record = {
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "plan": {
            "shards": [s.to_dict() for s in plan],
            "classes_per_shard": cfg.plan.classes_per_shard,
            "num_classes": info.num_classes,
            "class_names": list(info.class_names),
        },
        "dataset": {"name": info.name, "channels": info.channels, "im_size": list(info.im_size),
                    "mean": list(info.mean), "std": list(info.std)},
        "versions": _versions(),
    }
    return record, info


def _classes(cfg: RunConfig, info: DatasetInfo) -> list[int]:
    if cfg.plan.classes is None:
        return list(range(info.num_classes))
    bad = [c for c in cfg.plan.classes if not 0 <= c < info.num_classes]
    if bad:
        raise RunError(f"plan.classes: {bad[:10]} are not classes of {info.name} (0..{info.num_classes - 1})")
    return list(cfg.plan.classes)


def _check_same_identity(old: dict[str, Any], new: dict[str, Any], run: str) -> None:
    a, b = identity(old), identity(new)
    a.get("plan", {}).pop("classes", None)  # a plan may grow: checked by make_plan
    b.get("plan", {}).pop("classes", None)
    keys = differing_keys(a, b)
    if keys:
        raise RunError(
            f"{run} was started with another configuration (differing keys: {', '.join(keys)}); "
            "resume it with its own config (`dmcondense resume RUN`) or start a new run with --out"
        )


def write_run(run: str, record: dict[str, Any]) -> None:
    storage.ensure_dir(run)
    storage.write_json_atomic(run_json_path(run), record)


def describe_plan(record: dict[str, Any], console: Console) -> None:
    cfg = from_dict(record["config"])
    plan = plan_of(record)
    work = estimate_work(plan, cfg.condense.iterations, cfg.condense.batch_real, cfg.condense.ipc)
    r = cfg.resources
    console.print(f"[bold]{cfg.name}[/]: {work['classes']} classes of {record['dataset']['name']} "
                  f"in {work['shards']} shards, ipc {cfg.condense.ipc}, {cfg.condense.iterations} iterations, "
                  f"model {cfg.condense.model}")
    console.print(f"resources per shard: {r.cpus_per_shard:g} CPU, {r.gpus_per_shard:g} GPU; "
                  f"retries: {r.max_retries} on worker death, {r.retry_exceptions} on exceptions")
    console.print(f"estimated work: {work['real_images_embedded']:,} real images embedded, "
                  f"{work['synthetic_forward_backward']:,} synthetic forward+backward")
    for spec in plan[:20]:
        classes = ",".join(map(str, spec.class_ids))
        console.print(f"  {spec.name}  seed {spec.seed:>20}  classes {classes}")
    if len(plan) > 20:
        console.print(f"  ... {len(plan) - 20} more shards")


# ------------------------------------------------------------- scheduling
@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress of every shard, fed by the tasks, read by the driver's display."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, Any]] = {}

    def update(self, item: dict[str, Any]) -> None:
        self.latest[int(item["shard"])] = item

    def snapshot(self) -> dict[int, dict[str, Any]]:
        return self.latest


@ray.remote
def _condense_remote(run: str, spec: dict, config: dict, board: Any) -> dict:
    sink = None if board is None else (lambda item: board.update.remote(item))
    return condense_shard(run, spec, config, sink, node_id=ray.get_runtime_context().get_node_id())


def _task_options(cfg: RunConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_cpus": cfg.resources.cpus_per_shard,
        "num_gpus": cfg.resources.gpus_per_shard,
        "max_retries": cfg.resources.max_retries,
        "retry_exceptions": False,  # exceptions are retried by the driver, with their own budget
        "scheduling_strategy": "SPREAD",  # one shard per node first: every node's GPUs get work
    }
    # failure tests inject faults into the workers through the driver's environment
    runtime_env = cfg.resources.runtime_env(**faults.worker_env())
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options


def check_cluster(cfg: RunConfig) -> None:
    """Fail at once (no hang) when no node can ever host one shard task."""
    need_cpu, need_gpu = cfg.resources.cpus_per_shard, cfg.resources.gpus_per_shard
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
        return
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    if need_gpu > 0 and total_gpu == 0:
        raise RunError(
            f"resources.gpus_per_shard={need_gpu:g} but the Ray cluster has no GPUs; "
            "run on the CPU with --set resources.gpus_per_shard=0, or pass --address of a GPU cluster"
        )
    biggest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
    raise RunError(
        f"no node can host a shard needing {need_cpu:g} CPU and {need_gpu:g} GPU "
        f"(largest node: {biggest[0]:g} CPU, {biggest[1]:g} GPU); lower resources.cpus_per_shard / gpus_per_shard"
    )


@dataclass
class Outcome:
    committed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)


def condense_all(run: str, record: dict[str, Any], console: Console) -> Outcome:
    """Run every shard of the plan that has no valid manifest; return what happened."""
    cfg = from_dict(record["config"])
    plan = plan_of(record)
    outcome = Outcome()
    todo = []
    for spec in plan:
        st = shards.verify(run, spec)
        if st.state == "committed":
            outcome.skipped.append(spec.shard_id)
            continue
        if st.state in ("corrupt", "failed"):
            _clear_for_retry(run, spec, st)
        todo.append(spec)
    if outcome.skipped:
        console.print(f"{len(outcome.skipped)} shards already committed; {len(todo)} to compute")
    if not todo:
        return outcome
    check_cluster(cfg)
    remote = _condense_remote.options(**_task_options(cfg))
    board = ProgressBoard.remote()
    config = to_dict(cfg)
    attempts = {s.shard_id: 0 for s in todo}
    by_id = {s.shard_id: s for s in todo}
    queue = [s.shard_id for s in todo]
    limit = cfg.resources.max_concurrent_shards or len(todo)
    running: dict[Any, int] = {}
    with _Display(console, len(todo), cfg.condense.iterations) as display:
        while running or queue:
            while queue and len(running) < limit:
                sid = queue.pop(0)
                running[remote.remote(run, by_id[sid].to_dict(), config, board)] = sid
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            display.update(ray.get(board.snapshot.remote()), outcome)
            for ref in ready:
                sid = running.pop(ref)
                try:
                    ray.get(ref)
                    outcome.committed.append(sid)
                except Exception as exc:  # noqa: BLE001 - any task failure is recorded, not fatal
                    attempts[sid] += 1
                    if attempts[sid] <= cfg.resources.retry_exceptions:
                        console.print(f"[yellow]{by_id[sid].name} failed ({_short(exc)}); retry {attempts[sid]}[/]")
                        queue.append(sid)
                    else:
                        outcome.failed[sid] = _short(exc)
                        _record_failure(run, by_id[sid], exc, attempts[sid])
            display.update(ray.get(board.snapshot.remote()), outcome)
    ray.kill(board)
    return outcome


def _clear_for_retry(run: str, spec: ShardSpec, st: shards.ShardState) -> None:
    if st.state == "corrupt":  # the manifest no longer vouches for the files: recompute
        storage.remove(shards.manifest_path(run, spec.name))
    if storage.exists(shards.failure_path(run, spec.name)):
        storage.remove(shards.failure_path(run, spec.name))


def _short(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}"
    return text.strip().splitlines()[-1][:300] if text.strip() else type(cause).__name__


def _record_failure(run: str, spec: ShardSpec, exc: BaseException, attempts: int) -> None:
    storage.write_json_atomic(
        shards.failure_path(run, spec.name),
        {"shard_id": spec.shard_id, "error": _short(exc), "attempts": attempts, "time": time.time()},
    )


class _Display:
    """One live line in the driver: shards committed / running / failed, iterations, ETA.

    On a terminal a rich progress bar; elsewhere (logs, CI, job submission) a plain
    line every ``log_every_s`` seconds.
    """

    def __init__(self, console: Console, n_shards: int, iterations: int, log_every_s: float = 15.0):
        self.console, self.n, self.iterations = console, n_shards, iterations
        self.total = max(1, n_shards * iterations)
        self.live = console.is_terminal
        self.log_every_s, self._last_log, self._started = log_every_s, 0.0, time.monotonic()
        self._its, self._shards = 0, ""
        self.progress = Progress(
            TextColumn("[bold]condense"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} it"),
            TextColumn("{task.fields[shards]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("condense", total=self.total, shards="")

    def __enter__(self) -> "_Display":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()
        if not self.live:
            self._log(force=True)

    def update(self, snapshot: dict[int, dict[str, Any]], outcome: Outcome) -> None:
        done_ids = set(outcome.committed) | set(outcome.failed)
        running = sum(1 for sid, s in snapshot.items() if sid not in done_ids and not s.get("done"))
        its = sum(self.iterations if sid in outcome.committed else s.get("iteration", 0) for sid, s in snapshot.items())
        its += self.iterations * len([s for s in outcome.committed if s not in snapshot])
        self._its = its
        self._shards = (f"shards: {len(outcome.committed)}/{self.n} committed, {running} running, "
                        f"{len(outcome.failed)} failed")
        self.progress.update(self.task, completed=its, shards=self._shards)
        if not self.live:
            self._log()

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.log_every_s:
            return
        self._last_log = now
        its = self._its
        elapsed = now - self._started
        eta = f", ETA {elapsed * (self.total - its) / its:.0f} s" if 0 < its < self.total else ""
        self.console.print(f"condense: {its:,}/{self.total:,} it, {self._shards}, "
                           f"{elapsed:.0f} s elapsed{eta}", highlight=False)
