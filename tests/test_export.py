"""`dmcondense export` to formats anyone can load, from a run committed here without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.artifacts.training_sets import read_method
from orchestrator.cli import main
from orchestrator.run_dir import RunDir
from orchestrator.set_formats import pixels_uint8

from .test_run_integrity import _committed_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    return _committed_run(str(tmp_path_factory.mktemp("export") / "run"), "condense.ipc=2")


def test_hf_export_round_trips_with_its_card(run, tmp_path):
    datasets = pytest.importorskip("datasets")
    assert main(["export", run.uri, "--format", "hf", "--to", str(tmp_path / "hf")]) == 0
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    images, labels = read_method(run)
    expected = pixels_uint8(images, run.dataset.mean, run.dataset.std)
    got = np.stack([np.asarray(row["image"])[None] for row in loaded])  # 8x8 grey digits
    assert np.array_equal(got, expected) and [row["label"] for row in loaded] == labels.tolist()
    assert loaded.features["label"].names == run.dataset.class_names
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "task_categories" in card and "4 iterations of dm" in card and run.record.versions.commit in card


def test_imagefolder_export_gives_torchvision_the_class_ids(run, tmp_path):
    from torchvision.datasets import ImageFolder

    assert main(["export", run.uri, "--format", "imagefolder", "--to", str(tmp_path / "folders")]) == 0
    _, labels = read_method(run)
    assert sorted(ImageFolder(str(tmp_path / "folders")).targets) == sorted(labels.tolist())
