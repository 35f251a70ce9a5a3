"""Sources made of image files in class folders: imagefolder, TinyImageNet, ImageNet.

Listing is per class (one directory each), so loading a class range never
lists or decodes other classes. Decoding: see ``imagefiles``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from .base import Loaded, counts_of
from .fingerprint import files_fingerprint
from .imagefiles import decode_files, list_images
from .types import DatasetError

DEFAULT_RESOLUTION = 64  # the paper's size for TinyImageNet and ImageNet-1K


def subdirs(directory: str) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def require_dir(path: str, what: str, fix: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"dataset.root: expected {what} at {path}; {fix}")
    return path


class FolderSource:
    """Train files listed per class; a test list of (file, class id)."""

    channels = 3

    def __init__(self, name: str, class_names: Sequence[str], resolution: int | None) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.resolution = int(resolution or DEFAULT_RESOLUTION)
        self._index = {n: i for i, n in enumerate(self.class_names)}

    def train_files(self, class_id: int) -> list[str]:
        raise NotImplementedError

    def test_items(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def class_id(self, class_name: str, where: str) -> int:
        if class_name not in self._index:
            raise DatasetError(
                f"{self.name}: the test split does not match the train split: class {class_name!r} "
                f"(in {where}) has no train folder; remove it or add its train images"
            )
        return self._index[class_name]

    def train_counts(self) -> list[int]:
        return [len(self.train_files(c)) for c in range(len(self.class_names))]

    def class_fingerprints(self) -> list[str]:
        return [files_fingerprint(name, self.train_files(c)) for c, name in enumerate(self.class_names)]

    def test_counts(self) -> list[int]:
        labels = np.asarray([c for _, c in self._test], dtype=np.int64)
        return counts_of(labels, len(self.class_names))

    def test_size(self) -> int:
        return len(self._test)

    @cached_property
    def _test(self) -> list[tuple[str, int]]:
        return self.test_items()

    def load_train(self, class_ids: Sequence[int], *, strict: bool = False) -> Loaded:
        images, labels, skipped = [], [], []
        for c in sorted(set(class_ids)):
            files = self.train_files(c)
            decoded = decode_files(files, self.resolution, strict=strict)
            if files and not decoded.kept:
                raise DatasetError(f"{self.name}: no train image of class {self.class_names[c]!r} could be decoded")
            images.append(decoded.images)
            labels.append(np.full(len(decoded.kept), c, dtype=np.int64))
            skipped.extend(decoded.skipped)
        return self._loaded(images, labels, skipped)

    def load_test(self, start: int = 0, stop: int | None = None, *, strict: bool = False) -> Loaded:
        items = self._test[start:stop]
        decoded = decode_files([p for p, _ in items], self.resolution, strict=strict)
        labels = np.asarray([items[i][1] for i in decoded.kept], dtype=np.int64)
        return self._loaded([decoded.images], [labels], decoded.skipped)

    def _loaded(self, images: list, labels: list, skipped: list) -> Loaded:
        shape = (0, 3, self.resolution, self.resolution)
        return Loaded(
            np.concatenate(images) if images else np.empty(shape, np.uint8),
            np.concatenate(labels) if labels else np.empty(0, np.int64),
            skipped,
        )


def _class_folder_items(source: FolderSource, directory: str) -> list[tuple[str, int]]:
    where = f"{directory}/<class>"
    return [
        (path, source.class_id(name, where))
        for name in subdirs(directory)
        for path in list_images(os.path.join(directory, name))
    ]


class ImageFolderSource(FolderSource):
    """ROOT/train/<class>/* and ROOT/test/<class>/* (or ROOT/val/<class>/*)."""

    def __init__(self, root: str, resolution: int | None = None) -> None:
        fix = "set dataset.root to a folder holding train/<class>/ and test/<class>/ image folders"
        self.train_dir = require_dir(os.path.join(root, "train"), "train/<class>/<image files>", fix)
        test = [os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))]
        if not test:
            raise DatasetError(f"dataset.root: expected {root}/test/<class>/ (or val/); {fix}")
        self.test_dir = test[0]
        super().__init__("imagefolder", subdirs(self.train_dir), resolution)

    def train_files(self, class_id: int) -> list[str]:
        return list_images(os.path.join(self.train_dir, self.class_names[class_id]))

    def test_items(self) -> list[tuple[str, int]]:
        return _class_folder_items(self, self.test_dir)


class TinyImageNetSource(FolderSource):
    """wnids.txt, train/<wnid>/images/*.JPEG, val/images/* with val/val_annotations.txt."""

    def __init__(self, root: str, resolution: int | None = None) -> None:
        nested = os.path.join(root, "tiny-imagenet-200")
        self.root = nested if os.path.isdir(nested) else root
        wnids_file = os.path.join(self.root, "wnids.txt")
        if not os.path.isfile(wnids_file):
            raise DatasetError(
                f"dataset.root: expected {wnids_file} with train/ and val/ beside it; "
                "set dataset.root to the unpacked tiny-imagenet-200 folder"
            )
        with open(wnids_file) as f:
            wnids = sorted({line.strip() for line in f if line.strip()})
        super().__init__("tinyimagenet", wnids, resolution)

    def train_files(self, class_id: int) -> list[str]:
        folder = os.path.join(self.root, "train", self.class_names[class_id])
        images = os.path.join(folder, "images")
        return list_images(images if os.path.isdir(images) else folder)

    def test_items(self) -> list[tuple[str, int]]:
        annotations = os.path.join(self.root, "val", "val_annotations.txt")
        if not os.path.isfile(annotations):
            raise DatasetError(f"dataset.root: expected {annotations}; unpack the full tiny-imagenet-200 archive")
        with open(annotations) as f:
            rows = [line.split("\t")[:2] for line in f if line.strip()]
        return [
            (os.path.join(self.root, "val", "images", file), self.class_id(wnid, annotations))
            for file, wnid in sorted(rows)
        ]


class ImageNetSource(FolderSource):
    """ILSVRC: train/<wnid>/*.JPEG; val/<wnid>/*.JPEG, or flat val/*.JPEG with labels in
    ROOT/LOC_val_solution.csv (Kaggle) or ROOT/val_labels.txt (lines ``<file> <wnid>``).
    Classes are the sorted wnids (the usual 0..999 order)."""

    def __init__(self, root: str, resolution: int | None = None) -> None:
        kaggle = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
        self.root = kaggle if os.path.isdir(kaggle) else root
        fix = "set dataset.root to the ImageNet folder holding train/<wnid>/ and val/"
        self.label_root = root
        self.train_dir = require_dir(os.path.join(self.root, "train"), "train/<wnid>/*.JPEG", fix)
        self.val_dir = require_dir(os.path.join(self.root, "val"), "val/ (class folders or flat)", fix)
        super().__init__("imagenet", subdirs(self.train_dir), resolution)

    def train_files(self, class_id: int) -> list[str]:
        return list_images(os.path.join(self.train_dir, self.class_names[class_id]))

    def test_items(self) -> list[tuple[str, int]]:
        if subdirs(self.val_dir):
            return _class_folder_items(self, self.val_dir)
        labels = self._val_labels()
        files = {os.path.splitext(os.path.basename(p))[0]: p for p in list_images(self.val_dir)}
        missing = sorted(set(files) - set(labels))
        if missing:
            raise DatasetError(f"imagenet: no label for val images {missing[:5]}; complete the val labels file")
        return [(files[stem], self.class_id(labels[stem], "the val labels")) for stem in sorted(files)]

    def _val_labels(self) -> dict[str, str]:
        """Image stem -> wnid, from whichever labels file is present."""
        kaggle = os.path.join(self.label_root, "LOC_val_solution.csv")
        plain = os.path.join(self.label_root, "val_labels.txt")
        if os.path.isfile(kaggle):
            with open(kaggle, newline="") as f:
                return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
        if os.path.isfile(plain):
            with open(plain) as f:
                pairs = (line.split()[:2] for line in f if line.strip())
                return {os.path.splitext(file)[0]: wnid for file, wnid in pairs}
        raise DatasetError(
            f"imagenet: val/ is flat and no labels file was found; expected {kaggle} or {plain} "
            "(lines '<file> <wnid>'), or sort val/ into val/<wnid>/ folders"
        )
