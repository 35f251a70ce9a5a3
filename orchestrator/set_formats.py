"""Synthetic sets in formats anyone can load: a Hugging Face ``datasets`` folder with its
dataset card, and torchvision's ImageFolder layout (one PNG folder per class).

Pure functions of the images (uint8 [N, C, H, W], C = 1 or 3), their class ids and the class
names; the caller reads them from a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import torch
import yaml
from PIL import Image

from workers.data import denormalize

SOFT_KINDS = ("probabilities", "logits")
# The Hub's size_categories buckets (upper bound, name), smallest first.
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


class MissingExtra(ImportError, ValueError):
    """An optional dependency is not installed (a ValueError too: the CLI refuses it in one line)."""


@dataclass(frozen=True)
class SoftLabels:
    """A teacher's outputs for every image, row i for image i."""

    values: np.ndarray  # float [N, K], K the number of classes
    kind: Literal["probabilities", "logits"]
    teacher: str  # the network that produced them, e.g. "ConvNet trained on the full set"
    temperature: float

    def __post_init__(self) -> None:
        if self.kind not in SOFT_KINDS:
            raise ValueError(f"soft labels are {' or '.join(SOFT_KINDS)}, got {self.kind!r}")
        if np.ndim(self.values) != 2:
            raise ValueError(f"soft labels are [images, classes], got shape {np.shape(self.values)}")
        if not self.temperature > 0:
            raise ValueError(f"the teacher's temperature must be positive, got {self.temperature}")

    def describe(self) -> str:
        return f"the {self.kind} of the teacher {self.teacher} at temperature {self.temperature:g}"


@dataclass(frozen=True)
class ScoreRow:
    """Test accuracy (percent) of networks trained from scratch on the set."""

    protocol: str  # evaluate.protocol and the labels: "paper: hard labels", "rded: soft labels from ..."
    method: str
    model: str
    networks: int
    mean: float
    std: float
    fair_mean: float | None = None  # a fair score of the same networks (SetCard.fair_note says which)
    fair_std: float | None = None


@dataclass(frozen=True)
class SetCard:
    """What the set is, how it was made and what it scores: the content of its dataset card."""

    dataset: str  # the source dataset
    class_names: tuple[str, ...]  # the label space, index = class id
    images: int
    ipc: int  # images per class
    image_size: tuple[int, int, int]  # channels, height, width
    method: str  # the recipe, as the run's report names it
    config_yaml: str
    commit: str  # the project commit that made it
    made: str  # how the set was made (report.how_made): iterations of a matching method, or RDED's selection
    scores: tuple[ScoreRow, ...] = ()
    fair_note: str = ""  # what the fair columns measure; shown when a row has one
    license: str = "unknown"  # a Hub license id; the source dataset's terms still apply

    @property
    def pretty_name(self) -> str:
        return f"{self.dataset} condensed with {self.method}, {self.ipc} images per class"


def pixels_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images [N, C, H, W] as the uint8 pixels the writers take."""
    return (denormalize(images, mean, std) * 255).round().to(torch.uint8).numpy()


def write_hf(to: str | Path, images_uint8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
             class_names: Sequence[str], card: SetCard, soft: SoftLabels | None = None) -> str:
    """A ``datasets.load_from_disk`` folder (image, label and, with ``soft``, soft_label) with its
    README.md card; returns what it holds."""
    hf = _import_datasets()
    pixels, ids = _checked(images_uint8, labels, class_names)
    if card.images != len(ids):
        raise ValueError(f"the card describes {card.images} images, the set holds {len(ids)}")
    features = {"image": hf.Image(), "label": hf.ClassLabel(names=list(class_names))}
    columns: dict[str, object] = {"image": [_picture(p) for p in pixels], "label": ids.tolist()}
    description = card.pretty_name + "."
    if soft is not None:
        features["soft_label"] = hf.Sequence(hf.Value("float32"), length=len(class_names))
        columns["soft_label"] = _soft_column(soft, len(ids), len(class_names))
        description += f" soft_label: {soft.describe()}."
    info = hf.DatasetInfo(description=description, license=card.license, features=hf.Features(features))
    target = _empty_folder(to)
    hf.Dataset.from_dict(columns, info=info).save_to_disk(str(target))
    (target / "README.md").write_text(card_markdown(card, soft, hf.__version__), encoding="utf-8")
    return f"{len(ids)} images, a Hugging Face datasets folder"


def write_imagefolder(to: str | Path, images_uint8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                      class_names: Sequence[str]) -> str:
    """torchvision's ImageFolder layout: one folder per class, named so that sorting gives the
    class ids; a class without images gets an empty folder to keep the ids of those after it
    (load such a set with ``ImageFolder(root, allow_empty=True)``). Returns what it holds."""
    pixels, ids = _checked(images_uint8, labels, class_names)
    target = _empty_folder(to)
    folders = [target / class_folder(c, name, len(class_names)) for c, name in enumerate(class_names)]
    for folder in folders:
        folder.mkdir()
    counts = np.bincount(ids, minlength=len(class_names))
    width = max(4, len(str(counts.max() - 1)))  # sorted file names keep each class's order
    seen = np.zeros_like(counts)
    for img, c in zip(pixels, ids):
        _picture(img).save(folders[c] / f"{seen[c]:0{width}d}.png")
        seen[c] += 1
    return f"{len(ids)} images in {int((counts > 0).sum())} class folders"


def class_folder(class_id: int, name: str, classes: int) -> str:
    """Zero-padded id first (sorted order = id order), then the name made filesystem-safe."""
    width = max(5, len(str(classes - 1)))
    return f"{class_id:0{width}d}_" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]


def card_markdown(card: SetCard, soft: SoftLabels | None = None, datasets_version: str | None = None) -> str:
    """A Hugging Face dataset card: the Hub's YAML front matter, then what the set is, how it was
    made and what it scores (only the figures the card holds); ``datasets_version``: the one that
    wrote the folder (older ones may not read its features)."""
    front = {"license": card.license, "task_categories": ["image-classification"],
             "size_categories": [size_category(card.images)], "pretty_name": card.pretty_name,
             "tags": ["dataset-condensation", "dataset-distillation", "synthetic"]}
    sections = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {card.pretty_name}", "",
        f"A synthetic training set condensed from {card.dataset}.", "",
        "## The set", "", *_set_lines(card, soft), "",
        "## How it was made", "",
        f"{card.made}, project commit `{card.commit}`. The config:", "",
        "```yaml", card.config_yaml.rstrip(), "```", "",
        "## What it scores", "", _scores_markdown(card), "",
        "## Classes", "", "<details>", "", "| id | name |", "|---|---|",
        *(f"| {c} | {_cell(name)} |" for c, name in enumerate(card.class_names)), "", "</details>", "",
        "## Loading", "", "```python", "from datasets import load_from_disk",
        "", 'ds = load_from_disk("path/to/this/folder")', "```", "",
    ]
    if datasets_version:
        sections += [f"datasets {datasets_version} wrote this folder: load it with that version or a newer one.", ""]
    return "\n".join(sections)


def size_category(n: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if n < bound), "n>10M")


def _set_lines(card: SetCard, soft: SoftLabels | None) -> list[str]:
    c, h, w = card.image_size
    held = card.images // card.ipc
    classes = f"{held} of {len(card.class_names)}" if held != len(card.class_names) else str(held)
    lines = [f"- source dataset: {card.dataset}", f"- classes: {classes}",
             f"- images: {card.images}, {card.ipc} per class",
             f"- image size: {c} x {h} x {w} (channels x height x width), {'grayscale' if c == 1 else 'RGB'} PNG",
             f"- method: {card.method}",
             "- columns: `image`, `label` (the class id the image was condensed for; names in the features)"]
    if soft is not None:
        lines.append(f"- column `soft_label`: float32 per class, {soft.describe()}")
    return lines


def _scores_markdown(card: SetCard) -> str:
    if not card.scores:
        return "No scores recorded."
    fair = any(r.fair_mean is not None for r in card.scores)
    head = ["protocol", "method", "model", "networks", "accuracy (%)"] + (["fair score"] if fair else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in card.scores:
        cells = [_cell(r.protocol), _cell(r.method), _cell(r.model), str(r.networks), f"{r.mean:.2f} ± {r.std:.2f}"]
        if fair:
            cells.append(_figure(r.fair_mean, r.fair_std))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Top-1 accuracy on the real test split of {card.dataset}, mean ± std over the networks "
                  "each row trained on this set."]
    if fair and card.fair_note:
        lines.append(f"Fair accuracy: {card.fair_note}")
    return "\n".join(lines)


def _figure(mean: float | None, std: float | None) -> str:
    """Only the figures given: no std when none was recorded."""
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise MissingExtra("writing a Hugging Face set needs the hf extra: pip install 'dmcondense[hf]'") from None
    return datasets


def _checked(images_uint8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
             class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    pixels, ids = np.asarray(images_uint8), np.asarray(labels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, 1 or 3, H, W], got {pixels.dtype} {list(pixels.shape)}")
    if ids.shape != (len(pixels),) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"labels must be {len(pixels)} integer class ids, got {ids.dtype} {list(ids.shape)}")
    if len(ids) and not 0 <= ids.min() <= ids.max() < len(class_names):
        raise ValueError(f"class ids must lie in [0, {len(class_names)}), got {ids.min()}..{ids.max()}")
    return pixels, ids.astype(np.int64)


def _soft_column(soft: SoftLabels, n: int, classes: int) -> pa.Array:
    values = np.asarray(soft.values, dtype=np.float32)
    if values.shape != (n, classes):
        raise ValueError(f"soft labels must be [{n}, {classes}] (images, classes), got {list(values.shape)}")
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), classes)  # no per-float Python objects


def _picture(chw: np.ndarray) -> Image.Image:
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    return Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)


def _empty_folder(to: str | Path) -> Path:
    """A set is written into a new or empty folder: files left there would join it."""
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} exists and is not an empty folder; write the set to a new one")
    target.mkdir(parents=True, exist_ok=True)
    return target
