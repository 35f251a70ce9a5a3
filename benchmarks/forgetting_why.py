"""What a run's forgetting coreset holds, beside its other coresets: why it can score below random.

    python benchmarks/forgetting_why.py RUN [METHOD ...]      (default: forgetting random herding)

Reads the run's pool (the one its forgetting baseline ranked by) and prints: how many training
images the pool's networks never learned or forgot, how many networks never learned the
selected images, and how the pool's trained networks (their final states) classify each
coreset and the whole training split. A selection the trained networks get wrong is made of
atypical images, which teach a network trained on them little about the test split.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from orchestrator.pool_dir import PoolDir
from orchestrator.run_dir import RunDir
from orchestrator.run_opening import opened
from orchestrator.artifacts.pool_networks import NEVER_LEARNED, forgetting_scores, pool_states
from orchestrator.artifacts.training_sets import read_method
from orchestrator.components.worker_setup import run_reader
from workers.data import normalize
from workers.networks import build_network


def trained_networks(run: RunDir) -> tuple[PoolDir, list[torch.nn.Module]]:
    """The run's pool and its networks in their final states."""
    pool = run.resolved.pool_dir
    if not pool.exists():
        raise SystemExit(f"no pool at {pool.uri}: the run's forgetting baseline reads one (pool.uri in its config)")
    info, nets = run.dataset, []
    for state in pool_states(pool, None).final.values():
        net = build_network(pool.record.settings.model, info.channels, info.num_classes, tuple(info.im_size))
        net.load_state_dict(state)
        nets.append(net.eval())
    return pool, nets


@torch.no_grad()
def accuracy(nets: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the networks of their accuracy on (x, y), in percent."""
    return 100 * float(np.mean([float((torch.cat([n(c) for c in x.split(512)]).argmax(1) == y).float().mean())
                                for n in nets]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("methods", nargs="*", default=["forgetting", "random", "herding"])
    args = parser.parse_args()
    run = opened(args.run)
    pool, nets = trained_networks(run)
    scores = forgetting_scores(pool, run.record.classes)
    every = np.concatenate([s[~np.isnan(s)] for s in scores.values()])
    never_by = every // NEVER_LEARNED
    print(f"training images scored: {len(every)}; never learned by >= 1 of {pool.networks} networks: "
          f"{100 * np.mean(never_by >= 1):.2f}%, by all: {100 * np.mean(never_by == pool.networks):.3f}%; "
          f"forgotten at least once (learned by all): {100 * np.mean((never_by == 0) & (every > 0)):.2f}%")
    ipc = run.config.condense.ipc
    top = np.concatenate([np.sort(s[~np.isnan(s)])[::-1][:ipc] for s in scores.values()])
    print(f"forgetting selection: never learned by {np.mean(top // NEVER_LEARNED):.2f} of {pool.networks} networks "
          f"on average")
    real = run_reader(run).read_train(run.record.classes)
    x = normalize(real.images, run.dataset.mean, run.dataset.std)
    print(f"all training images: the pool's trained networks classify {accuracy(nets, x, real.labels):.2f}% right")
    for method in args.methods:
        xs, ys = read_method(run, method)
        print(f"{method} ({len(ys)} images): the pool's trained networks classify {accuracy(nets, xs, ys):.2f}% right")


if __name__ == "__main__":
    main()
