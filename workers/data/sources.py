"""Raw dataset sources by name, and where each expects its files.

- ``digits``: scikit-learn's 8x8 digits (ships offline; the default), values
  0..16 scaled to 0..255, split 75/25 per class by a fixed-seed permutation.
- ``mnist``, ``fashion_mnist``: idx files (``.gz`` or unpacked) read directly from
  ROOT/MNIST/raw or ROOT/FashionMNIST/raw; torchvision is used only to download.
- ``svhn``: torchvision's files under ROOT; ``cifar10``, ``cifar100``: the python-version
  batches under ROOT, checked by content (``cifar``), torchvision only to download.
- ``imagefolder``, ``tinyimagenet``, ``imagenet``: image files (see ``folders``).
- ``imagenet64``: the downsampled-ImageNet npz batches (see ``downsampled``).

Array sources keep their native size unless ``resolution`` asks for another;
file sources default to 64x64.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .arrays import ArraySource
from .base import Source
from .cifar import CIFAR10, CIFAR100, CifarLayout, read_cifar
from .downsampled import DownsampledImageNetSource
from .folders import ImageFolderSource, ImageNetSource, TinyImageNetSource
from .idx import find_idx, read_idx
from .types import DatasetError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
DEFAULT_ROOT_ENV = "DMCONDENSE_DATA"

_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip


def default_root() -> str:
    """ROOT when none is given: $DMCONDENSE_DATA, else ./data."""
    return os.environ.get(DEFAULT_ROOT_ENV, "data")


def _digit_names() -> list[str]:
    return [str(d) for d in range(10)]


def _stratified_split(labels: np.ndarray, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded permutation; its first round(n * fraction) items go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_source(root: str | None = None, resolution: int | None = None, download: bool = False) -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    train, test = _stratified_split(labels, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION)
    splits = (images[train], labels[train]), (images[test], labels[test])
    return ArraySource("digits", _digit_names(), *splits, resolution)


def _idx_loader(name: str, folder: str, class_names: list[str], download_cls: str) -> Callable[..., Source]:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def load(root: str | None = None, resolution: int | None = None, download: bool = False) -> Source:
        root = root or default_root()
        raw = _find_raw(root, folder, stems[0])
        paths = [find_idx(raw, s) for s in stems]
        if None in paths and download:
            fetch = getattr(_torchvision().datasets, download_cls)
            _download(name, _expected(raw, stems), lambda: [fetch(root, train=t, download=True) for t in (True, False)])
            raw = _find_raw(root, folder, stems[0])
            paths = [find_idx(raw, s) for s in stems]
        if None in paths:
            raise DatasetError(f"{name}: expected {_expected(raw, stems)}; set dataset.root to the folder that holds "
                               f"them (or {folder}/raw/ with them), or dataset.download: true to fetch them")
        x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)  # type: ignore[arg-type]
        return ArraySource(name, class_names, (x_train[:, None], y_train), (x_test[:, None], y_test), resolution)

    return load


def _expected(folder: str, stems: tuple[str, ...]) -> str:
    missing = [s for s in stems if find_idx(folder, s) is None]
    return f"{', '.join(missing)} (.gz or unpacked) in {folder}"


def _torchvision():  # noqa: ANN202 - imported late: only downloads need it
    import torchvision

    return torchvision


def _download(name: str, expected: str, fetch: Callable[[], object]) -> None:
    """torchvision's download, with a failure worded as one line: what was expected where."""
    try:
        fetch()
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        reason = str(getattr(err, "reason", err)).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(
            f"{name}: expected {expected}; the download (dataset.download: true) failed ({reason}); "
            "put the files there and set dataset.root to their folder"
        ) from None


def _find_raw(root: str, folder: str, stem: str) -> str:
    """The directory holding the idx files: ROOT/<folder>/raw, or ROOT/raw, or ROOT itself."""
    candidates = [os.path.join(root, folder, "raw"), os.path.join(root, "raw"), root]
    return next((c for c in candidates if find_idx(c, stem)), candidates[0])


def _torchvision_loader(name: str, expected: str, build: Callable[..., tuple]) -> Callable[..., Source]:
    def load(root: str | None = None, resolution: int | None = None, download: bool = False) -> Source:
        root = root or default_root()
        path = os.path.join(root, expected)
        if not os.path.exists(path) and download:
            _download(name, path, lambda: build(root, True))
        if not os.path.exists(path):
            raise DatasetError(f"{name}: expected {path}; set dataset.root to the folder that holds it, "
                               "or dataset.download: true to fetch it")
        class_names, train, test = build(root, False)
        return ArraySource(name, class_names, train, test, resolution)

    return load


def _cifar(layout: CifarLayout, cls_name: str) -> Callable[[str, bool], tuple]:
    """torchvision only downloads; the folder is read and checked by content (workers.data.cifar)."""
    def build(root: str, download: bool) -> tuple:
        if download:
            getattr(_torchvision().datasets, cls_name)(root, train=True, download=True)
            return ()
        folder = read_cifar(layout, root)
        return folder.class_names, folder.train, folder.test

    return build


def _svhn(root: str, download: bool) -> tuple:
    splits = [_torchvision().datasets.SVHN(root, split=s, download=download) for s in ("train", "test")]
    return _digit_names(), *((s.data, np.asarray(s.labels)) for s in splits)


def _files(name: str, cls: type) -> Callable[..., Source]:
    def load(root: str | None = None, resolution: int | None = None, download: bool = False) -> Source:
        if download:
            raise DatasetError(f"{name} cannot be downloaded; fetch it yourself and set dataset.download: false")
        return cls(root or default_root(), resolution)

    return load


SOURCES: dict[str, Callable[..., Source]] = {
    "digits": load_digits_source,
    "mnist": _idx_loader("mnist", "MNIST", _digit_names(), "MNIST"),
    "fashion_mnist": _idx_loader("fashion_mnist", "FashionMNIST", _FASHION_CLASSES, "FashionMNIST"),
    "svhn": _torchvision_loader("svhn", "train_32x32.mat", _svhn),
    "cifar10": _torchvision_loader("cifar10", CIFAR10.folder, _cifar(CIFAR10, "CIFAR10")),
    "cifar100": _torchvision_loader("cifar100", CIFAR100.folder, _cifar(CIFAR100, "CIFAR100")),
    "imagefolder": _files("imagefolder", ImageFolderSource),
    "tinyimagenet": _files("tinyimagenet", TinyImageNetSource),
    "imagenet": _files("imagenet", ImageNetSource),
    "imagenet64": _files("imagenet64", DownsampledImageNetSource),
}
SOURCE_NAMES = tuple(SOURCES)


def open_source(
    name: str, root: str | None = None, *, resolution: int | None = None, download: bool = False
) -> Source:
    """A raw source by name; opening checks the root but decodes nothing."""
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(SOURCE_NAMES)}, prepared")
    if resolution is not None and resolution < 1:
        raise DatasetError(f"dataset.resolution must be a positive integer, got {resolution}")
    return SOURCES[name](root, resolution, download)
