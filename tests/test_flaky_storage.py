"""orchestrator.storage over a flaky filesystem: units still commit and verify; a lasting error is one line."""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest
from pydantic import BaseModel, ValidationError

from orchestrator import commits, storage

from .conftest import moto_s3
from .flaky_fs import Flaky

BUCKET = "dmc-flaky"
# 30% of operations failing is far above any store's transient rate: with the 6
# attempts of RETRY one of this test's hundreds of operations would likely exhaust
# them, with 12 that is improbable (0.3**12 per operation). Waits shrink to keep it short.
FAST = dataclasses.replace(storage.RETRY, attempts=12, first_delay_s=0.001, max_delay_s=0.004)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(storage, "RETRY", FAST)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture
def real(request, tmp_path) -> tuple[pafs.FileSystem, str]:
    """A real filesystem and a fresh root on it: a local directory, or a prefix on S3."""
    if request.param == "local":
        return pafs.LocalFileSystem(), str(tmp_path / "run")
    endpoint = request.getfixturevalue("s3_endpoint")
    return storage.resolve(f"s3://{BUCKET}/{uuid.uuid4().hex}?endpoint_override={endpoint}&scheme=http")


class UnitManifest(BaseModel):
    unit: int
    files: dict[str, commits.FileEntry]


@dataclasses.dataclass(frozen=True)
class Folder:
    uri: str

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def relative(self, path: str) -> str:
        return storage.relative(self.uri, path)


def _files(unit: int) -> dict[str, bytes]:
    rng = random.Random(unit)
    return {f"units/{unit:03d}/{name}": rng.randbytes(rng.randint(1, 8000)) for name in ("images.bin", "labels.bin")}


def _manifest(unit: int) -> str:
    return f"manifest/unit-{unit:03d}.json"


def _stored(fs: pafs.FileSystem, root: str) -> dict[str, bytes]:
    """Every file under ``root`` (temporaries too) by its path relative to it, read past the flaky layer."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                files[info.path[len(root) + 1:]] = stream.read()
    return files


def _partial_finals(fs: pafs.FileSystem, root: str, expected: dict[str, bytes]) -> list[str]:
    """Files under their final name that are not complete: data that differs, a manifest that does not parse."""
    partial = []
    for path, data in _stored(fs, root).items():
        if path.rsplit("/", 1)[-1].startswith(storage.TMP_PREFIX):
            continue
        if path.startswith("manifest/"):
            try:
                UnitManifest.model_validate_json(data)
            except ValidationError:
                partial.append(path)
        elif data != expected[path]:
            partial.append(path)
    return partial


@pytest.mark.parametrize(("real", "units"), [("local", 40), ("s3", 3)], indirect=["real"])
def test_units_commit_and_verify_with_30_percent_of_operations_failing(real, units):
    fs, root = real
    expected: dict[str, bytes] = {}
    partial: list[str] = []
    flaky = Flaky(fs, failure_rate=0.3, seed=11,
                  on_failure=lambda op, path: partial.extend(_partial_finals(fs, root, expected)))
    with storage.mounted(pafs.PyFileSystem(flaky), root) as base:
        run = Folder(base)
        for unit in range(units):
            entries = {}
            for path, data in _files(unit).items():
                expected[path] = data
                entries[path.rsplit("/", 1)[-1]] = commits.write_file(run, run.path(path), data, rows=1)
            commits.write_manifest(run.path(_manifest(unit)), UnitManifest(unit=unit, files=entries))

        for unit in range(units):
            state = commits.read_state(run, run.path(_manifest(unit)), UnitManifest)
            assert state.state == "committed", state.detail
            for entry in state.manifest.files.values():
                assert commits.read_checked(run, entry) == expected[entry.path]
        assert storage.list_names(run.path("manifest")) == [_manifest(u).split("/")[1] for u in range(units)]
        storage.remove(run.path("units", "000"), recursive=True)
        assert not storage.exists(run.path("units", "000", "images.bin"))

    assert flaky.failures >= 0.2 * len(flaky.calls)  # the failures did happen...
    assert partial == []  # ...and after none of them was a final name incomplete
    stored = _stored(fs, root)
    assert not [p for p in stored if storage.TMP_PREFIX in p]  # every retried write ended moved
    assert {p: d for p, d in expected.items() if not p.startswith("units/000/")} == {
        p: d for p, d in stored.items() if p.startswith("units/")}


def test_a_lasting_failure_is_one_line_naming_the_path_and_leaves_nothing_under_it(tmp_path):
    root = str(tmp_path / "run")
    flaky = Flaky(pafs.LocalFileSystem())
    with storage.mounted(pafs.PyFileSystem(flaky), root) as base:
        run = Folder(base)
        target = run.path("units", "007", "images.bin")
        flaky.break_path(f"{root}/units/007/images.bin")
        with pytest.raises(storage.StorageError) as failed:
            commits.write_file(run, target, b"x" * 1000, rows=1)
        message = str(failed.value)
        assert "\n" not in message and f"could not move a temporary onto {target}: 12 attempts" in message
        assert list((tmp_path / "run" / "units" / "007").iterdir()) == []  # no final file, no temporary

        committed = run.path("units", "008", "images.bin")
        entry = commits.write_file(run, committed, b"y" * 1000, rows=1)
        flaky.break_path(f"{root}/units/008")
        with pytest.raises(storage.StorageError, match=f"^could not read {committed}: 12 attempts") as failed:
            commits.read_checked(run, entry)
        assert "\n" not in str(failed.value)
        assert flaky.calls.count(("read", f"{root}/units/008/images.bin")) == FAST.attempts


def test_answers_a_retry_cannot_change_are_not_retried(tmp_path):
    flaky = Flaky(pafs.LocalFileSystem())
    with storage.mounted(pafs.PyFileSystem(flaky), str(tmp_path)) as base:
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(storage.join(base, "missing.json"))
    assert flaky.calls == [("read", f"{tmp_path}/missing.json")]


def test_retries_stop_at_the_total_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(attempts=1000, first_delay_s=0.02, max_delay_s=0.02,
                                                              total_s=0.3))
    flaky = Flaky(pafs.LocalFileSystem())
    flaky.break_path(str(tmp_path))
    started = time.monotonic()
    with storage.mounted(pafs.PyFileSystem(flaky), str(tmp_path)) as base:
        with pytest.raises(storage.StorageError, match="could not check"):
            storage.exists(storage.join(base, "x"))
    assert time.monotonic() - started < 1.0 and len(flaky.calls) < 1000


def test_the_backoff_doubles_with_jitter_up_to_its_cap():
    policy = storage.RetryPolicy()
    for failures, full in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 3.2), (6, 4.0), (9, 4.0)]:
        assert all(full / 2 <= policy.delay_s(failures) <= full for _ in range(20))
