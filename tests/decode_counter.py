"""A Ray worker setup hook for the tests: logs every image file decoded and every whole-source
check of a folder dataset, in every process of a run, to the file named by DECODE_LOG_ENV."""

from __future__ import annotations

import json
import os
from typing import Callable

DECODE_LOG_ENV = "DMCONDENSE_TEST_DECODE_LOG"


def install() -> Callable[[], None]:
    """Wrap the decoder and the whole-source check; returns what undoes it."""
    from workers.data import base, folders

    log = os.environ[DECODE_LOG_ENV]

    def write(kind: str, items: list[str]) -> None:
        with open(log, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "kind": kind, "items": items}) + "\n")

    decode, check = folders.decode_files, base.check_source

    def counted_decode(files, *args, **kwargs):  # noqa: ANN001, ANN202 - wraps the real one as is
        write("decode", list(files))
        return decode(files, *args, **kwargs)

    def counted_check(source, *args, **kwargs):  # noqa: ANN001, ANN202
        write("check", [source.name])
        return check(source, *args, **kwargs)

    folders.decode_files = counted_decode
    base.check_source = counted_check

    def undo() -> None:
        folders.decode_files, base.check_source = decode, check

    return undo


def read(log: str) -> list[dict]:
    with open(log) as f:
        return [json.loads(line) for line in f]
