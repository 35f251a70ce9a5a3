"""How far condensation moved each run's images from the real images they started from.

    python benchmarks/image_movement.py START RUN [RUN ...]

START is a run with condense.iterations=0 and otherwise the same dataset, seed, ipc and
condense.factor as the RUNs: its committed images are the real images every such run starts
from. For each RUN (and each of its kept checkpoints, condense.keep_checkpoints) prints the
root-mean-square change per pixel of the decoded training images, in normalized units, and
that change over the starting images' own RMS (a run still condensing: its kept checkpoints).
A loss whose gradients are small at the images' learning rate leaves them near their start, and
its set scores near the start's.
"""
from __future__ import annotations

import argparse

import torch

from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from orchestrator.run_opening import opened
from orchestrator.artifacts.shards import SNAPSHOT_PREFIX, snapshot_iterations
from orchestrator.artifacts.training_sets import read_method


def rms(x: torch.Tensor) -> float:
    return float(x.square().mean().sqrt())


def movement(start: tuple[torch.Tensor, torch.Tensor], run: RunDir, method: str) -> tuple[float, float]:
    """(RMS change per pixel, that over the start's RMS) of ``method``'s images from ``start``'s."""
    x0, y0 = start
    x, y = read_method(run, method)
    if x.shape != x0.shape or not torch.equal(y, y0):
        raise SystemExit(f"{run.uri} ({method}) holds {tuple(x.shape)} images of other classes or count than the "
                         f"start's {tuple(x0.shape)}: compare runs of the same ipc, classes and condense.factor")
    change = rms(x - x0)
    return change, change / rms(x0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("start")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    start_run = opened(args.start)
    if start_run.config.condense.iterations != 0:
        raise SystemExit(f"{args.start} ran {start_run.config.condense.iterations} iterations: START is a run with "
                         "--set condense.iterations=0 (its images are the starting ones)")
    start = read_method(start_run)
    print("run | after iteration | RMS change per pixel | over the start's RMS")
    for uri in args.runs:
        run = opened(uri)
        steps = [(f"{SNAPSHOT_PREFIX}{i}", i) for i in snapshot_iterations(run)]
        for method, iteration in steps + [("dm", run.config.condense.iterations)]:
            try:
                change, relative = movement(start, run, method)
            except RunError as exc:  # a run still condensing: its kept checkpoints are measured
                print(f"{uri} | {iteration} | not committed: {exc} |")
                continue
            print(f"{uri} | {iteration} | {change:.4f} | {relative:.3f}")


if __name__ == "__main__":
    main()
