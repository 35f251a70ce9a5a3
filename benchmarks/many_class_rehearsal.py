"""Many-class rehearsal: the whole pipeline at ImageNet-21K's class count, tiny images, a simulated cluster.

    .venv/bin/python benchmarks/many_class_rehearsal.py --classes 10450 [--nodes 3 --gpus-per-node 2
        --classes-per-shard 10 --lose-node-at 0.5 --out DIR]

Real, end to end, with nothing swapped: the plan (pipeline.new_run, run.json saved), the condense
stage (DM, a few iterations per shard, every shard committed through the commit protocol) with a
worker node removed mid-run, `dmcondense status RUN` (a separate process, as a user runs it), the
evaluate stage (a small ConvNet with a K-way head trained on the K-image synthetic set and scored on
the K-image test split), the report (report.md, grid.png, loss.png) and `dmcondense export RUN
--format npz` (a separate process).

Stand-in: the data. K classes of random 8x8 RGB images, 2 train and 1 test per class, written in
the prepared Parquet format as `dmcondense prepare` lays it out (one file per 10 classes, one row
group per class, meta.json last), so the shards read it the way they read a prepared ImageNet.

Measured per step: wall time, the driver's CPU time and its peak RSS (this process is the driver);
the per-class figures divide by K, so that runs of different K compare. Run two class counts
back to back on the same machine for a fair ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: nodes stay on 127.0.0.1

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside the product

from benchmarks.scale_rehearsal import NodeLoss, simulated_cluster, print_json_figures  # noqa: E402

IMAGE_SHAPE = (3, 8, 8)
TRAIN_PER_CLASS, TEST_PER_CLASS = 2, 1
CLASSES_PER_FILE = 10  # as `dmcondense prepare` writes them (DEFAULT_CLASSES_PER_TASK)
MODEL = "ConvNetD2W16"  # 8x8 -> 2x2 x 16 features -> the K-way head


# ------------------------------------------------------------------ the data
def write_prepared(out: str, classes: int, seed: int = 0, shape: tuple[int, int, int] = IMAGE_SHAPE,
                   train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> None:
    """``classes`` classes of random uint8 images in the prepared Parquet format at ``out``."""
    from orchestrator import storage
    from workers.data.prepared import META, PARQUET_OPTIONS, build_meta, test_file, train_file
    from workers.data.tensor_table import tensor_table
    from workers.data.types import ChannelStats

    rng = np.random.default_rng(seed)
    names = [f"n{c:08d}" for c in range(classes)]
    train_records = []
    for first in range(0, classes, CLASSES_PER_FILE):
        last = min(first + CLASSES_PER_FILE, classes) - 1
        labels = np.repeat(np.arange(first, last + 1), train_per_class)
        images = rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
        rel = train_file(first, last)
        storage.write_parquet_atomic(storage.join(out, rel), tensor_table(images, labels, names),
                                     row_group_by="class_id", **PARQUET_OPTIONS)
        train_records.append({"file": rel, "rows": len(labels), "bytes": 0, "sha256": "", "skipped": [],
                              "first_class": first, "last_class": last,
                              "counts": [train_per_class] * (last - first + 1),
                              "stats": ChannelStats(shape[0]).add(images).to_dict()})
    test_labels = np.repeat(np.arange(classes), test_per_class)
    test_records = []
    for part, start in enumerate(range(0, len(test_labels), 10_000)):
        labels = test_labels[start:start + 10_000]
        images = rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
        storage.write_parquet_atomic(storage.join(out, test_file(part)), tensor_table(images, labels, names),
                                     **PARQUET_OPTIONS)
        test_records.append({"file": test_file(part), "rows": len(labels), "bytes": 0, "sha256": "", "skipped": [],
                             "counts": np.bincount(labels, minlength=classes).tolist()})
    meta = build_meta(source="random", resolution=shape[1], channels=shape[0], class_names=names,
                      train_records=train_records, test_records=test_records)
    storage.write_json_atomic(storage.join(out, META), meta)


def overrides(data: str, out: str, args: argparse.Namespace) -> list[str]:
    """configs/imagenet1k-ipc10.yaml made tiny: the plan, resources and code paths stay, the work shrinks."""
    return [
        f"dataset.root={data}", "condense.ipc=1", f"condense.iterations={args.iterations}", "condense.batch_real=2",
        f"condense.model={MODEL}", "condense.checkpoint_every=0", "condense.compile=false",
        f"plan.classes_per_shard={args.classes_per_shard}",
        "resources.gpus_per_shard=1", f"resources.cpus_per_shard={args.cpus_per_node / args.gpus_per_node}",
        "resources.device=cpu",  # fake GPUs, said so
        f"evaluate.models=[{MODEL}]", "evaluate.num_models=1", f"evaluate.epochs={args.epochs}",
        "evaluate.baselines=[]", "evaluate.gpus=false", "evaluate.num_actors=1",
        f"seed={args.seed}", f"output={out}", f"name=rehearsal-{args.classes}",
    ]


# ------------------------------------------------------------------ measuring
class Meter:
    """Wall time, this process's CPU time and its peak RSS around each step."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:  # a step that ends in an expected error (a failed stage) is measured too
            self.steps[name] = {"wall_s": round(time.perf_counter() - wall, 2),
                                "driver_cpu_s": round(time.process_time() - cpu, 2),
                                "driver_peak_rss_mb": self.peak_rss_mb()}  # so far: it never goes down

    @staticmethod
    def peak_rss_mb() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def command(argv: list[str]) -> dict[str, Any]:
    """A dmcondense command in its own process: its exit code, wall and CPU time and peak RSS (GNU
    time's: a child forked from this process would report this process's RSS as its own peak)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        started = time.perf_counter()
        # the interpreter running this file, whichever environment holds it (CI's has no .venv)
        timed = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss.name, sys.executable, "-m", "orchestrator", *argv]
        done = subprocess.run(timed, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              cwd=REPO)
        wall = time.perf_counter() - started
        peak_kb, user, system = rss.read().split()[-3:]
    return {"command": argv[0], "exit": done.returncode, "wall_s": round(wall, 2),
            "cpu_s": round(float(user) + float(system), 2), "peak_rss_mb": round(int(peak_kb) / 1024, 1),
            "output_tail": (done.stdout + done.stderr).strip().splitlines()[-3:]}


def in_child(fn: Any, *args: Any) -> None:
    """``fn(*args)`` in a fresh process (spawned, not forked), waited for."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=fn, args=args)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed in its process (exit {child.exitcode})")


def steady_ms_per_class(run: str) -> float:
    """Condense's wall time per class from the first commit to the last: the rate once the workers
    are up (their start, tens of seconds on a busy machine, is paid once whatever the class count)."""
    manifests = sorted((p.stat().st_mtime, len(json.loads(p.read_text())["classes"]))
                       for p in (Path(run) / "manifest").glob("*.json"))
    classes = sum(n for _, n in manifests[1:])
    return round(1000 * (manifests[-1][0] - manifests[0][0]) / max(classes, 1), 2)


# ------------------------------------------------------------------ the rehearsal
def rehearse(args: argparse.Namespace) -> dict[str, Any]:
    """Every step of a run on ``args.classes`` classes; returns the figures."""
    from rich.console import Console

    from orchestrator import pipeline
    from orchestrator.config import load_config
    from orchestrator.report import report
    from orchestrator.run_opening import opened
    from orchestrator.run_status import run_status
    from orchestrator.stages.condense import condense
    from orchestrator.stages.evaluate import evaluate

    work = Path(args.out or tempfile.mkdtemp(prefix="dmc-many-"))
    data, out = str(work / "data"), str(work / "run")
    console = Console(stderr=True)  # progress on stderr, the figures (JSON) on stdout
    meter, figures = Meter(), {"classes": args.classes, "nodes": args.nodes,
                               "fake_gpus": args.nodes * args.gpus_per_node, "load_before": os.getloadavg()}
    try:
        with meter.step("write_data"):  # in a process of its own: the driver's memory stays the driver's
            in_child(write_prepared, data, args.classes, args.seed)
        cfg = load_config(REPO / "configs" / "imagenet1k-ipc10.yaml", overrides(data, out, args))
        with meter.step("plan"):
            run = pipeline.new_run(cfg)
            run.save()
        figures["shards"] = len(run.shards)
        with simulated_cluster(args.nodes, args.gpus_per_node, args.cpus_per_node, args.object_store_mb) as cluster:
            loss = NodeLoss(cluster, Path(out), int(args.lose_node_at * len(run.shards)), poll_s=0.5)
            with meter.step("condense"):
                condense(run, console)
            figures["node_lost"] = loss.finish()
            figures["condense_steady_ms_per_class"] = steady_ms_per_class(out)
            with meter.step("evaluate"):
                scores = evaluate(run, console)
        figures["accuracy"] = [round(s.accuracy, 4) for s in scores]
        with meter.step("report"):
            report(run, scores)
        with meter.step("status_read"):  # what status reads and checks, without the command's imports
            run_status(opened(out))
        figures["status"] = command(["status", out])
        figures["export"] = command(["export", out, "--format", "npz", "--to", str(work / "set.npz")])
        figures["steps"] = meter.steps
        figures["driver_peak_rss_mb"] = meter.peak_rss_mb()
        figures["load_after"] = os.getloadavg()  # the machine is shared: say how busy it was
        figures["per_class_ms"] = {name: round(1000 * s["wall_s"] / args.classes, 2)
                                   for name, s in meter.steps.items() if name != "write_data"}
        figures["driver_cpu_per_class_ms"] = round(
            1000 * sum(s["driver_cpu_s"] for n, s in meter.steps.items() if n != "write_data") / args.classes, 2)
        return figures
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=10450)
    p.add_argument("--classes-per-shard", type=int, default=10)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--gpus-per-node", type=int, default=2, help="fake GPUs per node")
    p.add_argument("--cpus-per-node", type=float, default=1.0, help="kept small: each node shares this machine")
    p.add_argument("--object-store-mb", type=int, default=100, help="per node")
    p.add_argument("--iterations", type=int, default=2, help="DM iterations per shard")
    p.add_argument("--epochs", type=int, default=2, help="evaluation epochs")
    p.add_argument("--lose-node-at", type=float, default=0.5, metavar="F",
                   help="remove a worker node once this share of shards is committed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep the data, run and export here (default: a temporary, removed at the end)")
    args = p.parse_args(argv)
    if args.classes < 2 or args.nodes < 2 or not 0 < args.lose_node_at < 1:
        p.error("--classes >= 2, --nodes >= 2 (one is lost) and --lose-node-at within (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return print_json_figures(lambda: rehearse(args))


if __name__ == "__main__":
    sys.exit(main())
