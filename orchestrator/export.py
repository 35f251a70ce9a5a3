"""Exports of a run's synthetic set: pt (the official DM code's layout), npz, png / imagefolder
(torchvision's ImageFolder), hf (a Hugging Face datasets folder with its dataset card)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from orchestrator.artifacts.scores import read_results, summarize
from orchestrator.artifacts.training_sets import read_method
from orchestrator.report import synthetic_label
from orchestrator.run_dir import RunDir
from orchestrator.secrets import redacted_config
from orchestrator.set_formats import ScoreRow, SetCard, pixels_uint8, write_hf, write_imagefolder

FORMATS = ("pt", "npz", "png", "imagefolder", "hf")


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
    pixels = pixels_uint8(images, mean, std)
    if fmt == "hf":
        return write_hf(target, pixels, labels, names, set_card(run, len(labels)))
    return write_imagefolder(target, pixels, labels, names)


def set_card(run: RunDir, images: int) -> SetCard:
    """The dataset card of the run's synthetic set: what it is, how it was made, what it scores."""
    cfg, ds = run.config, run.dataset
    rows = tuple(ScoreRow("hard labels", s.method, s.model, s.n, s.mean, s.std) for s in summarize(read_results(run)))
    return SetCard(
        dataset=ds.name, class_names=tuple(ds.class_names), images=images, ipc=cfg.condense.ipc,
        image_size=(ds.channels, *ds.im_size), method=synthetic_label(cfg),
        config_yaml=yaml.safe_dump(redacted_config(cfg.model_dump(mode="json")), sort_keys=False),
        commit=run.record.versions.commit or f"dmcondense {run.record.versions.dmcondense}",
        iterations=cfg.condense.iterations, scores=rows)
