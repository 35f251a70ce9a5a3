"""Decoding image files with PIL into uint8 RGB arrays at the target resolution.

Every mode (L, LA, RGBA, CMYK, P, I;16, ...) becomes RGB; transparency is dropped,
not composited. Geometry: the largest centred square is cropped, then resized to
``resolution x resolution`` with PIL's antialiased bilinear filter, so no image is
stretched. A file that cannot be decoded is skipped and reported, or raises
(naming the file) when ``strict``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .types import DatasetError, Skipped

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: str) -> list[str]:
    """Image files under ``directory`` (recursively), sorted for a stable order."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(parent, f) for f in sorted(files) if is_image_file(f))
    return found


def center_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _peak(mode: str, values: np.ndarray) -> float:
    """The white level of a wide greyscale image: its format's, or guessed from its range."""
    if mode.startswith("I;16"):
        return 65535.0
    top = float(values.max(initial=0.0))
    return 1.0 if mode == "F" and top <= 1.0 else 255.0 if top <= 255.0 else 65535.0


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; 16-bit, 32-bit and float greyscale are scaled down, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.rint(values / _peak(image.mode, values) * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled, "L")
    if image.mode == "P":
        image = image.convert("RGBA")  # palette transparency resolves before dropping alpha
    return image.convert("RGB")


def decode_image(path: str, resolution: int) -> np.ndarray:
    """One file -> uint8 [3, resolution, resolution]."""
    with Image.open(path) as image:
        image.draft("RGB", (resolution, resolution))  # JPEG: decode at reduced scale when possible
        rgb = to_rgb(image)
    square = center_square(rgb).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()


@dataclass
class Decoded:
    """Decoded files: the images kept, which inputs they came from, and what was skipped."""

    images: np.ndarray  # uint8 [N, 3, R, R]
    kept: list[int]  # index into the input list of each image
    skipped: list[Skipped] = field(default_factory=list)


def decode_files(paths: Sequence[str], resolution: int, *, strict: bool = False) -> Decoded:
    """Decode every file; undecodable ones are skipped with a warning, or raise when strict."""
    images = np.empty((len(paths), 3, resolution, resolution), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[Skipped] = []
    for i, path in enumerate(paths):
        try:
            images[len(kept)] = decode_image(path, resolution)
        except Exception as err:  # PIL's format plugins raise assorted types on bad bytes
            reason = f"{type(err).__name__}: {err}"
            if strict:
                raise DatasetError(f"cannot decode image {path} ({reason}); fix or remove the file") from err
            warnings.warn(f"skipping undecodable image {path}: {reason}", stacklevel=2)
            skipped.append(Skipped(path, reason))
            continue
        kept.append(i)
    return Decoded(images[: len(kept)], kept, skipped)
