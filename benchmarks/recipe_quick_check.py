"""A recipe's quick check in one process: condense MNIST (or any dataset the readers know) for a
few iterations, then print how far the images moved and what a few briefly trained networks score.

    python benchmarks/recipe_quick_check.py --recipe m3d --iterations 100 --batch-real 64

The recipes needing a pool (dance, ncfm: blend networks) are checked here with random networks
(``--networks random``) unless a pool is trained first; this measures the loss, not the pool.
Movement is the RMS change per pixel of the decoded training images in normalised units, as
benchmarks/image_movement.py reports it for runs; a loss whose gradient is small at the images'
learning rate leaves them at their start and their score at the start's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from orchestrator.config import RECIPES
from workers.data import open_dataset
from workers.dm import DMCondenser, DMSettings
from workers.parameterize import decode
from workers.training.evaluation import train_and_score
from workers.training.settings import TrainSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def settings_of(args: argparse.Namespace) -> DMSettings:
    pieces = dict(RECIPES[args.recipe])
    if args.networks is not None:
        pieces["networks"] = args.networks
    if pieces.get("networks") == "random":
        pieces.pop("ce_weight", None), pieces.pop("ce_network", None)  # the cross-entropy needs trained networks
    return DMSettings(ipc=args.ipc, iterations=args.iterations, lr_img=args.lr_img, batch_real=args.batch_real,
                      model=args.model, **pieces)


def score(args: argparse.Namespace, info, reader, train_x: torch.Tensor, train_y: torch.Tensor) -> list[float]:
    test = reader.read_test()
    keep = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))[: args.test_images]
    return train_and_score(args.model, train_x, train_y, test.images[keep], test.labels[keep], info,
                           TrainSettings(epochs=args.eval_epochs), seeds=list(range(args.eval_networks)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="dm")
    parser.add_argument("--networks", choices=["random", "queue"], default=None, help="override the recipe's")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--root", default=None, help="default: the shared data folder's <dataset>")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--lr-img", type=float, default=1.0)
    parser.add_argument("--batch-real", type=int, default=64)
    parser.add_argument("--model", default="ConvNet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-networks", type=int, default=2)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--test-images", type=int, default=None, help="score on a seeded sample of this many")
    args = parser.parse_args()

    reader = open_dataset(args.dataset, args.root or str(SHARED / args.dataset))
    info = reader.info
    classes = list(range(info.num_classes))
    settings = settings_of(args)
    condenser = DMCondenser(reader.read_train(classes), info, classes, settings, seed=args.seed)
    start = decode(condenser.syn.detach().clone(), settings.factor)
    began = time.perf_counter()
    condenser.run()
    seconds = time.perf_counter() - began
    images, labels = condenser.synthetic()
    train_x = decode(images, settings.factor)
    train_y = labels.repeat_interleave(settings.factor**2)
    change = float((train_x - start).square().mean().sqrt())
    accuracy = score(args, info, reader, train_x, train_y) if args.eval_networks else []
    mean = 100 * sum(accuracy) / max(len(accuracy), 1)
    losses = f"{condenser.losses[0][1]:.4g} -> {condenser.losses[-1][1]:.4g}" if condenser.losses else "-"
    print(f"{args.recipe} ({settings.networks}, {settings.loss}/{settings.kernel}, factor {settings.factor}, "
          f"lr_img {settings.lr_img}): {settings.iterations} it in {seconds:.0f} s, loss {losses}, moved {change:.4f} RMS per pixel (start RMS "
          f"{float(start.square().mean().sqrt()):.3f}); {len(accuracy)} x {args.eval_epochs}-epoch ConvNets: "
          f"{mean:.2f} % ({', '.join(f'{100 * a:.2f}' for a in accuracy)})")


if __name__ == "__main__":
    main()
