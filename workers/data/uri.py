"""Local paths and pyarrow.fs URIs (s3://, gs://, file://, hdfs://) behind one resolver.

The orchestrator's storage module builds its writes on these; the readers here
need only resolution and joining, so workers stay free of orchestrator code.
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    """True for ``scheme://...``; Windows drive paths (``C:\\x``) are local paths."""
    return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it; local paths are made absolute.

    URIs go through ``pyarrow.fs.FileSystem.from_uri``, so its query options
    apply, e.g. ``s3://bucket/run?endpoint_override=127.0.0.1:9000&scheme=http``.
    """
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def absolute(location: str) -> str:
    """A local path made absolute here (a worker elsewhere, or in another directory, finds the same
    place); a URI as it is."""
    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def replace_suffix(location: str, old: str, new: str) -> str:
    """The location with its file name's ``old`` ending replaced by ``new``, a URI's query kept."""
    if not is_uri(location):
        return location.removesuffix(old) + new
    split = urlsplit(location)
    return urlunsplit((split.scheme, split.netloc, split.path.removesuffix(old) + new, split.query, split.fragment))


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI, keeping a URI's query string."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    split = urlsplit(base)
    path = posixpath.join(split.path or "/", *(p.strip("/") for p in parts))
    return urlunsplit((split.scheme, split.netloc, path, split.query, split.fragment))
