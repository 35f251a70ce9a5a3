"""Where an export is written: exactly the path ``--to`` names, never over an existing one
unless asked (``--force``), whole or not at all, and every failure one line.

The set is written into a temporary folder beside the target (``.NAME.partial-*``) and
moved onto the target once complete: a failed write (no space, no permission) leaves
nothing behind, and with ``--force`` the former export stays until the new one is whole.
A folder is replaced only when it holds nothing but an earlier export, so ``--force``
never deletes a file of the user's. Folders missing above the target are created.

Failures: ``TargetError`` (a ValueError: exit 2, nothing written) for a target that cannot
be one (it exists, a file stands where a folder is needed, no permission, read-only);
``StorageError`` (exit 4) for a write the disk could not take (full, quota, I/O error).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.storage import StorageError

# errnos that say the target cannot be written there, whatever the disk holds: choose another --to
_NOT_THERE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                        errno.ENAMETOOLONG, errno.ENOENT})
# what the folder exports write: class folders of PNGs (set_formats.class_folder), or a datasets folder
_CLASS_FOLDER = re.compile(r"\d{5,}_[\w-]*")
_HF_FILE = re.compile(r"README\.md|dataset_info\.json|state\.json|data-\d+-of-\d+\.arrow")


class TargetError(ValueError):
    """The export cannot be written where ``--to`` names."""


@dataclass(frozen=True)
class ExportTarget:
    path: Path
    folder: bool  # the format writes a folder (png, imagefolder, hf), else one file (pt, npz)
    force: bool = False  # replace an earlier export there

    def check(self) -> None:
        """Refuse, before any work, a target that is taken (without ``force``) or cannot be one."""
        if self.path.name in ("", ".", ".."):
            raise TargetError(f"--to {self.path} names no file or folder of its own; name the one to write")
        above = next((p for p in self.path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise TargetError(f"cannot write {self.path}: {above} is a file, not a folder; choose another --to")
        if not self.path.exists():
            return
        kind = "a folder" if self.folder else "a file"
        if self.path.is_dir() != self.folder:
            raise TargetError(f"{self.path} exists and is not {kind}, which this format writes; choose another --to")
        if self.folder and not any(self.path.iterdir()):
            return  # an empty folder is taken as it is
        if not self.force:
            raise TargetError(f"{self.path} exists; pass --force to replace it, or choose another --to")
        if self.folder and (stranger := _not_exported(self.path)) is not None:
            raise TargetError(f"{self.path} holds {stranger.name}, which no export writes: --force replaces only an "
                              "earlier export; empty the folder yourself or choose another --to")

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """The path to write the export to; it becomes the target once the block completes.
        An OSError on the way ends as ``TargetError`` or ``StorageError`` (module docstring)."""
        staging: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.partial-")
            staged = Path(staging) / self.path.name
            yield staged
            self.check()  # taken while the set was written?
            if self.folder and self.path.exists():
                os.replace(self.path, Path(staging) / "former")  # removed with the staging folder
            os.replace(staged, self.path)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


def _not_exported(folder: Path) -> Path | None:
    """An entry of ``folder`` that no folder export writes; None when it holds only an export."""
    for entry in folder.iterdir():
        if entry.is_dir() and _CLASS_FOLDER.fullmatch(entry.name):
            stranger = next((f for f in entry.iterdir() if f.suffix != ".png" or not f.is_file()), None)
            if stranger is not None:
                return stranger
        elif not (entry.is_file() and _HF_FILE.fullmatch(entry.name)):
            return entry
    return None


def _write_error(target: Path, exc: OSError) -> Exception:
    reason = exc.strerror or str(exc).splitlines()[0]
    if exc.errno in _NOT_THERE:
        return TargetError(f"cannot write {target}: {reason}; choose another --to (nothing was written)")
    return StorageError(f"writing {target} failed: {reason}; nothing was left there: free space (or mend the "
                        "disk) and export again, or choose another --to")
