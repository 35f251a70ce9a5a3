"""workers.data sources: image folders of every mode, MNIST idx files, digits, and bad input."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from workers.data import sources as sources_mod
from workers.data import (
    DatasetError,
    DatasetReader,
    ImageSet,
    SOURCE_NAMES,
    denormalize,
    normalize,
    open_dataset,
)
from workers.data.arrays import ArraySource
from workers.data.types import ChannelStats

from tests.conftest import SHARED_DATA

MNIST_RAW = str(SHARED_DATA / "mnist" / "MNIST" / "raw")
needs_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_RAW), reason=f"the MNIST files are not at {MNIST_RAW}")
RES = 16

# (file name, mode, size (W, H)) per class; sizes are odd on purpose, and JPEGs
# stay under 2x the target on one side so that PIL decodes them at full scale.
FOLDER_SPEC = {
    "apple": [("a.jpg", "RGB", (23, 17)), ("b.png", "L", (31, 40)), ("c.png", "RGBA", (16, 16))],
    "bear": [("a.jpg", "CMYK", (19, 29)), ("b.png", "P", (40, 21)), ("c.gif", "P", (9, 13)), ("d.jpg", "L", (30, 24))],
    "cat": [("a.png", "RGB", (50, 50)), ("b.png", "LA", (17, 33))],
}
CORRUPT = ("bear", "zz_corrupt.jpg")


def _random_image(mode: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    if mode == "P":
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert("P")
    bands = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 255, (h, w, bands), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)


def make_image_folder(root, spec=FOLDER_SPEC, test_per_class: int = 2, seed: int = 0, corrupt=CORRUPT) -> str:
    """ROOT/train/<class>/... per ``spec`` (+ one corrupt file) and ROOT/test/<class>/ RGB PNGs."""
    rng = np.random.default_rng(seed)
    for cls, files in spec.items():
        os.makedirs(os.path.join(root, "train", cls), exist_ok=True)
        for name, mode, size in files:
            _random_image(mode, size, rng).save(os.path.join(root, "train", cls, name))
        os.makedirs(os.path.join(root, "test", cls), exist_ok=True)
        for i in range(test_per_class):
            _random_image("RGB", (20, 20), rng).save(os.path.join(root, "test", cls, f"t{i}.png"))
    if corrupt:
        with open(os.path.join(root, "train", *corrupt), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return str(root)


def expected_pixels(path: str, resolution: int = RES) -> np.ndarray:
    """The documented transform, written out plainly: RGB, centred square crop, bilinear resize."""
    image = Image.open(path)
    image = image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    resized = image.crop(box).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(resized).transpose(2, 0, 1)


def _expected_class(root: str, cls: str) -> np.ndarray:
    names = sorted(name for name, _, _ in FOLDER_SPEC[cls])
    return np.stack([expected_pixels(os.path.join(root, "train", cls, n)) for n in names])


# ------------------------------------------------------------------ image folders
def test_image_folder_reads_one_class_with_exact_pixels(tmp_path):
    root = make_image_folder(tmp_path / "folder")
    reader = open_dataset("imagefolder", root, resolution=RES)
    with pytest.warns(UserWarning, match="zz_corrupt.jpg"):  # mean/std decode the whole train split
        assert reader.info.class_names == ["apple", "bear", "cat"]
    for k, cls in enumerate(reader.info.class_names):
        if cls == "bear":
            with pytest.warns(UserWarning, match="zz_corrupt.jpg"):
                got = reader.read_train([k])
        else:
            got = reader.read_train([k])
        assert got.labels.tolist() == [k] * len(FOLDER_SPEC[cls])  # the corrupt file is not counted
        np.testing.assert_array_equal(got.images.numpy(), _expected_class(root, cls))
    assert [s.path for s in reader.skipped] == [os.path.join(root, "train", *CORRUPT)]


def test_image_folder_takes_val_beside_train(tmp_path):
    root = make_image_folder(tmp_path / "folder")
    os.rename(os.path.join(root, "test"), os.path.join(root, "val"))
    reader = open_dataset("imagefolder", root, resolution=RES)
    assert len(reader.read_test()) == 2 * len(FOLDER_SPEC)
    with pytest.warns(UserWarning, match="zz_corrupt"):  # the statistics pass decodes the train split
        assert reader.info.test_counts == (2,) * len(FOLDER_SPEC)


def test_image_folder_decodes_only_the_requested_classes(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "folder")
    reader = open_dataset("imagefolder", root, resolution=RES)
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    reader.read_train([2])
    assert opened and all(os.sep + os.path.join("train", "cat") + os.sep in p for p in opened)


def test_strict_names_the_corrupt_file(tmp_path):
    root = make_image_folder(tmp_path / "folder")
    reader = open_dataset("imagefolder", root, resolution=RES, strict=True)
    with pytest.raises(DatasetError, match="zz_corrupt.jpg"):
        reader.read_train([1])


def test_large_jpeg_reduced_decoding_keeps_geometry(tmp_path):
    # A JPEG far larger than the target is decoded at reduced scale; the crop must still line up.
    ramp = np.linspace(0, 255, 200, dtype=np.float64)
    pixels = np.stack([np.tile(ramp, (150, 1)), np.tile(ramp[:150, None], (1, 200)), np.full((150, 200), 90.0)], -1)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    from workers.data.imagefiles import decode_image

    diff = np.abs(decode_image(str(path), RES).astype(int) - expected_pixels(str(path)).astype(int))
    assert diff.mean() < 3 and diff.max() < 20


def test_wide_greyscale_is_scaled_not_clipped(tmp_path):
    from workers.data.imagefiles import decode_image

    wide = np.zeros((8, 8), np.uint16)
    wide[:, 4:] = 65535
    wide[:, :4] = 257 * 128  # mid-grey in 16 bits
    Image.fromarray(wide).save(tmp_path / "wide.png")
    decoded = decode_image(str(tmp_path / "wide.png"), 8)
    assert decoded.shape == (3, 8, 8)
    assert decoded[:, :, 0].tolist() == [[128] * 8] * 3 and decoded[:, :, 7].tolist() == [[255] * 8] * 3


# ------------------------------------------------------------------ one interface for all sources
@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """The original MNIST files: train gzipped, test unpacked (both forms are accepted)."""
    if not os.path.isdir(MNIST_RAW):
        pytest.skip(f"the MNIST files are not at {MNIST_RAW}")
    raw = tmp_path_factory.mktemp("mnist") / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(os.path.join(MNIST_RAW, stem + ".gz"), raw)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(os.path.join(MNIST_RAW, stem + ".gz")) as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return str(raw.parent.parent)


def _mnist_labels(stem: str) -> np.ndarray:
    with gzip.open(os.path.join(MNIST_RAW, stem + ".gz")) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)


def check_reader_interface(reader: DatasetReader, expected_counts: list[int]) -> ImageSet:
    """What every reader must give: types, dtypes, shapes, per-class reads, consistent stats."""
    info = reader.info
    assert isinstance(reader, DatasetReader)
    assert info.num_classes == len(info.class_names) == len(expected_counts)
    assert all(isinstance(n, str) for n in info.class_names)
    assert len(info.mean) == len(info.std) == info.channels
    assert all(0 < s < 1 for s in info.std) and all(0 < m < 1 for m in info.mean)
    one = reader.read_train([3])
    assert isinstance(one, ImageSet)
    assert one.images.dtype == torch.uint8 and one.labels.dtype == torch.int64
    assert tuple(one.images.shape) == (expected_counts[3], info.channels, *info.im_size)
    assert one.labels.tolist() == [3] * expected_counts[3]
    two = reader.read_train([5, 1])
    assert two.labels.tolist() == [1] * expected_counts[1] + [5] * expected_counts[5]
    test = reader.read_test()
    assert test.images.dtype == torch.uint8 and test.images.shape[1:] == one.images.shape[1:]
    assert set(test.labels.tolist()) == set(range(info.num_classes))
    return one


def test_digits_interface_and_stats():
    reader = open_dataset("digits")
    from sklearn.datasets import load_digits

    target = load_digits().target
    counts = np.bincount(target).tolist()
    train_counts = [n - round(n * 0.25) for n in counts]
    check_reader_interface(reader, train_counts)
    everything = reader.read_train(range(10))
    assert len(everything) + len(reader.read_test()) == len(target)
    x = normalize(everything.images, reader.info.mean, reader.info.std)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    again = open_dataset("digits").read_train([3]).images
    assert torch.equal(again, reader.read_train([3]).images)  # the split is fixed


def test_mnist_from_original_files(mnist_root):
    reader = open_dataset("mnist", mnist_root)
    train_labels = _mnist_labels("train-labels-idx1-ubyte")
    one = check_reader_interface(reader, np.bincount(train_labels).tolist())
    with gzip.open(os.path.join(MNIST_RAW, "train-images-idx3-ubyte.gz")) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    np.testing.assert_array_equal(one.images[:, 0].numpy(), pixels[train_labels == 3])
    assert reader.info.mean[0] == pytest.approx(pixels.mean() / 255, abs=1e-9)
    assert reader.info.std[0] == pytest.approx((pixels / 255).std(), abs=1e-9)
    assert reader.read_test().labels.tolist() == _mnist_labels("t10k-labels-idx1-ubyte").tolist()


def test_resolution_resizes_array_sources():
    native, resized = open_dataset("digits").read_train([0]), open_dataset("digits", resolution=12).read_train([0])
    assert resized.images.shape == (len(native), 1, 12, 12)
    first = Image.fromarray(native.images[0, 0].numpy(), "L").resize((12, 12), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(resized.images[0, 0].numpy(), np.asarray(first))


# ------------------------------------------------------------------ other layouts
def _tiny_imagenet(root, wnids=("n01", "n02"), val_wnid_override=None) -> str:
    rng = np.random.default_rng(1)
    os.makedirs(root / "val" / "images")
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    lines = []
    for w in wnids:
        os.makedirs(root / "train" / w / "images")
        for i in range(3):
            _random_image("RGB", (24, 24), rng).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
        _random_image("RGB", (24, 24), rng).save(root / "val" / "images" / f"val_{w}.JPEG")
        lines.append(f"val_{w}.JPEG\t{val_wnid_override or w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def test_tinyimagenet_layout(tmp_path):
    reader = open_dataset("tinyimagenet", _tiny_imagenet(tmp_path / "tiny"), resolution=8)
    assert reader.info.class_names == ["n01", "n02"]  # sorted wnids
    assert reader.read_train([1]).labels.tolist() == [1, 1, 1]
    assert reader.read_test().labels.tolist() == [0, 1]
    with pytest.raises(DatasetError, match="n99"):
        open_dataset("tinyimagenet", _tiny_imagenet(tmp_path / "bad", val_wnid_override="n99"))


def test_imagenet_flat_val_with_labels_file(tmp_path):
    root = tmp_path / "ilsvrc"
    rng = np.random.default_rng(2)
    for w in ("n2", "n1"):
        os.makedirs(root / "train" / w)
        for i in range(2):
            _random_image("RGB", (30, 20), rng).save(root / "train" / w / f"{w}_{i}.JPEG")
    os.makedirs(root / "val")
    for i, w in enumerate(("n1", "n2", "n2")):
        _random_image("RGB", (30, 20), rng).save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DatasetError, match="val_labels.txt"):
        open_dataset("imagenet", str(root))
    lines = [f"ILSVRC2012_val_{i:08d}.JPEG {w}\n" for i, w in enumerate(("n1", "n2", "n2"))]
    (root / "val_labels.txt").write_text("".join(lines))
    reader = open_dataset("imagenet", str(root), resolution=8)
    assert reader.info.class_names == ["n1", "n2"]
    assert reader.read_test().labels.tolist() == [0, 1, 1]
    assert reader.read_train([0]).images.shape == (2, 3, 8, 8)


def test_downsampled_imagenet_npz(tmp_path):
    rng = np.random.default_rng(3)
    size = 8
    os.makedirs(tmp_path / "Imagenet64_train")
    os.makedirs(tmp_path / "Imagenet64_val")
    batches = []
    for b in (1, 2):
        labels = rng.integers(1, 4, 10)  # 1-based, 3 classes
        data = rng.integers(0, 255, (10, 3 * size * size), dtype=np.uint8)
        np.savez(tmp_path / "Imagenet64_train" / f"train_data_batch_{b}.npz", data=data, labels=labels)
        batches.append((data, labels))
    np.savez(tmp_path / "Imagenet64_val" / "val_data.npz", data=batches[0][0][:6], labels=np.array([1, 2, 3, 1, 2, 3]))
    reader = open_dataset("imagenet64", str(tmp_path))
    assert reader.info.im_size == (size, size) and reader.info.num_classes == 3
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches]) - 1
    got = reader.read_train([1])
    np.testing.assert_array_equal(got.images.numpy(), data[labels == 1].reshape(-1, 3, size, size))
    assert reader.read_test().labels.tolist() == [0, 1, 2, 0, 1, 2]


# ------------------------------------------------------------------ bad input
def test_missing_mnist_root_names_expected_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        open_dataset("mnist", str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and os.path.join("nowhere", "MNIST", "raw") in message
    assert "dataset.root" in message and "dataset.download" in message


@pytest.mark.parametrize("name, expected", [("mnist", "t10k-labels-idx1-ubyte"), ("cifar10", "cifar-10-batches-py")])
def test_failed_download_names_the_files_the_path_and_the_option_in_one_line(tmp_path, monkeypatch, name, expected):
    from types import SimpleNamespace
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    fake = SimpleNamespace(datasets=SimpleNamespace(MNIST=offline, CIFAR10=offline))
    monkeypatch.setattr(sources_mod, "_torchvision", lambda: fake)
    with pytest.raises(DatasetError) as err:
        open_dataset(name, str(tmp_path / "nowhere"), download=True)
    message = str(err.value)
    assert "\n" not in message and expected in message and str(tmp_path / "nowhere") in message
    assert "dataset.download: true" in message and "name resolution" in message


def test_missing_folder_roots_name_expected_paths(tmp_path):
    with pytest.raises(DatasetError, match=r"train/<class>"):
        open_dataset("imagefolder", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="wnids.txt"):
        open_dataset("tinyimagenet", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        open_dataset("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="train_data_batch"):
        open_dataset("imagenet64", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="meta.json"):
        open_dataset("prepared", str(tmp_path / "nowhere"))


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError) as err:
        open_dataset("imagenette")
    assert all(name in str(err.value) for name in (*SOURCE_NAMES, "prepared"))


def test_empty_class_is_an_error_before_decoding(tmp_path):
    root = make_image_folder(tmp_path / "folder", corrupt=None)
    os.makedirs(tmp_path / "folder" / "train" / "dog")
    os.makedirs(tmp_path / "folder" / "test" / "dog")
    with pytest.raises(DatasetError, match="dog"):
        open_dataset("imagefolder", root)


def test_test_classes_must_match_train_classes(tmp_path):
    root = make_image_folder(tmp_path / "extra", corrupt=None)
    os.makedirs(tmp_path / "extra" / "test" / "zebra")
    _random_image("RGB", (9, 9), np.random.default_rng(0)).save(tmp_path / "extra" / "test" / "zebra" / "z.png")
    with pytest.raises(DatasetError, match="does not match.*zebra"):
        open_dataset("imagefolder", root)
    root = make_image_folder(tmp_path / "missing", corrupt=None)
    shutil.rmtree(tmp_path / "missing" / "test" / "cat")
    with pytest.raises(DatasetError, match="does not match.*cat"):
        open_dataset("imagefolder", root)


def test_every_file_of_a_class_corrupt_is_an_error(tmp_path):
    spec = {"ok": FOLDER_SPEC["apple"], "broken": []}
    root = make_image_folder(tmp_path / "f", spec=spec, corrupt=("broken", "x.jpg"))
    reader = open_dataset("imagefolder", root, resolution=RES)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="broken"):
        reader.read_train([0])


@needs_mnist
def test_labels_out_of_range_and_truncated_idx(tmp_path):
    images = np.zeros((3, 1, 4, 4), np.uint8)
    with pytest.raises(DatasetError, match=r"labels \[7\] out of range"):
        ArraySource("x", ["a", "b"], (images, np.array([0, 1, 7])), (images, np.array([0, 1, 1])))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in os.listdir(MNIST_RAW):
        shutil.copy(os.path.join(MNIST_RAW, name), raw)
    with gzip.open(os.path.join(MNIST_RAW, "t10k-labels-idx1-ubyte.gz")) as f:
        head = f.read(100)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(head)  # an unpacked copy, cut short: preferred, and bad
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte is truncated"):
        open_dataset("mnist", str(tmp_path))


def test_class_ids_out_of_range_are_rejected():
    with pytest.raises(DatasetError, match=r"\[10\]"):
        open_dataset("digits").read_train([2, 10])


# ------------------------------------------------------------------ normalisation and stats
def test_normalize_denormalize_roundtrip():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = normalize(images, mean, std, device="cpu", dtype=torch.float64)
    assert x.dtype == torch.float64
    assert torch.allclose(x[:, 1], (images[:, 1].double() / 255 - 0.4) / 0.25)
    assert torch.allclose(denormalize(x, mean, std), images.double() / 255)


def test_channel_stats_merge_equals_whole():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (600, 3, 5, 5), dtype=np.uint8)
    whole = ChannelStats(3).add(images)
    parts = ChannelStats(3).add(images[:250]).merge(ChannelStats.from_dict(ChannelStats(3).add(images[250:]).to_dict()))
    assert whole.mean_std() == parts.mean_std()
    flat = images.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(whole.mean_std()[0], flat.mean(1), atol=1e-12)
    np.testing.assert_allclose(whole.mean_std()[1], flat.std(1), atol=1e-12)
