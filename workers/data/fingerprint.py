"""The content of a dataset's train split, class by class, cheap enough to compute at every plan
and every resume: each class's fingerprint is ``<images>:<16 hex>``, the hash of what identifies
its images. A run records them, so that data changed under a run (images added to a class folder,
another copy of a file) is named class by class, and a dataset moved elsewhere is recognised.

What identifies an image, per source: for image folders its file name (relative to the class
folder), size and modification time, never its pixels (decoding every file would cost as much as
the statistics pass); for sources held as arrays (digits, MNIST, CIFAR, SVHN) the decoded pixels;
for the downsampled-ImageNet batches each batch file's name, size and modification time with the
class's rows in it; for a prepared dataset its manifest (the sha256 of the file holding the class).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np


def fingerprint(class_name: str, count: int, parts: Iterable[bytes]) -> str:
    h = hashlib.sha256(class_name.encode() + b"\0")
    for part in parts:
        h.update(part)
        h.update(b"\0")
    return f"{count}:{h.hexdigest()[:16]}"


def images_in(class_fingerprint: str) -> int:
    """How many train images a class's fingerprint counts."""
    return int(class_fingerprint.split(":", 1)[0])


def file_stats(path: str, base: str) -> bytes:
    """A file's name relative to ``base``, its size and its modification time (whole seconds: a
    copy that keeps times may round them)."""
    st = os.stat(path)
    return f"{os.path.relpath(path, base)}|{st.st_size}|{int(st.st_mtime)}".encode()


def files_fingerprint(class_name: str, paths: Sequence[str]) -> str:
    """A class of image files, by name (relative to the folder they share), size and time."""
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    return fingerprint(class_name, len(paths), (file_stats(p, base) for p in paths))


def arrays_fingerprints(class_names: Sequence[str], images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Every class of uint8 images held in memory, by its pixels in their stored order."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(class_names) + 1))
    return [fingerprint(name, int(hi - lo), (np.ascontiguousarray(images[order[lo:hi]]).tobytes(),))
            for name, lo, hi in zip(class_names, bounds[:-1], bounds[1:])]
