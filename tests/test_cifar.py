"""CIFAR folders checked by content: small fakes for every refusal, the real set when it was fetched."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from workers.data import DatasetError, open_dataset
from workers.data import cifar as cifar_mod
from workers.data.cifar import CIFAR10, CIFAR100, content_digest, read_cifar

# The fetched CIFAR-10 (../shared/data/cifar10/fetch.sh ROOT); the test of the real set skips without it.
REAL_ROOT = os.environ.get("DMCONDENSE_CIFAR10_ROOT", str(Path.home() / "data" / "cifar10"))
PER_CLASS = (3, 2)  # train, test images per class in the fakes
SMALL10 = replace(CIFAR10, train_per_class=PER_CLASS[0], test_per_class=PER_CLASS[1])
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _split(per_class: int, parts: int, seed: int) -> list[tuple[np.ndarray, list[int]]]:
    """``parts`` batches holding ``per_class`` images of each class between them."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), per_class)).tolist()
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    cut = np.array_split(np.arange(len(labels)), parts)
    return [(data[i], [labels[j] for j in i]) for i in cut]


def make_fake_cifar10(root: Path) -> Path:
    folder = root / CIFAR10.folder
    folder.mkdir(parents=True)
    _dump(folder / "batches.meta", {"label_names": NAMES, "num_cases_per_batch": 6, "num_vis": 3072})
    for name, (data, labels) in zip(CIFAR10.train_files, _split(PER_CLASS[0], 5, 0)):
        _dump(folder / name, {"batch_label": name, "labels": labels, "data": data, "filenames": ["x"] * len(labels)})
    (data, labels), = _split(PER_CLASS[1], 1, 1)
    _dump(folder / "test_batch", {"batch_label": "test", "labels": labels, "data": data, "filenames": []})
    return folder


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake CIFAR-10 folder of the small layout, registered as the known content."""
    folder = make_fake_cifar10(tmp_path)
    known = {}
    for split, files in (("train", CIFAR10.train_files), ("test", CIFAR10.test_files)):
        batches = [pickle.loads((folder / f).read_bytes()) for f in files]
        known[("cifar10", split)] = content_digest(np.concatenate([b["data"] for b in batches]),
                                                   np.concatenate([b["labels"] for b in batches]))
    monkeypatch.setattr(cifar_mod, "KNOWN_CONTENT", known)
    return folder


def test_a_copy_with_the_known_content_loads_whatever_its_file_names(fake):
    got = read_cifar(SMALL10, str(fake.parent))
    assert got.class_names == NAMES
    assert got.train[0].shape == (30, 3, 32, 32) and got.test[0].shape == (20, 3, 32, 32)
    first = pickle.loads((fake / "data_batch_1").read_bytes())
    assert np.array_equal(got.train[0][0].reshape(-1), first["data"][0])  # rows are CHW planes, in file order
    assert got.train[1][0] == first["labels"][0]


def test_changed_pixels_are_refused_by_their_content_digest(fake):
    batch = pickle.loads((fake / "data_batch_3").read_bytes())
    batch["data"][0, 0] ^= 1
    _dump(fake / "data_batch_3", batch)
    with pytest.raises(DatasetError) as err:
        read_cifar(SMALL10, str(fake.parent))
    msg = str(err.value)
    assert "\n" not in msg and "train images or labels" in msg and str(fake) in msg and "fetch" in msg


@pytest.mark.parametrize("damage, expected", [
    ("missing", "data_batch_2 is missing"),
    ("truncated", "data_batch_2 is truncated"),
    ("not_a_batch", "data_batch_2 holds no uint8 [N, 3072] 'data' array"),
    ("labels", "data_batch_2 has labels outside 0..9"),
    ("code", "data_batch_2 is not a CIFAR batch"),
])
def test_a_damaged_batch_is_named_in_one_line_with_the_fix(fake, damage, expected):
    path = fake / "data_batch_2"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not_a_batch":
        _dump(path, {"labels": [0], "data": [[1, 2, 3]]})
    elif damage == "labels":
        batch = pickle.loads(path.read_bytes())
        batch["labels"][0] = 10
        _dump(path, batch)
    else:  # a pickle that would run code when loaded
        _dump(path, {"data": _RunsCode(str(fake / "ran"))})
    # through the product's entry point (the full-size layout: the damage is found before any count)
    with pytest.raises(DatasetError) as err:
        open_dataset("cifar10", str(fake.parent))
    msg = str(err.value)
    assert "\n" not in msg and expected in msg and "fetch the cifar10 python-version batches again" in msg
    assert not (fake / "ran").exists()


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_wrong_counts_per_class_are_refused(fake):
    with pytest.raises(DatasetError, match=r"train split .* 30 images, 3 to 3 per class, where cifar10 has 5,000"):
        open_dataset("cifar10", str(fake.parent))


def test_a_missing_folder_names_the_folder_and_both_fixes(tmp_path):
    with pytest.raises(DatasetError) as err:
        open_dataset("cifar10", str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "dataset.root" in msg and "dataset.download" in msg


def test_cifar100_reads_fine_labels_and_its_meta(tmp_path):
    folder = tmp_path / CIFAR100.folder
    folder.mkdir()
    names = [f"c{i}" for i in range(100)]
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        labels = np.repeat(np.arange(100), n).tolist()
        _dump(folder / split, {"fine_labels": labels, "coarse_labels": [0] * len(labels),
                               "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)})
    got = read_cifar(replace(CIFAR100, train_per_class=2, test_per_class=1), str(tmp_path))
    assert got.class_names == names and got.train[0].shape == (200, 3, 32, 32) and sorted(set(got.test[1])) == list(range(100))


@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL_ROOT, CIFAR10.folder)),
                    reason=f"CIFAR-10 not fetched at {REAL_ROOT} (../shared/data/cifar10/fetch.sh ROOT)")
def test_the_fetched_cifar10_loads_with_its_published_statistics():
    reader = open_dataset("cifar10", REAL_ROOT)
    info = reader.info
    assert info.class_names == NAMES and info.im_size == (32, 32) and info.channels == 3
    assert info.train_counts == (5000,) * 10 and info.test_counts == (1000,) * 10
    assert np.allclose(info.mean, (0.49139968, 0.48215841, 0.44653091), atol=1e-7)
    assert reader.read_train([3]).images.shape == (5000, 3, 32, 32)
