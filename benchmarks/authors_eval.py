"""Score an exported synthetic set (``dmcondense export RUN --format pt``) with the official DM code's own
evaluation, to check that it agrees with this project's evaluation within noise.

    .venv/bin/python benchmarks/authors_eval.py --code PATH_TO_THEIR_CHECKOUT --set FILE.pt \\
        --dataset cifar10 --root DATA_ROOT [--model ConvNet --epochs 300 --runs 3 --seed 0] [--json OUT.json]

Nothing of that code is copied here: its ``utils.py`` is imported from ``--code`` (a checkout of
VICO-UoE/DatasetCondensation) and its ``get_network``, ``evaluate_synset``, ``TensorDataset``,
``ParamDiffAug`` and ``get_daparam`` do the work, with the arguments its main_DM.py evaluates with
(DSA color_crop_cutout_flip_scale_rotate, lr_net 0.01, batch_train 256; ``--epochs`` for
epoch_eval_train). Only the real test split comes from this project's reader (its get_dataset
downloads through torchvision, which refuses CIFAR-10 batches rebuilt here by their md5), normalised
with the constants that get_dataset hard-codes (``orchestrator.export.OFFICIAL_NORMALISATION``), as the
export normalises the synthetic images; a dataset that code does not know (digits) keeps the file's
own mean/std, which only exercises the plumbing.

Seeds: get_network reseeds torch from the wall clock; here that clock reads the run's seed while it
builds the network, so run i (seed ``--seed + i``) initialises, shuffles and augments the same way
every time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import torch

from orchestrator.export import OFFICIAL_NORMALISATION
from workers.data import normalize, open_dataset

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # main_DM.py's default
OFFICIAL_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "svhn": "SVHN", "cifar10": "CIFAR10",
                  "cifar100": "CIFAR100", "tinyimagenet": "TinyImageNet"}


def import_their_utils(code: Path) -> ModuleType:
    """Their utils.py as a module of its own name; their ``networks`` import needs the checkout on sys.path."""
    if not (code / "utils.py").is_file() or not (code / "networks.py").is_file():
        sys.exit(f"--code {code}: expected a checkout of VICO-UoE/DatasetCondensation (utils.py, networks.py)")
    sys.path.insert(0, str(code))
    spec = importlib.util.spec_from_file_location("dm_official_utils", code / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_commit(code: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class _Clock:
    """The ``time`` module with ``time()`` fixed so that get_network's ``int(time() * 1000) % 100000`` is ``seed``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed % 100000

    def time(self) -> float:
        return (self.seed + 0.5) / 1000

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else is the real module
        return getattr(time, name)


def seeded_network(their: ModuleType, seed: int, model: str, channels: int, classes: int, im_size: tuple):
    """Their get_network, its clock-derived seed replaced by ``seed``; then every later draw from ``seed``."""
    their.time = _Clock(seed)
    try:
        net = their.get_network(model, channels, classes, im_size)
    finally:
        their.time = time
    torch.manual_seed(seed)
    np.random.seed(seed)
    return net


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", required=True, type=Path, help="a checkout of VICO-UoE/DatasetCondensation")
    p.add_argument("--set", required=True, type=Path, help="a pt file from `dmcondense export RUN --format pt`")
    p.add_argument("--dataset", required=True, help="this project's dataset name (cifar10, mnist, digits, ...)")
    p.add_argument("--root", default=None, help="the dataset's folder, as dataset.root in a config")
    p.add_argument("--model", default="ConvNet")
    p.add_argument("--epochs", type=int, default=300, help="their epoch_eval_train")
    p.add_argument("--runs", type=int, default=3, help="networks to train, seeds --seed .. --seed+runs-1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    their = import_their_utils(args.code.resolve())
    saved = torch.load(args.set, map_location="cpu")
    (images, labels), = saved["data"]
    file_norm = (tuple(saved["mean"]), tuple(saved["std"]))
    official = OFFICIAL_NORMALISATION.get(args.dataset)
    if official is not None and not np.allclose(file_norm, tuple(official)):
        sys.exit(f"{args.set} is normalised with mean {file_norm[0]} std {file_norm[1]}, not the official "
                 f"{args.dataset} constants {tuple(official)}: export it again with this version")
    mean, std = official if official is not None else file_norm

    test = open_dataset(args.dataset, args.root).read_test()
    if tuple(test.images.shape[1:]) != tuple(images.shape[1:]):
        sys.exit(f"the set's images are {tuple(images.shape[1:])}, the test split's {tuple(test.images.shape[1:])}")
    channels, im_size, classes = images.shape[1], tuple(images.shape[2:]), len(saved["class_names"])
    dst_test = their.TensorDataset(normalize(test.images, mean, std), test.labels)
    testloader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)  # as get_dataset

    ipc = len(labels) // classes
    their_name = OFFICIAL_NAMES.get(args.dataset, args.dataset)
    eval_args = SimpleNamespace(  # the fields evaluate_synset and epoch read, set as main_DM.py sets them
        dsa_strategy=DSA_STRATEGY, dsa=True, dsa_param=their.ParamDiffAug(), lr_net=0.01, batch_train=256,
        epoch_eval_train=args.epochs, device=args.device,
        dc_aug_param=their.get_daparam(their_name, args.model, args.model, ipc))  # unused while dsa is on

    print(command)
    print(f"{args.set}: {len(labels)} images {tuple(images.shape[1:])}, {ipc} per class; test {len(test)} images; "
          f"mean {tuple(mean)} std {tuple(std)}; {args.model}, {args.epochs} epochs, {threads} threads")
    seeds = [args.seed + i for i in range(args.runs)]
    accs = []
    for i, seed in enumerate(seeds):
        net = seeded_network(their, seed, args.model, channels, classes, im_size).to(args.device)
        _, _, acc = their.evaluate_synset(i, net, images.clone(), labels.clone(), testloader, eval_args)
        accs.append(float(acc))
        print(f"seed {seed}: {100 * acc:.2f}%", flush=True)
    mean_acc, std_acc = float(np.mean(accs)), float(np.std(accs))
    print(f"{args.model} on {args.set.name}: {100 * mean_acc:.2f} +- {100 * std_acc:.2f}% over {len(accs)} runs "
          f"(official evaluate_synset, {args.epochs} epochs)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command, "set": str(args.set), "dataset": args.dataset, "model": args.model,
            "epochs": args.epochs, "seeds": seeds, "accuracies": accs, "mean": mean_acc, "std": std_acc,
            "normalisation": {"mean": list(mean), "std": list(std)}, "ipc": ipc, "device": args.device,
            "threads": threads, "code": str(args.code), "code_commit": code_commit(args.code),
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
