"""The commit protocol of every unit a stage makes (a shard's images, a baseline selection).

A unit exists once its files and then its manifest are in place (each written under a
temporary name and moved); the manifest names every file with its sha256, so the
manifest's presence is the commit. A reader trusts a file only when the bytes it
read hash to the manifest's sha256: one read per use, no second pass to verify.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator import storage

M = TypeVar("M", bound=BaseModel)
State = Literal["committed", "corrupt", "foreign", "failed", "in_progress", "pending"]  # foreign: another config made it


class CorruptFile(RuntimeError):
    """A committed file no longer matches its manifest."""


class Folder(Protocol):
    """A directory whose units are committed: a run, a pool."""

    uri: str

    def path(self, *parts: str) -> str: ...

    def relative(self, path: str) -> str: ...


class FileEntry(BaseModel):
    path: str  # relative to the run directory
    sha256: str
    bytes: int
    rows: int


@dataclass(frozen=True)
class UnitState(Generic[M]):
    state: State
    detail: str = ""
    manifest: M | None = None


def write_file(run: Folder, uri: str, data: bytes, rows: int) -> FileEntry:
    storage.write_bytes_atomic(uri, data)
    return FileEntry(path=run.relative(uri), sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=rows)


def write_manifest(uri: str, manifest: BaseModel) -> None:
    """The commit itself: written last, after every file it names."""
    storage.write_json_atomic(uri, manifest.model_dump(mode="json"))


def read_state(run: Folder, uri: str, model: type[M], *, deep: bool = True) -> UnitState[M]:
    """committed (every file matches, checked only with ``deep``), corrupt, or pending."""
    if not storage.exists(uri):
        return UnitState("pending")
    try:
        manifest = model.model_validate(storage.read_json(uri))
    except (ValueError, OSError, ValidationError) as exc:
        return UnitState("corrupt", f"unreadable manifest {run.relative(uri)}: {str(exc).splitlines()[0]}")
    committed = UnitState("committed", "", manifest)
    return verified(run, committed, hashes=True) if deep else committed


def verified(run: Folder, st: UnitState[M], *, hashes: bool) -> UnitState[M]:
    """A committed unit as its files are: corrupt, naming the file, where one does not match
    (its sha256 with ``hashes``, else its length); any other state as it is."""
    if st.state != "committed":
        return st
    problem = check_files(run, st.manifest.files.values(), hashes=hashes)  # type: ignore[union-attr]
    return UnitState("corrupt", problem, st.manifest) if problem else st


def check_files(run: Folder, files: "list[FileEntry] | object", *, hashes: bool = True) -> str:
    """'' when every file is there with its recorded sha256 (only its recorded length unless
    ``hashes``: one stat, no read), else what is wrong."""
    for entry in files:  # type: ignore[attr-defined]
        uri = run.path(entry.path)
        if not hashes:
            length = storage.size(uri)
            if length != entry.bytes:
                return f"{entry.path} is missing" if length is None else \
                    f"{entry.path} is {length:,} bytes where its manifest has {entry.bytes:,}"
            continue
        if not storage.exists(uri):
            return f"{entry.path} is missing"
        digest = storage.sha256_of(uri)
        if digest != entry.sha256:
            return f"{entry.path}: sha256 {digest[:12]}... does not match the manifest ({entry.sha256[:12]}...)"
    return ""


def read_checked(run: Folder, entry: FileEntry) -> bytes:
    """A committed file's bytes, hashed as read: a file changed since its commit is an error."""
    data = storage.read_bytes(run.path(entry.path))
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CorruptFile(f"{run.path(entry.path)} no longer matches its manifest; the stage that made it "
                          "recomputes it when run again")
    return data


class FailureRecord(BaseModel):
    """A unit that failed after every retry; removed when it is computed again."""

    error: str
    time: float


def record_failure(uri: str, error: str) -> None:
    write_manifest(uri, FailureRecord(error=error, time=time.time()))


def failure_of(uri: str) -> str | None:
    """The recorded error of a failed unit, None when none is recorded."""
    if not storage.exists(uri):
        return None
    return FailureRecord.model_validate(storage.read_json(uri)).error
