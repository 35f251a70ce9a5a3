"""Exports of a run's synthetic set: pt (the official DM code's layout and normalisation), npz, png / imagefolder
(torchvision's ImageFolder), hf (a Hugging Face datasets folder with its dataset card)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
import yaml

from orchestrator.artifacts.fair_scoring import hard_label_scores
from orchestrator.artifacts.score_statistics import summarize
from orchestrator.artifacts.scores import read_results
from orchestrator.artifacts.training_sets import read_method
from orchestrator.export_target import ExportTarget
from orchestrator.report import augmentation_suffix, how_made, synthetic_label, teacher_words
from orchestrator.run_dir import RunDir
from orchestrator.secrets import redacted_config
from orchestrator.components.teacher import teacher_spec
from orchestrator.set_formats import ScoreRow, SetCard, SoftLabels, pixels_uint8, write_hf, write_imagefolder
from workers.teachers import load_teacher

FORMATS = ("pt", "npz", "png", "imagefolder", "hf")
FOLDER_FORMATS = ("png", "imagefolder", "hf")  # the others write one file


class Normalisation(NamedTuple):
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units
    std: tuple[float, ...]


# The constants the official DM code (VICO-UoE/DatasetCondensation, utils.py, get_dataset, commit
# 53f63a6) hard-codes for the datasets it knows, by this project's dataset name. Its evaluation
# normalises the real test images with these, so a pt export is written in them. CIFAR-10's std
# there is not the split's population std (ours: 0.2470, 0.2435, 0.2616).
OFFICIAL_NORMALISATION: dict[str, Normalisation] = {
    "mnist": Normalisation((0.1307,), (0.3081,)),
    "fashion_mnist": Normalisation((0.2861,), (0.3530,)),
    "svhn": Normalisation((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": Normalisation((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": Normalisation((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def renormalize(images: torch.Tensor, source: tuple[Sequence[float], Sequence[float]],
                target: tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    """Images normalised with ``source`` (mean, std) re-expressed in ``target``'s normalisation:
    the same pixels, nothing clamped, computed in float64 and returned in the input's dtype."""
    def view(values: Sequence[float]) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64).view(1, -1, 1, 1)

    pixels = images.double() * view(source[1]) + view(source[0])
    return ((pixels - view(target[0])) / view(target[1])).to(images.dtype)


def export_run(run: RunDir, fmt: str, to: str, *, force: bool = False) -> str:
    """Write the committed synthetic set of ``run`` to exactly ``to`` (orchestrator.export_target:
    an existing export is replaced only with ``force``); returns what was written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = ExportTarget(Path(to), folder=fmt in FOLDER_FORMATS, force=force)
    target.check()  # before reading the set
    images, labels = read_method(run, "dm")
    ds = run.dataset
    mean, std, names = list(ds.mean), list(ds.std), list(ds.class_names)
    if fmt == "pt":
        # {'data': [[images, labels]]}: what the official DM code saves and loads, in its normalisation
        # where its get_dataset knows the dataset (else ours); 'mean'/'std' are the ones the images are in.
        official = OFFICIAL_NORMALISATION.get(ds.name)
        if official is not None and len(official.mean) == len(mean):
            images = renormalize(images, (mean, std), official)
            mean, std = list(official.mean), list(official.std)
        with target.writing() as staged, staged.open("wb") as f:
            _torch_save({"data": [[images, labels]], "mean": mean, "std": std, "class_names": names}, f)
        return f"{target.path} ({len(labels)} images)"
    if fmt == "npz":
        with target.writing() as staged, staged.open("wb") as f:  # a file object: numpy adds no .npz to the name
            np.savez_compressed(f, images=images.numpy(), labels=labels.numpy(), class_names=np.array(names),
                                mean=np.array(mean), std=np.array(std))
        return f"{target.path} ({len(labels)} images)"
    pixels = pixels_uint8(images, mean, std)
    if fmt == "hf":
        card, soft = set_card(run, len(labels)), soft_labels(run, images)
        with target.writing() as staged:
            held = write_hf(staged, pixels, labels, names, card, soft)
    else:
        with target.writing() as staged:
            held = write_imagefolder(staged, pixels, labels, names)
    return f"{target.path}/ ({held})"


class _KeepsWriteErrors:
    """A file whose write errors torch.save cannot hide: it reports them as a RuntimeError."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def _torch_save(obj: object, f: IO[bytes]) -> None:
    """torch.save into ``f``; a failed write stays the OSError it was (no space, quota)."""
    kept = _KeepsWriteErrors(f)
    try:
        torch.save(obj, kept)
    except RuntimeError:
        if kept.error is None:
            raise
        raise kept.error from None


def soft_labels(run: RunDir, images: torch.Tensor) -> SoftLabels | None:
    """Under soft-label evaluation, the teacher's probabilities of every image at the temperature
    the evaluation used (of the stored images, not augmented); None under hard labels."""
    spec, e, ds = teacher_spec(run), run.config.evaluate, run.dataset
    if spec is None:
        return None
    teacher = load_teacher(spec, channels=ds.channels, num_classes=ds.num_classes, im_size=tuple(ds.im_size))
    with torch.no_grad():
        probabilities = torch.softmax(teacher(images) / e.protocol_temperature, dim=1)
    return SoftLabels(probabilities.numpy(), "probabilities", teacher_name(run), e.protocol_temperature)


def teacher_name(run: RunDir) -> str:
    t = run.resolved.teacher
    if t is None:
        return "no teacher"
    return f"{teacher_words(t.config)} ({t.score_identity})" if t.network is not None else teacher_words(t.config)


def set_card(run: RunDir, images: int) -> SetCard:
    """The dataset card of the run's synthetic set: what it is, how it was made, what it scores
    under the evaluation's protocol (with DD-Ranking's LRS where known) and under hard labels."""
    cfg, ds = run.config, run.dataset
    plain = augmentation_suffix(cfg)
    labels = "hard labels" if cfg.evaluate.protocol_labels == "hard" else f"soft labels from {teacher_name(run)}"
    protocol = f"{cfg.evaluate.protocol}: {labels}{plain}"  # evaluate.protocol names every figure
    rows = [ScoreRow(protocol, s.method, s.model, s.n, s.mean, s.std, s.lrs) for s in summarize(read_results(run))]
    if cfg.evaluate.protocol_labels == "soft":
        rows += [ScoreRow("paper: hard labels" + plain, s.method, s.model, s.n, s.mean, s.std)
                 for s in summarize(hard_label_scores(run))]
    return SetCard(
        dataset=ds.name, class_names=tuple(ds.class_names), images=images, ipc=cfg.condense.ipc,
        image_size=(ds.channels, *ds.im_size), method=synthetic_label(cfg),
        config_yaml=yaml.safe_dump(redacted_config(cfg.model_dump(mode="json")), sort_keys=False),
        commit=run.record.versions.commit or f"dmcondense {run.record.versions.dmcondense}",
        made=how_made(cfg), scores=tuple(rows),
        fair_note="LRS: DD-Ranking's label-robust score of the same networks (0-100, higher is better)")
