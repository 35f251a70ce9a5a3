"""What ``resources.reuse_memory`` (glibc malloc settings, on by default) buys an evaluation actor.

Trains one evaluation ConvNet on MNIST-shaped random data (10 classes, 1x28x28,
one thread, as an evaluation actor does) in two fresh processes per setting:
one with the workers' allocator settings (``ALLOCATOR_ENV``), one with glibc's
defaults, and prints seconds per training step, page faults per step, peak
resident memory, and the ratio (cleared / default: > 1 means the settings help).

    .venv/bin/python benchmarks/bench_worker_env.py --ipc 1 10 50 --epochs 4

Each process starts from the same seed, so both train the same network on
the same batches; only the allocator differs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from orchestrator.worker_env import allocator_environ

CLASSES, SHAPE = 10, (1, 28, 28)


def child(ipc: int, epochs: int) -> dict[str, float]:
    import torch

    from workers.training.plain import fresh_network, train_network
    from workers.training.settings import TrainSettings

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(ipc)
    x = torch.randn(CLASSES * ipc, *SHAPE, generator=gen)
    y = torch.arange(CLASSES).repeat_interleave(ipc)
    settings = TrainSettings(epochs=epochs)
    steps = epochs * -(-len(x) // settings.batch)
    net = fresh_network("ConvNet", channels=SHAPE[0], num_classes=CLASSES, im_size=SHAPE[1:], seed=0, device="cpu")
    train_network(net, x, y, TrainSettings(epochs=1), seed=1)  # warm-up: the heap settles
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    train_network(net, x, y, settings, seed=0)
    wall = time.perf_counter() - start
    return {
        "s_per_step": wall / steps,
        "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(ipc: int, epochs: int, reuse_memory: bool) -> dict[str, float]:
    env = allocator_environ(dict(os.environ), reuse_memory)
    cmd = [sys.executable, __file__, "--child", "--ipc", str(ipc), "--epochs", str(epochs)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.ipc[0], args.epochs)))
        return
    print(f"{'ipc':>4} {'env':>8} {'s/step':>8} {'faults/step':>12} {'peak RSS MB':>12}")
    for ipc in args.ipc:
        rows = {name: measure(ipc, args.epochs, reuse) for name, reuse in (("default", True), ("cleared", False))}
        for name, r in rows.items():
            print(f"{ipc:>4} {name:>8} {r['s_per_step']:>8.3f} {r['faults_per_step']:>12.0f} {r['peak_rss_mb']:>12.0f}")
        ratio = rows["cleared"]["s_per_step"] / rows["default"]["s_per_step"]
        print(f"{ipc:>4} speed-up of resources.reuse_memory: {ratio:.2f}x")


if __name__ == "__main__":
    main()
