"""Dataset sources, the prepared Parquet format, and per-class reads.

``open_dataset(name, root)`` gives a ``DatasetReader`` for any source in
``sources.SOURCE_NAMES`` or for ``prepared`` (the output of ``dmcondense
prepare``, at a local path or URI). Every reader yields uint8 [N, C, H, W]
images with int64 global class ids, and ``read_train(ids)`` returns only those
classes (ordered by class id). ``info.mean``/``info.std`` are per channel, in
[0, 1] units, over every pixel of the train split.
"""

from __future__ import annotations

from .base import Source, SourceReader, check_source
from .prepared import PreparedReader
from .sources import SOURCE_NAMES, open_source
from .types import (
    DatasetError,
    DatasetInfo,
    DatasetReader,
    ImageSet,
    Skipped,
    denormalize,
    normalize,
)

__all__ = [
    "DatasetError", "DatasetInfo", "DatasetReader", "ImageSet", "Skipped", "Source", "SOURCE_NAMES",
    "PreparedReader", "SourceReader", "check_source", "class_fingerprints", "denormalize", "normalize",
    "open_dataset", "open_source",
]

PREPARED = "prepared"


def open_dataset(
    name: str,
    root: str | None = None,
    *,
    resolution: int | None = None,
    download: bool = False,
    strict: bool = False,
    info: DatasetInfo | None = None,
) -> DatasetReader:
    """A reader for ``name`` at ``root``; bad input fails here, before any decoding.

    ``strict``: an undecodable image file raises (naming it) instead of being
    skipped with a warning (skipped files are listed in ``reader.skipped``).
    ``info``: the dataset's info as an earlier open found it (a run's record): the
    reader then skips the whole-source checks and the statistics pass.
    """
    if name == PREPARED:
        if root is None:
            raise DatasetError("dataset.root: the prepared dataset's location (path or URI) is required")
        return PreparedReader(root, resolution=resolution)
    source = open_source(name, root, resolution=resolution, download=download and info is None)
    return SourceReader(source, strict=strict, info=info)


def class_fingerprints(name: str, root: str | None = None, *, resolution: int | None = None) -> list[str]:
    """Per class id, what identifies its train images (``fingerprint``): opened without the
    whole-source checks or the statistics pass."""
    if name == PREPARED:
        return open_dataset(name, root, resolution=resolution).class_fingerprints()
    return open_source(name, root, resolution=resolution).class_fingerprints()
