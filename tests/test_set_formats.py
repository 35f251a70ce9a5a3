"""Sets anyone can load: Hugging Face datasets folders and ImageFolder trees read back by their own
loaders, the dataset card, and the one-line refusal when the hf extra is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from orchestrator.set_formats import (MissingExtra, ScoreRow, SetCard, SoftLabels, card_markdown, pixels_uint8,
                                      write_hf, write_imagefolder)

UNSAFE = ["a/b", "c:d", "..", "", "x y?", "ünï", "q*", "<t>", "back\\slash", "pipe|", "dot.", "tab\tz"]


def _set(classes: int, ipc: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels, labels in shuffled order so that the writers must group them."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), ipc))
    return rng.integers(0, 256, (len(labels), channels, 5, 6), dtype=np.uint8), labels


def _card(names: list[str], n: int, ipc: int, channels: int, scores: tuple[ScoreRow, ...] = ()) -> SetCard:
    return SetCard(dataset="digits", class_names=tuple(names), images=n, ipc=ipc, image_size=(channels, 5, 6),
                   method="DM", config_yaml="name: digits-ipc10\ncondense: {ipc: 2}\n", commit="abc1234",
                   made="200 iterations of DM with ConvNet", scores=scores)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("channels,with_soft", [(1, True), (3, False)])
def test_hf_folder_loads_back_byte_for_byte(tmp_path, channels, with_soft):
    datasets = pytest.importorskip("datasets")
    names = [f"class {i}" for i in range(4)]
    images, labels = _set(4, 3, channels)
    soft = SoftLabels(np.random.default_rng(1).random((12, 4)), "probabilities", "ConvNet-teacher-7", 4.0) \
        if with_soft else None
    write_hf(tmp_path / "hf", torch.from_numpy(images), torch.from_numpy(labels), names,
             _card(names, 12, 3, channels), soft)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.features["label"].names == names and list(ds["label"]) == labels.tolist()
    for row, img in zip(ds, images):
        expected = img[0] if channels == 1 else img.transpose(1, 2, 0)
        assert row["image"].mode == ("L" if channels == 1 else "RGB")
        assert np.array_equal(np.asarray(row["image"]), expected)
    if with_soft:
        assert ds.features["soft_label"].feature.dtype == "float32"
        assert np.array_equal(np.array(list(ds["soft_label"]), np.float32), soft.values.astype(np.float32))
        assert "ConvNet-teacher-7" in ds.info.description and "probabilities" in ds.info.description
    else:
        assert "soft_label" not in ds.features
    card = (tmp_path / "hf" / "README.md").read_text()
    assert _front_matter(card)["task_categories"] == ["image-classification"]
    assert f"datasets {datasets.__version__} wrote this folder" in card


def test_hf_refuses_soft_labels_of_another_shape(tmp_path):
    pytest.importorskip("datasets")
    images, labels = _set(3, 2, 1)
    soft = SoftLabels(np.zeros((6, 4), np.float32), "logits", "t", 1.0)
    with pytest.raises(ValueError, match=r"soft labels must be \[6, 3\]"):
        write_hf(tmp_path / "hf", images, labels, ["a", "b", "c"], _card(["a", "b", "c"], 6, 2, 1), soft)


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails
    images, labels = _set(2, 1, 1)
    with pytest.raises(MissingExtra) as err:
        write_hf(tmp_path / "hf", images, labels, ["a", "b"], _card(["a", "b"], 2, 1, 1))
    message = str(err.value)
    assert "pip install 'dmcondense[hf]'" in message and "\n" not in message
    assert isinstance(err.value, ValueError)  # the CLI's one-line refusals
    assert not (tmp_path / "hf").exists()


def _read_imagefolder(root, **kwargs):
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root), loader=lambda p: np.asarray(Image.open(p)), **kwargs)


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_gives_the_original_ids_and_pixels(tmp_path, channels):
    images, labels = _set(len(UNSAFE), 2, channels)  # 12 classes: "10" sorts before "2" unless padded
    write_imagefolder(tmp_path / "png", images, labels, UNSAFE)
    ds = _read_imagefolder(tmp_path / "png")
    order = np.argsort(labels, kind="stable")  # ImageFolder: by class, then by file name
    assert ds.targets == labels[order].tolist() and len(ds.classes) == len(UNSAFE)
    for (pixels, _), img in zip(ds, images[order]):
        assert np.array_equal(pixels, img[0] if channels == 1 else img.transpose(1, 2, 0))


def test_imagefolder_keeps_ids_when_classes_are_missing(tmp_path):
    images, labels = _set(3, 2, 3)
    ids = np.array([0, 5, 11])[labels]
    write_imagefolder(tmp_path / "png", images, ids, UNSAFE)
    ds = _read_imagefolder(tmp_path / "png", allow_empty=True)
    assert ds.targets == sorted(ids.tolist())


def test_writers_refuse_a_folder_holding_files(tmp_path):
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "old.png").write_bytes(b"")
    images, labels = _set(2, 1, 1)
    with pytest.raises(ValueError, match="not an empty folder"):
        write_imagefolder(tmp_path / "png", images, labels, ["a", "b"])


def test_pixels_uint8_undoes_the_normalisation():
    mean, std = [0.5, 0.25, 0.1], [0.2, 0.3, 0.4]
    pixels = torch.tensor([0, 64, 255], dtype=torch.float32).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    normalised = (pixels / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert np.array_equal(pixels_uint8(normalised, mean, std), pixels.to(torch.uint8).numpy())


def test_card_holds_the_front_matter_and_only_the_given_scores():
    rows = (ScoreRow("hard labels", "DM", "ConvNet", 5, 48.904, 0.61),
            ScoreRow("soft labels (teacher ConvNet)", "DM", "ConvNet", 3, 55.1, 0.4, fair_mean=50.25))
    names = ["plane", "car|truck"]
    text = card_markdown(_card(names, 20, 10, 3, rows))
    front = _front_matter(text)
    assert front["license"] == "unknown" and front["size_categories"] == ["n<1K"]
    assert front["pretty_name"] == "digits condensed with DM, 10 images per class"
    assert "| hard labels | DM | ConvNet | 5 | 48.90 ± 0.61 | - |" in text
    assert "| soft labels (teacher ConvNet) | DM | ConvNet | 3 | 55.10 ± 0.40 | 50.25 |" in text
    assert "name: digits-ipc10" in text and "`abc1234`" in text and "200 iterations" in text
    assert "| 1 | car\\|truck |" in text


def test_card_without_scores_says_so():
    text = card_markdown(_card(["a"], 1, 1, 1))
    assert "No scores recorded." in text and "accuracy (%)" not in text
