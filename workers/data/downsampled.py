"""Downsampled ImageNet (Chrabaszcz et al. 2017) as published: npz batches.

Layout: ROOT/Imagenet64_train/train_data_batch_<k>.npz and
ROOT/Imagenet64_val/val_data.npz (the folders' contents may also sit directly
in ROOT). Keys: ``data`` uint8 [N, 3*S*S] (R, G, B planes) and ``labels``
1-based. Class names are the wnids of ROOT/map_clsloc.txt when present, else
"0".."K-1". Loading a class range scans every train batch and keeps only that
range's rows, so prepare this source with many classes per task.
"""

from __future__ import annotations

import glob
import math
import os
import re
import zipfile
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from .arrays import resize_images
from .base import Loaded, check_labels, counts_of
from .fingerprint import file_stats, fingerprint
from .types import DatasetError

_FIX = "set dataset.root to the folder holding Imagenet64_train/ and Imagenet64_val/"


def _batch_number(path: str) -> int:
    match = re.search(r"(\d+)\.npz$", path)
    return int(match.group(1)) if match else 0


def _find(root: str, folder: str, pattern: str) -> list[str]:
    for directory in (os.path.join(root, folder), root):
        found = glob.glob(os.path.join(directory, pattern))
        if found:
            return sorted(found, key=_batch_number)
    return []


def _data_width(path: str) -> int:
    """Row width of the ``data`` array, read from the npy header without loading it."""
    with zipfile.ZipFile(path) as archive, archive.open("data.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape = read(f)[0]
    return int(shape[1])


class DownsampledImageNetSource:
    channels = 3

    def __init__(self, root: str, resolution: int | None = None) -> None:
        self.name = "imagenet64"
        self.train_files = _find(root, "Imagenet64_train", "train_data_batch_*.npz")
        val = _find(root, "Imagenet64_val", "val_data.npz")
        if not self.train_files or not val:
            raise DatasetError(
                f"dataset.root: expected {root}/Imagenet64_train/train_data_batch_*.npz and "
                f"{root}/Imagenet64_val/val_data.npz; {_FIX}"
            )
        self.val_file = val[0]
        self.native = math.isqrt(_data_width(self.train_files[0]) // 3)
        self.resolution = int(resolution or self.native)
        self.class_names = self._class_names(root)

    def _class_names(self, root: str) -> list[str]:
        mapping = os.path.join(root, "map_clsloc.txt")
        if os.path.isfile(mapping):
            with open(mapping) as f:
                rows = sorted((int(parts[1]), parts[0]) for parts in (line.split() for line in f) if parts)
            return [wnid for _, wnid in rows]
        top = max(int(labels.max()) for labels in self._train_labels_raw)
        return [str(i) for i in range(top + 1)]

    @cached_property
    def _train_labels_raw(self) -> list[np.ndarray]:
        return [np.asarray(np.load(f)["labels"], dtype=np.int64) - 1 for f in self.train_files]

    @cached_property
    def _train_labels(self) -> list[np.ndarray]:
        k = len(self.class_names)
        return [check_labels(labels, k, f) for labels, f in zip(self._train_labels_raw, self.train_files)]

    @cached_property
    def _test_labels(self) -> np.ndarray:
        with np.load(self.val_file) as npz:
            labels = np.asarray(npz["labels"], dtype=np.int64) - 1
        return check_labels(labels, len(self.class_names), self.val_file)

    def _images(self, rows: np.ndarray) -> np.ndarray:
        images = rows.reshape(len(rows), 3, self.native, self.native)
        return resize_images(images, self.resolution)

    def train_counts(self) -> list[int]:
        return counts_of(np.concatenate(self._train_labels), len(self.class_names))

    def test_counts(self) -> list[int]:
        return counts_of(self._test_labels, len(self.class_names))

    def test_size(self) -> int:
        return len(self._test_labels)

    def class_fingerprints(self) -> list[str]:
        """Per class: each batch file holding its rows (name, size, time) and the rows' positions."""
        k = len(self.class_names)
        parts: list[list[bytes]] = [[] for _ in range(k)]
        counts = [0] * k
        for path, labels in zip(self.train_files, self._train_labels):
            stats = file_stats(path, os.path.dirname(path))
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(k + 1))
            for c in np.flatnonzero(np.diff(bounds)):
                rows = order[bounds[c]:bounds[c + 1]]
                parts[c] += [stats, rows.astype(np.int64).tobytes()]
                counts[c] += len(rows)
        return [fingerprint(name, counts[c], parts[c]) for c, name in enumerate(self.class_names)]

    def load_train(self, class_ids: Sequence[int], *, strict: bool = False) -> Loaded:
        wanted = np.asarray(sorted(set(class_ids)), dtype=np.int64)
        images, labels = [], []
        for path, batch_labels in zip(self.train_files, self._train_labels):
            mask = np.isin(batch_labels, wanted)
            if mask.any():
                with np.load(path) as npz:
                    images.append(self._images(npz["data"][mask]))
                labels.append(batch_labels[mask])
        all_labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        order = np.argsort(all_labels, kind="stable")
        shape = (0, 3, self.resolution, self.resolution)
        return Loaded((np.concatenate(images) if images else np.empty(shape, np.uint8))[order], all_labels[order])

    def load_test(self, start: int = 0, stop: int | None = None, *, strict: bool = False) -> Loaded:
        with np.load(self.val_file) as npz:
            images = self._images(npz["data"][start:stop])
        return Loaded(images, self._test_labels[start:stop])
