"""Vectorised (vmap) vs one-at-a-time training of N evaluation networks.

Trains N fresh networks of one architecture on MNIST-shaped random data
(10 classes, 1x28x28) at several images per class, both ways, and prints the
wall-clock and CPU-time ratios (looped / vectorised: > 1 means vmap is faster).

On the CPU it also prints why a ratio is what it is: the share of the looped
wall time spent inside convolution kernels (forward + backward, from the
profiler) and the GFLOP/s those kernels reach. Vectorising removes per-call overhead, not
arithmetic, so when convolutions already dominate the looped time, the
looped time over its convolution time bounds what vmap can gain on that
device (as long as a batched convolution is no faster per FLOP).

    .venv/bin/python benchmarks/bench_eval.py --models 5 --ipc 1 10 50 --epochs 20 --threads 1

Both paths run under the allocator settings of the evaluation actors
(``resources.reuse_memory``; the script re-executes itself with them), or
under glibc's defaults with ``--allocator plain``.

``loop_conv_gflops`` counts 3x the forward FLOPs of the convolutions per image
step (forward, weight gradient, input gradient), a slight overestimate since
the first layer needs no input gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from orchestrator.worker_env import allocator_environ
from workers.data.types import DatasetInfo
from workers.training.evaluation import Placement, train_networks
from workers.training.settings import TrainSettings

CLASSES, SHAPE = 10, (1, 28, 28)
INFO = DatasetInfo("bench", [str(c) for c in range(CLASSES)], SHAPE[0], SHAPE[1:], (0.5,), (0.5,),
                   (1,) * CLASSES, (1,) * CLASSES)
_CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
             "aten::cudnn_convolution", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
             "aten::_slow_conv2d_backward")


def dataset(ipc: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(ipc)
    return torch.randn(CLASSES * ipc, *SHAPE, generator=gen), torch.arange(CLASSES).repeat_interleave(ipc)


def timed(fn, device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn``; on CUDA the wall time waits for the device's work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def conv_flops_per_image(model: str) -> float:
    """Forward FLOPs of the model's convolutions for one image (x3 ~ forward + backward)."""
    from workers.networks import build_network

    net, flops = build_network(model, SHAPE[0], CLASSES, SHAPE[1:]), 0.0

    def count(mod, inp, out):
        nonlocal flops
        flops += 2 * out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros(1, *SHAPE))
    return flops


def conv_profile(run) -> tuple[float, float]:
    """(seconds inside CPU convolution kernels, wall seconds) of one profiled ``run``.

    Both from the same run, so a busy machine skews them together; the profiler's own
    overhead lowers the share, which only raises the bound it implies.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, _ = timed(run)
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in _CONV_OPS) / 1e6, wall


def bench_ipc(args: argparse.Namespace, ipc: int, device: torch.device) -> dict:
    x, y = dataset(ipc)
    epochs = args.epochs if ipc <= 10 else max(1, args.epochs // args.large_ipc_divisor)
    seeds = list(range(args.models))

    def run(vectorized: bool, n_epochs: int = epochs):
        settings = TrainSettings(epochs=n_epochs)
        return lambda: train_networks(args.model, x, y, INFO, settings, seeds, Placement(device, vectorized))

    for vectorized in (False, True):  # warm-up: allocator, kernels, vmap tracing
        run(vectorized, 1)()
    best = {False: (float("inf"),) * 2, True: (float("inf"),) * 2}
    for _ in range(args.repeats):  # interleaved, best of: the machine is shared
        for vectorized in (False, True):
            wall, cpu = timed(run(vectorized), device)
            best[vectorized] = (min(best[vectorized][0], wall), min(best[vectorized][1], cpu))
    (loop_wall, loop_cpu), (vec_wall, vec_cpu) = best[False], best[True]
    share, gflops = float("nan"), float("nan")
    if device.type == "cpu":
        prof_epochs = max(1, epochs // 5)
        conv_s, prof_wall = conv_profile(run(False, prof_epochs))
        share = conv_s / prof_wall
        gflops = 3 * conv_flops_per_image(args.model) * args.models * prof_epochs * len(x) / conv_s / 1e9
    return dict(
        ipc=ipc, models=args.models, epochs=epochs, loop_s=round(loop_wall, 3), vmap_s=round(vec_wall, 3),
        ratio=round(loop_wall / vec_wall, 3), loop_cpu_s=round(loop_cpu, 3), vmap_cpu_s=round(vec_cpu, 3),
        cpu_ratio=round(loop_cpu / vec_cpu, 3), loop_conv_share=round(share, 3),
        vmap_bound=round(1 / share, 2),
        loop_conv_gflops=round(gflops, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--models", type=int, default=5, help="networks trained per path")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--large-ipc-divisor", type=int, default=4,
                        help="ipc > 10 runs epochs // this (per-epoch cost grows with ipc)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allocator", choices=("workers", "plain"), default="workers",
                        help="workers: the evaluation actors' malloc settings (ALLOCATOR_ENV); plain: glibc defaults")
    args = parser.parse_args()
    env = allocator_environ(dict(os.environ), reuse_memory=args.allocator == "workers")
    if env != dict(os.environ):  # glibc reads its settings at start-up only
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{args.model}, {args.models} models, {CLASSES} classes of {SHAPE}, device {device}, "
          f"{torch.get_num_threads()} threads, {args.allocator} allocator; ratio = looped / vmapped (> 1: vmap faster)")
    header = ("ipc", "epochs", "loop_s", "vmap_s", "ratio", "loop_cpu_s", "vmap_cpu_s", "cpu_ratio",
              "loop_conv_share", "vmap_bound", "loop_conv_gflops")
    print(" ".join(f"{h:>16}" for h in header))
    rows = []
    for ipc in args.ipc:
        row = bench_ipc(args, ipc, device)
        rows.append(row)
        print(" ".join(f"{row[h]:>16}" for h in header), flush=True)
    print(json.dumps({"benchmark": "bench_eval", "model": args.model, "device": str(device),
                      "threads": torch.get_num_threads(), "allocator": args.allocator, "rows": rows}))


if __name__ == "__main__":
    main()
