"""Exports of a run's synthetic set: pt (the official DM layout), npz, png folders."""

from __future__ import annotations

from pathlib import Path
import numpy as np
import torch
from PIL import Image

from orchestrator.run_dir import RunDir
from orchestrator.artifacts.training_sets import read_method
from workers.data import denormalize

FORMATS = ("pt", "npz", "png")


def export_run(run: RunDir, fmt: str, to: str) -> str:
    """Write the committed synthetic set of ``run`` to ``to``; returns what was written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    images, labels = read_method(run, "dm")
    ds = run.dataset
    mean, std, names = list(ds.mean), list(ds.std), list(ds.class_names)
    target = Path(to)
    if fmt == "pt":
        target.parent.mkdir(parents=True, exist_ok=True)
        # {'data': [[images, labels]]}: what the official DM code saves and loads.
        torch.save({"data": [[images, labels]], "mean": mean, "std": std, "class_names": names}, target)
        return f"{target} ({len(labels)} images)"
    if fmt == "npz":
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(target, images=images.numpy(), labels=labels.numpy(), class_names=np.array(names),
                            mean=np.array(mean), std=np.array(std))
        return f"{target} ({len(labels)} images)"
    return _export_png(images, labels, names, mean, std, target)


def _export_png(images: torch.Tensor, labels: torch.Tensor, names: list[str], mean: list[float],
                std: list[float], target: Path) -> str:
    """One folder per class (ImageFolder layout), images in pixel space."""
    pixels = (denormalize(images, mean, std) * 255).round().to(torch.uint8)
    counts: dict[int, int] = {}
    for img, c in zip(pixels, labels.tolist()):
        folder = target / f"{c:05d}_{_safe(names[c])}"
        folder.mkdir(parents=True, exist_ok=True)
        k = counts.get(c, 0)
        counts[c] = k + 1
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(folder / f"{k:04d}.png")
    return f"{target}/ ({len(labels)} images in {len(counts)} class folders)"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]
