"""What each recipe's iteration costs on this device, and so what its paper's protocol costs.

    python benchmarks/recipe_costs.py --device cuda              # CIFAR-10's shape, 10 classes, 10 ipc
    python benchmarks/recipe_costs.py --device cpu --iterations 3 --warmup 1

Every recipe of `condense.recipe` runs as a shard runs it (one condenser for all the classes) on
random uint8 images of the dataset's shape: the cost of an iteration does not depend on the
pixels. The pooled recipes (dance, ncfm: blend networks) draw from a stand-in pool of one network
whose "trained" state is another random initialisation: a blend costs the same whatever the
weights. IDM's queue trains its networks after every iteration, as in a run. The papers' protocol
is ``--paper-iterations`` iterations (20,000, the configs' `condense.iterations`) of one shard of
every class; the evaluation and the pool's training are not in it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.dm_loop import parse_shape
from benchmarks.random_data import random_dataset
from orchestrator.config import RECIPES
from workers.dm import DMCondenser, DMSettings
from workers.matching import PoolStates
from workers.networks import build_network


def stand_in_pool(model: str, shape: tuple[int, int, int], classes: int) -> PoolStates:
    """One network whose initial and final states are two random initialisations."""
    torch.manual_seed(0)
    first, last = (build_network(model, shape[0], classes, shape[1:]).state_dict() for _ in range(2))
    return PoolStates(group=[(0, last)], initial={0: first}, final={0: last})


def seconds_per_iteration(recipe: str, args: argparse.Namespace, shape: tuple[int, int, int]) -> float:
    real, info = random_dataset(shape, args.classes, args.batch_real, seed=0)
    pieces = RECIPES[recipe]
    settings = DMSettings(ipc=args.ipc, iterations=args.warmup + args.iterations, batch_real=args.batch_real,
                          model=args.model, **pieces)
    pool = stand_in_pool(args.model, shape, args.classes) if pieces.get("networks") == "blend" else None
    condenser = DMCondenser(real, info, list(range(args.classes)), settings, seed=0, device=args.device, pool=pool)
    for _ in range(args.warmup):
        condenser.step()
    sync = torch.cuda.synchronize if condenser.device.type == "cuda" else (lambda: None)
    sync()
    began = time.perf_counter()
    for _ in range(args.iterations):
        condenser.step()
    sync()
    return (time.perf_counter() - began) / args.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=parse_shape, default="3,32,32", help="C,H,W of the images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-real", type=int, default=256)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of " + ", ".join(RECIPES))
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per recipe")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--paper-iterations", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    rows = []
    for recipe in args.recipes.split(","):
        s = seconds_per_iteration(recipe, args, args.shape)
        rows.append({"recipe": recipe, "s_per_it": round(s, 5), "paper_hours": round(s * args.paper_iterations / 3600, 3)})
        if not args.json:
            print(f"{recipe:6s} {s:.4f} s/it; {args.paper_iterations:,} iterations: {rows[-1]['paper_hours']:.2f} h")
    if args.json:
        print(json.dumps({"device": args.device, "shape": ",".join(map(str, args.shape)), "classes": args.classes, "ipc": args.ipc,
                          "batch_real": args.batch_real, "paper_iterations": args.paper_iterations, "rows": rows}))


if __name__ == "__main__":
    main()
