"""The dataset's content in a run's identity: a per-class fingerprint recorded in run.json at plan
time; images changed under a run are named class by class when it is resumed, and a dataset
moved to another folder resumes with its committed shards."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from orchestrator.artifacts.shards import shard_state
from orchestrator.config import load_config
from orchestrator.pipeline import new_run, reopened_run
from orchestrator.run_dir import RunError
from orchestrator.stages.condense import condense_shard
from workers.data import class_fingerprints
from workers.data.arrays import ArraySource
from workers.data.prepared import PreparedReader

from .test_data_sources import make_image_folder

SPEC = {name: [(f"{i}.png", "RGB", (12, 12)) for i in range(4)] for name in ("ant", "bee", "cow")}
TINY = ["dataset.name=imagefolder", "dataset.resolution=8", "condense.iterations=2", "condense.checkpoint_every=0",
        "condense.ipc=1", "condense.batch_real=4", "condense.model=ConvNetW32D2", "plan.classes_per_shard=1",
        "resources.gpus_per_shard=0", "evaluate.num_models=0", "evaluate.baselines=[]"]


def _committed(tmp_path):  # noqa: ANN001, ANN202 - (run, dataset root): shard 0 (class "ant") committed
    root = make_image_folder(str(tmp_path / "data"), SPEC, corrupt=None)
    run = new_run(load_config(None, [*TINY, f"dataset.root={root}", f"output={tmp_path / 'run'}"]))
    run.save()
    condense_shard(run, run.shards[0])
    return run, root


def _add_image(root: str, cls: str) -> None:
    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(os.path.join(root, "train", cls, "new.png"))


def test_the_record_holds_each_class_content(tmp_path):
    run, root = _committed(tmp_path)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["data"]["classes"]
    assert recorded == class_fingerprints("imagefolder", root, resolution=8)
    assert [f.split(":")[0] for f in recorded] == ["4", "4", "4"] and len(set(recorded)) == 3


def test_images_added_under_a_run_are_named_when_it_is_resumed(tmp_path):
    run, root = _committed(tmp_path)
    _add_image(root, "bee")
    with pytest.raises(RunError) as refused:
        reopened_run(run.uri, [])
    message = str(refused.value)
    assert "1 of its 3 classes changed (1 (bee))" in message and "put their images back" in message
    with pytest.raises(RunError, match=r"classes changed \(1 \(bee\)\)"):  # `run` over it is refused alike
        new_run(load_config(None, [*TINY, f"dataset.root={root}", f"output={run.uri}"]))
    os.remove(os.path.join(root, "train", "bee", "new.png"))
    assert reopened_run(run.uri, []).record.data == run.record.data  # as it was: resumes


def test_a_dataset_moved_elsewhere_resumes_with_its_committed_shards(tmp_path):
    run, root = _committed(tmp_path)
    moved = str(tmp_path / "elsewhere")
    shutil.move(root, moved)  # a move keeps names, sizes and times
    again = reopened_run(run.uri, [f"dataset.root={moved}"])
    assert again.config.dataset.root == moved
    assert shard_state(again, again.shards[0]).state == "committed"  # adopted, not foreign
    # a new run over it from the moved folder plans the same shards and keeps the committed one
    rerun = new_run(load_config(None, [*TINY, f"dataset.root={moved}", f"output={run.uri}"]))
    assert shard_state(rerun, rerun.shards[0]).state == "committed"


def test_another_dataset_at_a_new_root_is_refused_naming_its_classes(tmp_path):
    run, root = _committed(tmp_path)
    other = make_image_folder(str(tmp_path / "other"), SPEC, seed=1, corrupt=None)
    for cls in ("ant", "cow"):
        _add_image(other, cls)
    with pytest.raises(RunError, match=r"2 of its 3 classes changed \(0 \(ant\), 2 \(cow\)\)"):
        reopened_run(run.uri, [f"dataset.root={other}"])


def test_a_run_recorded_without_its_content_resumes_from_its_own_root_only(tmp_path):
    run, root = _committed(tmp_path)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    del record["data"]  # as an earlier version wrote it
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    moved = str(tmp_path / "elsewhere")
    shutil.copytree(root, moved)
    with pytest.raises(RunError, match="recorded without its dataset's content"):
        reopened_run(run.uri, [f"dataset.root={moved}"])
    again = reopened_run(run.uri, [])
    assert again.record.data is not None  # recorded from now on
    again.save()
    assert reopened_run(run.uri, [f"dataset.root={moved}"]).config.dataset.root == moved


def test_array_fingerprints_follow_the_pixels_of_their_class_only():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (30, 1, 4, 4), dtype=np.uint8), np.repeat(np.arange(3), 10)
    test = (images[:3], np.arange(3))
    before = ArraySource("arrays", ["a", "b", "c"], (images, labels), test).class_fingerprints()
    changed = images.copy()
    changed[12, 0, 1, 1] ^= 1  # one pixel of class 1
    after = ArraySource("arrays", ["a", "b", "c"], (changed, labels), test).class_fingerprints()
    assert [b != a for b, a in zip(before, after)] == [False, True, False]
    assert before[0].startswith("10:")


def test_prepared_fingerprints_come_from_the_manifest(tmp_path):
    meta = {"format": "dmcondense-prepared", "format_version": 1, "source": "x", "resolution": 4, "channels": 1,
            "classes": ["a", "b", "c"], "train_counts": [5, 6, 7], "test_counts": [1, 1, 1], "mean": [0.5],
            "std": [0.2], "train_files": [
                {"file": "train/classes-00000-00001.parquet", "sha256": "aa", "first_class": 0, "last_class": 1},
                {"file": "train/classes-00002-00002.parquet", "sha256": "bb", "first_class": 2, "last_class": 2}],
            "test_files": []}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    before = PreparedReader(str(tmp_path)).class_fingerprints()
    meta["train_files"][1]["sha256"] = "cc"  # class 2's file prepared again with other bytes
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    after = PreparedReader(str(tmp_path)).class_fingerprints()
    assert [b != a for b, a in zip(before, after)] == [False, False, True] and before[1].startswith("6:")
