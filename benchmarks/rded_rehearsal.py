"""RDED rehearsal: ImageNet-1K's shape (1,000 classes, 8 per shard) with a ResNet-18 teacher from a weights file.

    .venv/bin/python benchmarks/rded_rehearsal.py [--classes 1000 --nodes 2 --gpus-per-node 2 --out DIR]

Real, nothing swapped: the plan (pipeline.new_run from configs/imagenet1k-ipc10.yaml with
condense.method rded and a torchvision teacher), the condense stage's RDED shards (crops scored by
the teacher, stitched 2x2 as RDED does on ImageNet, a checkpoint after every class), a worker
SIGKILLed after its shard's first checkpoint (the product's fault injection, with no retries left,
so that the shard fails while the others commit), the resume (the run reopened as `dmcondense
resume` does; only the failed shard computes, from its checkpoint) and `dmcondense export --format
npz` in its own process.

Stand-ins: the data (random 32x32 images, 4 per class, in the prepared Parquet layout) and the
teacher's weights (torchvision's resnet18 with seeded random weights, saved to a file: no download).
The figures: wall time and driver CPU per step, the shards' own compute per class (their manifests'
wall_time_s), and the driver's peak RSS. The GPU cost of the real run is `dmcondense bench
--estimate gpu` (benchmarks/gpu_cost_model.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: nodes stay on 127.0.0.1

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside the product

from benchmarks.many_class_rehearsal import Meter, command, in_child, write_prepared  # noqa: E402
from benchmarks.scale_rehearsal import simulated_cluster, print_json_figures  # noqa: E402

SHAPE = (3, 32, 32)
TRAIN_PER_CLASS = 4  # ipc 1 x stitch 2^2: one crop kept per real image
VICTIM = "shard-00002"


def save_teacher(path: Path, classes: int, seed: int) -> None:
    """torchvision's resnet18 with seeded random weights, its state dict saved as a user's would be."""
    import torch
    import torchvision.models

    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), path)


def overrides(data: str, teacher: Path, out: str, args: argparse.Namespace) -> list[str]:
    return [
        f"dataset.root={data}", "condense.method=rded", "condense.ipc=1", "condense.checkpoint_every=1",
        f"condense.rded={{stitch: 2, crops: {args.crops}, candidates: {TRAIN_PER_CLASS}}}",
        f"condense.teacher={{source: torchvision, arch: resnet18, weights: {teacher}}}",
        "resources.gpus_per_shard=1", f"resources.cpus_per_shard={args.cpus_per_node / args.gpus_per_node}",
        "resources.device=cpu",  # fake GPUs, said so
        "resources.max_retries=0",  # the killed worker's shard fails, for the resume to finish
        "evaluate.num_models=0", "evaluate.baselines=[]",
        f"seed={args.seed}", f"output={out}", f"name=rded-rehearsal-{args.classes}",
    ]


def rehearse(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from orchestrator import pipeline
    from orchestrator.artifacts.shards import shard_state
    from orchestrator.config import load_config
    from orchestrator.faults import FAULTS_ENV
    from orchestrator.stage_runner import StageFailed
    from orchestrator.stages.condense import condense

    work = Path(args.out or tempfile.mkdtemp(prefix="dmc-rded-"))
    work.mkdir(parents=True, exist_ok=True)
    data, out, teacher = str(work / "data"), str(work / "run"), work / "resnet18.pt"
    console, meter = Console(stderr=True), Meter()
    figures: dict[str, Any] = {"classes": args.classes, "load_before": os.getloadavg()}
    try:
        with meter.step("write_data"):  # in processes of their own: the driver's memory stays the driver's
            in_child(write_prepared, data, args.classes, args.seed, SHAPE, TRAIN_PER_CLASS, 1)
            in_child(save_teacher, teacher, args.classes, args.seed)
        cfg = load_config(REPO / "configs" / "imagenet1k-ipc10.yaml", overrides(data, teacher, out, args))
        with meter.step("plan"):
            run = pipeline.new_run(cfg)
            run.save()
        figures["shards"] = len(run.shards)
        with simulated_cluster(args.nodes, args.gpus_per_node, args.cpus_per_node, args.object_store_mb):
            os.environ[FAULTS_ENV] = f"{VICTIM}=kill-after-checkpoint"
            try:
                with meter.step("condense"):
                    condense(run, console)
                raise AssertionError(f"{VICTIM}'s worker was killed without retries, yet the stage succeeded")
            except StageFailed as exc:
                figures["failed_first"] = sorted(exc.failed)
            finally:
                os.environ.pop(FAULTS_ENV, None)
            with meter.step("resume"):
                condense(pipeline.reopened_run(out, []), console)
        states = [shard_state(run, spec) for spec in run.shards]
        figures["committed"] = sum(st.state == "committed" for st in states)
        victim = next(st.manifest for spec, st in zip(run.shards, states) if spec.name == VICTIM)
        figures["resumed_shard"] = {"shard": VICTIM, "resumed_from": victim.resumed_from}
        compute = sum(st.manifest.wall_time_s for st in states if st.manifest)
        figures["shard_compute_s_per_class"] = round(compute / args.classes, 3)
        figures["export"] = command(["export", out, "--format", "npz", "--to", str(work / "set.npz")])
        figures["steps"] = meter.steps
        figures["condense_wall_s_per_class"] = round(
            (meter.steps["condense"]["wall_s"] + meter.steps["resume"]["wall_s"]) / args.classes, 3)
        figures["driver_peak_rss_mb"] = meter.peak_rss_mb()
        figures["load_after"] = os.getloadavg()
        return figures
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--crops", type=int, default=2, help="random crops scored per real image (RDED's: 5)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=2, help="fake GPUs per node")
    p.add_argument("--cpus-per-node", type=float, default=1.0, help="kept small: each node shares this machine")
    p.add_argument("--object-store-mb", type=int, default=100, help="per node")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="keep the data, teacher, run and export here (default: a temporary, removed)")
    args = p.parse_args(argv)
    if args.classes < 24:
        p.error("--classes must be at least 24: the killed shard is the third of 8 classes each")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return print_json_figures(lambda: rehearse(args))


if __name__ == "__main__":
    sys.exit(main())
