"""Preparation on a local Ray cluster: parallel class ranges, failure, resume, the command."""

from __future__ import annotations

import os

import numpy as np
import pytest

from orchestrator import storage
from orchestrator.stage_runner import StageFailed
from orchestrator.stages.prepare import PLAN, prepare
from orchestrator.cli import main
from workers.data import DatasetError, open_dataset
from workers.data.prepared import META, commit_record, train_file

from tests.test_data_sources import RES, expected_pixels, make_image_folder

pytestmark = pytest.mark.ray

SPEC = {  # four classes, one per range
    "a": [("x.png", "RGB", (20, 18)), ("y.jpg", "L", (17, 25))],
    "b": [("x.png", "RGBA", (19, 19))],
    "c": [("x.png", "P", (22, 30)), ("y.png", "RGB", (25, 21))],
    "d": [("x.jpg", "CMYK", (18, 23)), ("y.png", "L", (21, 19))],
}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)  # fmt: skip
    yield
    ray.shutdown()


def _snapshot(out: str, relative: list[str]) -> dict[str, tuple[int | None, bytes]]:
    return {r: (storage.mtime_ns(storage.join(out, r)), storage.read_bytes(storage.join(out, r))) for r in relative}


def _range_files(first: int, last: int) -> list[str]:
    data = train_file(first, last)
    return [data, commit_record(data)]


def test_ray_prepare_reads_class_alone(tmp_path):
    root = make_image_folder(tmp_path / "src", spec=SPEC, corrupt=("c", "zz_corrupt.jpg"))
    out = str(tmp_path / "out")
    meta = prepare("imagefolder", root, out, resolution=RES, classes_per_task=2)
    assert [f["file"] for f in meta["train_files"]] == [train_file(0, 1), train_file(2, 3)]
    assert [os.path.basename(s["path"]) for s in meta["skipped"]] == ["zz_corrupt.jpg"]
    reader = open_dataset("prepared", out)
    got = reader.read_train([2])
    expected = np.stack([expected_pixels(os.path.join(root, "train", "c", n)) for n in ("x.png", "y.png")])
    np.testing.assert_array_equal(got.images.numpy(), expected)
    assert got.labels.tolist() == [2, 2]


def test_failed_range_resumes_without_rewriting_committed_ones(tmp_path):
    # The corrupt file sits in class "b" (range 1): with strict, that task fails while the others commit.
    root = make_image_folder(tmp_path / "src", spec=SPEC, corrupt=("b", "broken.png"))
    out = str(tmp_path / "out")
    with pytest.raises(StageFailed, match="broken.png") as err:
        prepare("imagefolder", root, out, resolution=RES, strict=True, classes_per_task=1)
    assert "prepare imagefolder: 1 of 5 failed; everything else is committed" in str(err.value)
    assert not storage.exists(storage.join(out, META))
    assert not storage.exists(storage.join(out, train_file(1, 1)))
    kept = [f for k in (0, 2, 3) for f in _range_files(k, k)]
    before = _snapshot(out, kept)

    os.remove(os.path.join(root, "train", "b", "broken.png"))  # the fix
    meta = prepare("imagefolder", root, out, strict=True)  # resolution and range size come from the plan
    assert _snapshot(out, kept) == before  # same mtime_ns and bytes: not rewritten
    assert meta["train_counts"] == [2, 1, 2, 2] and meta["skipped"] == []
    assert open_dataset("prepared", out).read_train([1]).labels.tolist() == [1]


def test_resume_redoes_only_invalid_ranges(tmp_path):
    root = make_image_folder(tmp_path / "src", spec=SPEC, corrupt=None)
    out = str(tmp_path / "out")
    first = prepare("imagefolder", root, out, resolution=RES, classes_per_task=1)
    # Damage: range 0 lost its commit record (killed between the two writes), range 2's
    # file is truncated, and a killed writer left a temporary behind.
    storage.remove(storage.join(out, commit_record(train_file(0, 0))))
    data2 = storage.join(out, train_file(2, 2))
    storage.write_bytes_atomic(data2, storage.read_bytes(data2)[:100])
    leftover = storage.join(out, "train", f"{storage.TMP_PREFIX}x-classes-00003-00003.parquet")
    storage.write_bytes_atomic(leftover, b"junk")
    untouched = [f for k in (1, 3) for f in _range_files(k, k)]
    before = _snapshot(out, untouched)
    second = prepare("imagefolder", root, out, resolution=RES)
    assert _snapshot(out, untouched) == before
    assert second["train_files"] == first["train_files"]  # redone ranges have identical bytes
    assert second["mean"] == first["mean"] and second["std"] == first["std"]


def test_other_settings_in_the_same_out_are_refused(tmp_path):
    root = make_image_folder(tmp_path / "src", spec=SPEC, corrupt=None)
    out = str(tmp_path / "out")
    prepare("imagefolder", root, out, resolution=RES, classes_per_task=2)
    with pytest.raises(DatasetError, match="resolution"):
        prepare("imagefolder", root, out, resolution=RES * 2)
    assert storage.read_json(storage.join(out, PLAN))["resolution"] == RES


def test_prepare_command_exit_codes(tmp_path, capsys):
    root = make_image_folder(tmp_path / "src", spec=SPEC, corrupt=("d", "bad.jpg"))
    out = str(tmp_path / "out")
    args = ["prepare", "imagefolder", "--out", out, "--resolution", str(RES)]
    assert main([*args, "--root", root, "--strict", "--classes-per-task", "2"]) == 1
    assert main([*args, "--root", str(tmp_path / "nowhere")]) == 2
    assert "expected" in capsys.readouterr().out
    assert main([*args, "--root", root]) == 0
    assert "bad.jpg" in storage.read_json(storage.join(out, META))["skipped"][0]["path"]
