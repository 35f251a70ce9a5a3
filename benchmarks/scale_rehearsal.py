"""Scale rehearsal: the driver's scheduling loop on a simulated ImageNet-1K cluster, with a stand-in shard.

    .venv/bin/python benchmarks/scale_rehearsal.py [--nodes 4 --gpus-per-node 8 --classes 1000
        --classes-per-shard 8 --kill-fraction 0.05 --seed 0 --json]

Real: the plan (orchestrator.plan.make_plan), the config (configs/imagenet1k-ipc10.yaml),
the condense stage (orchestrator.stages.condense.condense) and the one Ray helper under
it (orchestrator.ray_work: ray.wait streaming, Ray's retries from resources.*, SPREAD,
the progress board and display), the run layout, and the stage's shard_state (manifest,
plan match, sha256) on every result.

Stand-in: the task body. The stage's condense_shard is swapped for `stand_in_shard`,
which sleeps briefly and commits a tiny Parquet shard of random images (the shard
schema) and its manifest the way orchestrator.commits does (file, then manifest, each
written to a temporary and renamed): no DM.

Kills: a seeded RNG picks ceil(kill_fraction x shards) shards and, in turn, a point
(at start, after the Parquet file, after the manifest) where the shard's first
attempt SIGKILLs its own worker; Ray's max_retries runs it again. The driver
forwards the choice to the workers as the product's fault variable.

The simulated cluster: ray.cluster_utils.Cluster on 127.0.0.1, fake GPUs, and a
fraction of a CPU per shard (cpus-per-node / gpus-per-node) so that every fake GPU
holds a shard on a machine with few cores.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: nodes stay on 127.0.0.1

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAULTS_ENV = "DMCONDENSE_FAULTS"  # orchestrator.faults.FAULTS_ENV, which the driver forwards to tasks
SECONDS_ENV = "DMCONDENSE_REHEARSAL_TASK_SECONDS"  # the stand-in's work, inherited by the nodes
KILL_STAGES = ("kill-at-start", "kill-after-file", "kill-after-manifest")
IMAGE_SHAPE = (3, 8, 8)


if __name__ != "__main__":  # imported (tests): ship the stand-in by value, workers cannot import this file
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RehearsalError(AssertionError):
    """The run broke the exactly-once commit contract."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise RehearsalError(message)


# ------------------------------------------------------------ the stand-in task (no DM)
def stand_in_shard(run: Any, spec: Any, context: Any) -> dict:
    """Same signature and commit protocol as the stage's condense_shard; idempotent."""
    name, root = spec.name, Path(run.uri)
    _write_atomic(root / "attempts" / name / uuid.uuid4().hex, b"")
    manifest_file = root / "manifest" / f"{name}.json"
    committed = _committed(root, manifest_file)
    if committed is not None:  # a retry after a commit the driver never heard of
        return committed
    _maybe_kill(root, name, "kill-at-start")
    started = time.time()
    time.sleep(float(os.environ.get(SECONDS_ENV, "0.05")))
    data, rows = _fake_shard(spec.seed, list(spec.class_ids), run.config.condense.ipc)
    rel = f"shards/{name}.parquet"
    _write_atomic(root / rel, data)
    _maybe_kill(root, name, "kill-after-file")
    digest = hashlib.sha256(data).hexdigest()
    iterations = run.config.condense.iterations
    manifest = {
        "format": 2, "shard_id": spec.shard_id, "classes": list(spec.class_ids), "seed": spec.seed,
        "rows": rows, "sha256": digest,
        "files": {"dm": {"path": rel, "sha256": digest, "bytes": len(data), "rows": rows}},
        "iterations": iterations, "resumed_from": 0, "wall_time_s": round(time.time() - started, 3),
        "final_loss": None, "loss_curve": [], "device": "stand-in", "host": os.uname().nodename,
        "node_id": context.node_id,
    }
    _write_atomic(manifest_file, json.dumps(manifest, indent=2, sort_keys=True).encode())
    _write_atomic(root / "commits" / name / uuid.uuid4().hex, b"")
    _maybe_kill(root, name, "kill-after-manifest")
    context(iterations, final=True)
    return manifest


def _committed(root: Path, manifest_file: Path) -> dict | None:
    if not manifest_file.exists():
        return None
    manifest = json.loads(manifest_file.read_text())
    data = (root / manifest["files"]["dm"]["path"]).read_bytes()
    return manifest if hashlib.sha256(data).hexdigest() == manifest["sha256"] else None


def _fake_shard(seed: int, class_ids: list[int], ipc: int) -> tuple[bytes, int]:
    """Random images in the shard schema: class_id, class_name, index, image [C,H,W] float32."""
    rng = np.random.default_rng(seed)
    classes = np.repeat(np.asarray(class_ids, dtype=np.int32), ipc)
    images = rng.standard_normal((len(classes), int(np.prod(IMAGE_SHAPE))), dtype=np.float32)
    tensor = pa.ExtensionArray.from_storage(
        pa.fixed_shape_tensor(pa.float32(), list(IMAGE_SHAPE)),
        pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), images.shape[1]),
    )
    table = pa.table({
        "class_id": pa.array(classes),
        "class_name": pa.array([f"class-{c}" for c in classes]),
        "index": pa.array(np.tile(np.arange(ipc, dtype=np.int32), len(class_ids))),
        "image": tensor,
    }).replace_schema_metadata({b"dmcondense": json.dumps({"method": "dm", "ipc": ipc, "seed": seed})})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes(), len(classes)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _maybe_kill(root: Path, name: str, stage: str) -> None:
    faults = dict(item.split("=", 1) for item in os.environ.get(FAULTS_ENV, "").split(",") if "=" in item)
    marker = root / "faults" / f"{name}.{stage}"
    if faults.get(name) == stage and not marker.exists():  # the first attempt only
        _write_atomic(marker, b"")
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------- the driver side
def make_run(uri: str, classes: int, classes_per_shard: int, cpus_per_shard: float, max_retries: int,
             seed: int) -> Any:
    """The run handle of an ImageNet-1K run: the shipped config with the rehearsal's plan and
    resources, and a dataset of ``classes`` classes of 1,300 64x64 images (never read)."""
    from orchestrator.config import load_config
    from orchestrator.plan import make_plan
    from orchestrator.run_dir import RunDir
    from orchestrator.run_opening import resolve
    from orchestrator.run_record import RunRecord
    from workers.data.types import DatasetInfo

    cfg = load_config(REPO / "configs" / "imagenet1k-ipc10.yaml", [
        f"plan.classes_per_shard={classes_per_shard}", f"resources.cpus_per_shard={cpus_per_shard}",
        "resources.gpus_per_shard=1", "resources.device=cpu",  # fake GPUs, said so: the stand-in computes nothing
        f"resources.max_retries={max_retries}", f"seed={seed}", f"output={uri}"])
    info = DatasetInfo("imagenet", [f"class-{c}" for c in range(classes)], 3, (64, 64), (0.5,) * 3, (0.25,) * 3,
                       (1300,) * classes, (50,) * classes)
    return resolve(RunDir(uri, RunRecord.build(cfg, make_plan(range(classes), classes_per_shard, cfg.seed), info)))


def plan_kills(shard_ids: list[int], fraction: float, seed: int) -> dict[str, str]:
    """shard name -> kill point, for ceil(fraction x shards) shards picked by a seeded RNG."""
    rng = random.Random(seed)
    victims = sorted(rng.sample(shard_ids, math.ceil(fraction * len(shard_ids))))
    return {f"shard-{sid:05d}": KILL_STAGES[i % len(KILL_STAGES)] for i, sid in enumerate(victims)}


@contextlib.contextmanager
def simulated_cluster(nodes: int, gpus_per_node: int, cpus_per_node: float, object_store_mb: int) -> Iterator[Any]:
    """Nodes on 127.0.0.1 with fake GPUs, this process connected; all of it stopped on exit."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": cpus_per_node, "num_gpus": gpus_per_node, "object_store_memory": object_store_mb << 20,
            "node_ip_address": "127.0.0.1"}
    cluster = Cluster()
    try:
        cluster.add_node(**node, include_dashboard=False)
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", log_to_driver=False,
                 logging_level=logging.ERROR)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


class StoreSampler(threading.Thread):
    """Peak object-store use over the run, sampled once a second; its own CPU time is kept apart.

    It asks the head node's raylet, which outlives the rehearsal's node loss (left to itself Ray picks the
    first node the table still calls alive, which can be the one just killed); a sample that fails all the
    same, while the cluster notices the loss, is counted, not fatal.
    """

    def __init__(self, head: Any, period_s: float = 1.0):
        super().__init__(daemon=True)
        self.period_s = period_s
        self.raylet = (head.node_ip_address, head.node_manager_port)
        self.peak_bytes = self.peak_objects = self.capacity_bytes = self.missed = 0
        self.cpu_s = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.period_s)

    def sample(self) -> None:
        import grpc
        from ray._private.internal_api import get_memory_info_reply

        cpu = time.thread_time()
        try:
            # with the raylet named, Ray reads no GCS state: no connection to open for it
            stats = get_memory_info_reply(None, *self.raylet).store_stats
        except grpc.RpcError:
            self.missed += 1
        else:
            self.peak_bytes = max(self.peak_bytes, stats.object_store_bytes_used)
            self.peak_objects = max(self.peak_objects, stats.num_local_objects)
            self.capacity_bytes = stats.object_store_bytes_avail
        self.cpu_s += time.thread_time() - cpu

    def finish(self) -> None:
        self._done.set()
        self.join()
        self.sample()


class NodeLoss(threading.Thread):
    """Removes the last worker node, raylet and workers at once, when ``after`` shards are committed."""

    def __init__(self, cluster: Any, root: Path, after: int, poll_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.cluster, self.root, self.after, self.poll_s = cluster, root, after, poll_s
        self.removed_at: int | None = None  # all shards committed once the node was gone
        self.on_it_at_removal = 0  # the lost node's own commits by then
        self.start()

    def run(self) -> None:
        self.node = list(self.cluster.worker_nodes)[-1]
        while len(self._manifests()) < self.after:
            time.sleep(self.poll_s)
        self.cluster.remove_node(self.node, allow_graceful=False)
        # counted once it is gone: a commit that lands while the node is being killed is its last
        self.on_it_at_removal = self._on_it()
        self.removed_at = len(self._manifests())

    def _manifests(self) -> list[Path]:
        return list((self.root / "manifest").glob("*.json"))

    def _on_it(self) -> int:
        return sum(json.loads(p.read_text())["node_id"] == self.node.node_id for p in self._manifests())

    def finish(self) -> dict[str, Any]:
        """When the node went, how many shards it had committed by then, and how many its workers
        committed after: they outlive their raylet for a moment, as a cut-off node can still write
        to shared storage. Exactly-once is check_exactly_once's to judge, not this count's."""
        self.join(timeout=60)
        _check(self.removed_at is not None, f"the node was never removed ({self.after} commits awaited)")
        on_it = self._on_it()
        return {"after_commits": self.removed_at, "shards_committed_by_the_lost_node": on_it,
                "committed_after_removal": on_it - self.on_it_at_removal}


def check_exactly_once(run: Any, kills: dict[str, str]) -> dict[str, Any]:
    """Every class in exactly one valid shard, every shard committed once, every kill retried."""
    from orchestrator.artifacts.shards import shard_state

    root, per_class = Path(run.uri), Counter()
    for spec in run.shards:
        st = shard_state(run, spec)  # the product's reader: manifest, plan match, sha256
        _check(st.state == "committed", f"{spec.name} is {st.state}: {st.detail}")
        stored = pq.read_table(root / st.manifest.files["dm"].path, columns=["class_id"])
        _check(sorted(set(stored.column("class_id").to_pylist())) == list(spec.class_ids),
               f"{spec.name}: its file holds other classes than its manifest")
        per_class.update(st.manifest.classes)
        commits = len(list((root / "commits" / spec.name).iterdir()))
        _check(commits == 1, f"{spec.name} was committed {commits} times")
    classes = run.dataset.num_classes
    _check(set(per_class) == set(range(classes)), f"classes without a shard: {sorted(set(range(classes)) - set(per_class))[:10]}")
    twice = sorted(c for c, n in per_class.items() if n != 1)
    _check(not twice, f"classes in more than one shard: {twice[:10]}")
    attempts = {p.name: len(list(p.iterdir())) for p in (root / "attempts").iterdir()}
    fired = {p.name.split(".", 1)[0]: p.name.split(".", 1)[1] for p in (root / "faults").glob("*")}
    _check(fired == kills, f"kills planned {len(kills)}, fired {len(fired)}")
    unretried = sorted(name for name in kills if attempts.get(name, 0) < 2)
    _check(not unretried, f"killed shards never retried: {unretried}")
    return {"kills_injected": len(fired), "kills_by_point": dict(Counter(fired.values())),
            "killed_shards_retried": sum(attempts[name] >= 2 for name in kills),
            "extra_attempts": sum(attempts.values()) - len(attempts), "exactly_once": True}


def shards_per_node(run: str) -> list[int]:
    """How many committed shards each node ran, busiest first (SPREAD should feed every node)."""
    nodes = Counter(json.loads(p.read_text())["node_id"] for p in (Path(run) / "manifest").glob("*.json"))
    return sorted(nodes.values(), reverse=True)


def rehearse(args: argparse.Namespace) -> dict[str, Any]:
    """Run the rehearsal and return its figures; raises RehearsalError if a commit is lost or doubled."""
    if ray.is_initialized():
        raise RuntimeError("the rehearsal starts its own cluster; call it without a Ray connection")
    uri = args.out or tempfile.mkdtemp(prefix="dmc-rehearsal-")
    run = make_run(uri, args.classes, args.classes_per_shard, args.cpus_per_node / args.gpus_per_node,
                   args.max_retries, args.seed)
    kills = plan_kills([s.shard_id for s in run.shards], args.kill_fraction, args.seed)
    saved = {k: os.environ.get(k) for k in (FAULTS_ENV, SECONDS_ENV)}
    os.environ[SECONDS_ENV] = str(args.task_seconds)  # before the nodes start: their workers inherit it
    try:
        started = time.perf_counter()
        with simulated_cluster(args.nodes, args.gpus_per_node, args.cpus_per_node, args.object_store_mb) as cluster:
            figures = {"nodes": args.nodes, "fake_gpus": args.nodes * args.gpus_per_node, "classes": args.classes,
                       "cluster_start_s": round(time.perf_counter() - started, 1)}
            loss = NodeLoss(cluster, Path(uri), math.ceil(args.lose_node_at * len(run.shards))) \
                if args.lose_node_at is not None else None
            figures.update(_schedule(run, kills, cluster, quiet=args.json))
            if loss is not None:
                figures["node_lost"] = loss.finish()
        figures.update(check_exactly_once(run, kills), shards_per_node=shards_per_node(uri))
        return {**figures, "run": uri if args.out else None}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not args.out:
            shutil.rmtree(uri, ignore_errors=True)


def _schedule(run: Any, kills: dict[str, str], cluster: Any, quiet: bool) -> dict[str, Any]:
    """The condense stage with the stand-in task, measured."""
    from rich.console import Console

    from orchestrator.stage_runner import StageFailed
    from orchestrator.stages import condense as stage

    run.save()  # `dmcondense status RUN` works on the rehearsal's run directory
    os.environ[FAULTS_ENV] = ",".join(f"{k}={v}" for k, v in kills.items())
    sampler = StoreSampler(cluster.head_node)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    failed: dict[str, str] = {}
    with mock.patch.object(stage, "condense_shard", stand_in_shard):
        try:
            stage.condense(run, Console(stderr=True, quiet=quiet))
        except StageFailed as exc:
            failed = exc.failed
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sampler.finish()
    cpu -= sampler.cpu_s
    _check(not failed, f"shards failed: {failed}")
    n = len(run.shards)
    return {
        "shards": n, "committed": n - len(failed), "failed": len(failed),
        "wall_s": round(wall, 2), "shards_per_s": round(n / wall, 2),
        "driver_cpu_s": round(cpu, 2), "driver_cpu_ms_per_shard": round(1000 * cpu / n, 1),
        "driver_peak_rss_mb": {"before_loop": round(rss_before / 1024, 1),
                               "after_loop": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "object_store": {"peak_used_bytes": sampler.peak_bytes, "peak_objects": sampler.peak_objects,
                         "capacity_bytes": sampler.capacity_bytes, "samples_missed": sampler.missed},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=8, help="fake GPUs per node")
    p.add_argument("--cpus-per-node", type=float, default=1.0, help="kept small: each node shares this machine")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--classes-per-shard", type=int, default=8)
    p.add_argument("--kill-fraction", type=float, default=0.05, help="share of shards whose first attempt is killed")
    p.add_argument("--max-retries", type=int, default=3, help="resources.max_retries")
    p.add_argument("--task-seconds", type=float, default=0.05, help="the stand-in's sleep per shard")
    p.add_argument("--object-store-mb", type=int, default=80, help="per node")
    p.add_argument("--lose-node-at", type=float, default=None, metavar="F",
                   help="remove a whole worker node once this share of shards is committed (node loss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep the run directory here (default: a temporary, removed at the end)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1 or not 0 <= args.kill_fraction <= 1:
        p.error("--nodes and --gpus-per-node must be >= 1 and --kill-fraction within [0, 1]")
    return args


def _print(f: dict[str, Any]) -> None:
    store = f["object_store"]
    print(f"{f['shards']} shards ({f['classes']} classes) on {f['nodes']} nodes / {f['fake_gpus']} fake GPUs; "
          f"cluster up in {f['cluster_start_s']} s")
    print(f"scheduling: {f['wall_s']} s wall, {f['shards_per_s']} shards/s; shards per node {f['shards_per_node']}")
    print(f"driver: {f['driver_cpu_s']} s CPU = {f['driver_cpu_ms_per_shard']} ms per shard; peak RSS "
          f"{f['driver_peak_rss_mb']['before_loop']} MB before the loop, {f['driver_peak_rss_mb']['after_loop']} MB after")
    print(f"object store: peak {store['peak_used_bytes'] / 2**20:.2f} MiB in {store['peak_objects']} objects "
          f"(capacity {store['capacity_bytes'] / 2**20:.0f} MiB)")
    print(f"kills: {f['kills_injected']} injected {f['kills_by_point']}, {f['killed_shards_retried']} retried by Ray, "
          f"{f['extra_attempts']} extra attempts")
    if "node_lost" in f:
        lost = f["node_lost"]
        print(f"node loss: a worker node removed after {lost['after_commits']} commits (it had committed "
              f"{lost['shards_committed_by_the_lost_node']}, {lost['committed_after_removal']} of them after it was "
              "removed); the shards it was running ran again elsewhere")
    print(f"exactly once: every class in one committed shard, every shard committed once "
          f"({f['committed']} committed, {f['failed']} failed)")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr, for this process and the Ray processes it starts."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_json_figures(rehearse: Callable[[], dict[str, Any]]) -> int:
    """A rehearsal's figures as JSON, alone on stdout: Ray prints a lost worker's or node's last
    words there, so they go to stderr while it runs."""
    with stdout_to_stderr():
        figures = rehearse()
    print(json.dumps(figures, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.json:
        return print_json_figures(lambda: rehearse(args))
    _print(rehearse(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
