"""A filesystem over a real one that fails like a flaky network: for the storage tests.

``Flaky(real, failure_rate, seed)`` fails that fraction of operations (seeded, so a
run repeats) with ``OSError``, the way a dropped connection does: before the
operation, or after it (a move or delete took effect and only its answer was
lost; a stream dropped in its first read or write, a written one after half of
its bytes reached the store). ``break_path`` makes every operation on a path, or
under it, fail for good. Use it as ``pyarrow.fs.PyFileSystem(Flaky(...))``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _HalfWriter:
    """An output stream that writes half of its first write, then drops the connection."""

    def __init__(self, stream: pa.NativeFile, fail: Callable[[], OSError]) -> None:
        self._stream, self._fail = stream, fail
        self.closed = False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self._stream.write(view[: len(view) // 2])
        self._stream.flush()  # the half is on the store before the failure is reported
        raise self._fail()

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()
        self.closed = True


class _DroppedReader:
    """An input stream whose connection drops during the first read."""

    def __init__(self, stream: pa.NativeFile, fail: Callable[[], OSError]) -> None:
        self._stream, self._fail = stream, fail
        self.closed = False

    def read(self, nbytes: int = -1) -> bytes:
        self._stream.read(nbytes)
        raise self._fail()

    def close(self) -> None:
        self._stream.close()
        self.closed = True


class Flaky(pafs.FileSystemHandler):
    def __init__(self, real: pafs.FileSystem, failure_rate: float = 0.0, seed: int = 0,
                 on_failure: Callable[[str, str], None] = lambda op, path: None) -> None:
        self.real = real
        self.failure_rate = failure_rate
        self.on_failure = on_failure  # called after each injected failure, once its effect is in place
        self.failures = 0
        self.calls: list[tuple[str, str]] = []  # (operation, path) of every call
        self._random = random.Random(seed)
        self._broken: set[str] = set()

    def break_path(self, path: str) -> None:
        self._broken.add(path.rstrip("/"))

    # ------------------------------------------------------------ injection
    def _draw(self, op: str, *paths: str) -> tuple[str | None, str]:
        """How the operation fails (None: it goes through, "before", "after" or "broken"), and on which path."""
        self.calls.extend((op, p) for p in paths)
        broken = [p for p in paths if self._is_broken(p)]
        if broken:
            return "broken", broken[0]
        if self._random.random() >= self.failure_rate:
            return None, paths[0]
        return self._random.choice(("before", "after")), paths[0]

    def _is_broken(self, path: str) -> bool:
        return any(path == b or path.startswith(b + "/") for b in self._broken)

    def _fail(self, op: str, path: str, how: str) -> OSError:
        if how == "broken":
            return OSError(f"{op} {path}: connection refused (host unreachable)")
        self.failures += 1
        self.on_failure(op, path)
        return OSError(f"{op} {path}: connection reset by peer")

    def _run(self, op: str, paths: tuple[str, ...], action: Callable[[], Any]) -> Any:
        how, path = self._draw(op, *paths)
        if how in ("broken", "before"):
            raise self._fail(op, path, how)
        result = action()
        if how == "after":  # it happened; only the answer was lost
            raise self._fail(op, path, how)
        return result

    # ------------------------------------------------------------ metadata
    def get_type_name(self) -> str:
        return self.real.type_name  # so that it is treated like the filesystem it wraps

    def normalize_path(self, path: str) -> str:
        return self.real.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        how, path = self._draw("stat", *paths)
        if how is not None:
            raise self._fail("stat", path, how)
        return self.real.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        how, path = self._draw("list", selector.base_dir)
        if how is not None:
            raise self._fail("list", path, how)
        return self.real.get_file_info(selector)

    # ------------------------------------------------------------ changes
    def create_dir(self, path: str, recursive: bool) -> None:
        self._run("create_dir", (path,), lambda: self.real.create_dir(path, recursive=recursive))

    def delete_dir(self, path: str) -> None:
        self._run("delete_dir", (path,), lambda: self.real.delete_dir(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._run("delete_dir_contents", (path,),
                  lambda: self.real.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to empty the root of a test filesystem")

    def delete_file(self, path: str) -> None:
        self._run("delete_file", (path,), lambda: self.real.delete_file(path))

    def move(self, src: str, dest: str) -> None:
        self._run("move", (dest, src), lambda: self.real.move(src, dest))

    def copy_file(self, src: str, dest: str) -> None:
        self._run("copy", (dest, src), lambda: self.real.copy_file(src, dest))

    # ------------------------------------------------------------ streams
    def open_input_stream(self, path: str) -> pa.NativeFile:
        how, _ = self._draw("read", path)
        if how in ("broken", "before"):
            raise self._fail("read", path, how)
        stream = self.real.open_input_stream(path)
        if how == "after":
            return pa.PythonFile(_DroppedReader(stream, lambda: self._fail("read", path, how)), mode="r")
        return stream

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._run("read", (path,), lambda: self.real.open_input_file(path))

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        how, _ = self._draw("write", path)
        if how in ("broken", "before"):
            raise self._fail("write", path, how)
        stream = self.real.open_output_stream(path, metadata=metadata)
        if how == "after":
            return pa.PythonFile(_HalfWriter(stream, lambda: self._fail("write", path, how)), mode="w")
        return stream

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self._run("append", (path,), lambda: self.real.open_append_stream(path, metadata=metadata))

