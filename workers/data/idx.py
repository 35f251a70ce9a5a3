"""The idx format of MNIST and Fashion-MNIST, read directly (gzipped or not).

Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions,
then each dimension as a big-endian uint32; raw values follow.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from .types import DatasetError

_UBYTE = 0x08


def find_idx(directory: str, stem: str) -> str | None:
    """``stem`` or ``stem.gz`` in ``directory``, unpacked preferred; None if neither."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read idx file {path}: {err}; replace it with an intact copy") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise DatasetError(f"{path} is not a uint8 idx file (bad magic {data[:4].hex()}); replace it")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says shape {shape}; replace it with an intact copy")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable, owned
