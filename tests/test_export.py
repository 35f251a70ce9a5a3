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


def test_pt_export_is_in_the_official_normalisation_where_that_code_knows_the_dataset(run, tmp_path):
    import torch

    from orchestrator.export import OFFICIAL_NORMALISATION, renormalize
    from workers.data import normalize

    # CIFAR-like pixels: ours (the split's population statistics) to the official constants and back.
    ours = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    official = OFFICIAL_NORMALISATION["cifar10"]
    pixels = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    theirs = renormalize(normalize(pixels, *ours), ours, official)
    assert torch.allclose(theirs, normalize(pixels, *official), rtol=0, atol=1e-6)  # a few float32 ulps
    assert torch.allclose(renormalize(theirs, official, ours), normalize(pixels, *ours), rtol=0, atol=1e-6)
    assert torch.equal(torch.from_numpy(pixels_uint8(theirs, *official)), pixels)
    beyond = torch.full((1, 3, 1, 1), 9.0)  # synthetic values outside [0, 1] in pixels survive unclamped
    assert torch.allclose(renormalize(renormalize(beyond, ours, official), official, ours), beyond, atol=1e-5)

    # digits is not among the official code's datasets: its pt export keeps this project's normalisation.
    assert main(["export", run.uri, "--format", "pt", "--to", str(tmp_path / "set.pt")]) == 0
    saved = torch.load(tmp_path / "set.pt")
    images, labels = read_method(run)
    (got_images, got_labels), = saved["data"]
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
    assert saved["mean"] == list(run.dataset.mean) and saved["std"] == list(run.dataset.std)
