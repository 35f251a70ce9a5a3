"""CIFAR-10 and CIFAR-100 from their python-version batches, checked by content, not by file.

torchvision checks a CIFAR folder by the md5 of each batch file, so a copy whose pickles
were written again (another mirror, a rebuild from another package) is refused even when
every pixel and label is the original's. Here a folder is checked by what it holds:

1. every file of the layout is there and unpickles (through an unpickler that builds
   only dicts, lists, strings, numbers and numpy arrays: a batch file runs no code);
2. each batch is ``{'data': uint8 [N, 3072], '<labels>': N ints in range}``, with the
   published number of images per class in each split;
3. where the published content is known (CIFAR-10), the sha256 of each split's labels
   and pixels, in file order, equals it (``KNOWN_CONTENT``).

A folder that fails says which file and what, in one line, with the fix.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np

from .types import DatasetError


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str  # under dataset.root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str  # the class names in the meta file
    labels_key: str  # the labels in a batch
    train_per_class: int
    test_per_class: int


CIFAR10 = CifarLayout("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      ("test_batch",), "batches.meta", "label_names", "labels", 5000, 1000)
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", ("train",), ("test",), "meta", "fine_label_names",
                       "fine_labels", 500, 100)

# sha256 of each split's labels (one uint8 each) then pixels (uint8 [N, 3072]), in file order,
# as the published python-version batches hold them.
KNOWN_CONTENT: dict[tuple[str, str], str] = {
    ("cifar10", "train"): "72271e0eaae021dd9568260927404c4fff87e7e0bfa04c843b94150b01b9bc26",
    ("cifar10", "test"): "ecc0a6ddb5cb58330ce4f06c1825ec8c68baeade5baaacbb3cbdf8f385599213",
}

_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _DataOnly(pickle.Unpickler):
    """Builds plain data and numpy arrays; refuses any other global (a pickle that would run code)."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never does")


@dataclass
class CifarFolder:
    """A checked CIFAR folder: class names and both splits as uint8 [N, 3, 32, 32] + int64 labels."""

    class_names: list[str]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def fix_hint(layout: CifarLayout, folder: str) -> str:
    return (f"fetch the {layout.name} python-version batches again into {folder} (or set dataset.root to the "
            "folder that holds a complete copy)")


def read_cifar(layout: CifarLayout, root: str) -> CifarFolder:
    """The folder ``root/<layout.folder>`` read and checked (module docstring); DatasetError otherwise."""
    folder = os.path.join(root, layout.folder)
    meta = _load(layout, folder, layout.meta_file)
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{layout.name}: {os.path.join(folder, layout.meta_file)} has no class names "
                           f"('{layout.names_key}'); {fix_hint(layout, folder)}")
    train = _split(layout, folder, layout.train_files, len(names), layout.train_per_class, "train")
    test = _split(layout, folder, layout.test_files, len(names), layout.test_per_class, "test")
    return CifarFolder(list(names), train, test)


def _split(layout: CifarLayout, folder: str, files: tuple[str, ...], num_classes: int, per_class: int,
           split: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for name in files:
        x, y = _batch(layout, folder, name, num_classes)
        data.append(x)
        labels.append(y)
    x, y = np.concatenate(data), np.concatenate(labels)
    counts = np.bincount(y, minlength=num_classes)
    if (counts != per_class).any():
        raise DatasetError(f"{layout.name}: the {split} split in {folder} holds {len(y):,} images, {counts.min()} to "
                           f"{counts.max()} per class, where {layout.name} has {per_class:,} per class; "
                           f"{fix_hint(layout, folder)}")
    known = KNOWN_CONTENT.get((layout.name, split))
    if known is not None:
        digest = content_digest(x, y)
        if digest != known:
            raise DatasetError(f"{layout.name}: the {split} images or labels in {folder} differ from the published "
                               f"{layout.name} (content sha256 {digest[:12]}..., expected {known[:12]}...); "
                               f"{fix_hint(layout, folder)}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def content_digest(pixels: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the labels (one byte each) then the pixels, uint8 [N, 3072], in file order."""
    h = hashlib.sha256()
    h.update(np.asarray(labels, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _batch(layout: CifarLayout, folder: str, name: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    path = os.path.join(folder, name)
    batch = _load(layout, folder, name)
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get(layout.labels_key) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{layout.name}: {path} holds no uint8 [N, 3072] 'data' array; {fix_hint(layout, folder)}")
    if labels is None or len(labels) != len(data):
        raise DatasetError(f"{layout.name}: {path} has {len(data):,} images but "
                           f"{'no' if labels is None else len(labels)} labels ('{layout.labels_key}'); "
                           f"{fix_hint(layout, folder)}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{layout.name}: {path} has labels outside 0..{num_classes - 1}; {fix_hint(layout, folder)}")
    return data, labels


def _load(layout: CifarLayout, folder: str, name: str) -> object:
    path = os.path.join(folder, name)
    if not os.path.isdir(folder):
        raise DatasetError(f"{layout.name}: expected {folder}; set dataset.root to the folder that holds it, "
                           "or dataset.download: true to fetch it")
    if not os.path.isfile(path):
        raise DatasetError(f"{layout.name}: {path} is missing; {fix_hint(layout, folder)}")
    try:
        with open(path, "rb") as f:
            return _DataOnly(io.BufferedReader(f), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc)
        what = "is truncated" if truncated else f"is not a CIFAR batch ({exc})"
        raise DatasetError(f"{layout.name}: {path} {what}; {fix_hint(layout, folder)}") from None
