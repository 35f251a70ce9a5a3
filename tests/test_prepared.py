"""The prepared Parquet format: content, schema, per-class reads that skip other ranges, URIs.

Preparation runs in-process here (no Ray); tests/test_prepare_distributed.py covers Ray and resume.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator import storage
from orchestrator.stage_runner import StageFailed
from orchestrator.stages.prepare import prepare
from tests.conftest import moto_s3
from workers.data import DatasetError, PreparedReader, open_dataset
from workers.data import sources as sources_mod
from workers.data.arrays import ArraySource
from workers.data.prepared import FORMAT_VERSION, META

from tests.test_data_sources import (
    CORRUPT,
    FOLDER_SPEC,
    RES,
    check_reader_interface,
    expected_pixels,
    make_image_folder,
)

QUIET = {"in_process": True}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("src") / "folder")


@pytest.fixture(scope="module")
def prepared_folder(folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "prepared")
    with pytest.warns(UserWarning, match="zz_corrupt"):
        prepare("imagefolder", folder, out, resolution=RES, classes_per_task=2, **QUIET)
    return out


def test_each_class_alone_has_its_images_and_pixels(folder, prepared_folder):
    reader = open_dataset("prepared", prepared_folder)
    assert reader.info.class_names == sorted(FOLDER_SPEC)
    assert reader.info.im_size == (RES, RES) and reader.info.channels == 3
    for k, cls in enumerate(reader.info.class_names):
        got = reader.read_train([k])
        names = sorted(n for n, _, _ in FOLDER_SPEC[cls])
        expected = np.stack([expected_pixels(os.path.join(folder, "train", cls, n)) for n in names])
        assert got.labels.tolist() == [k] * len(names)
        np.testing.assert_array_equal(got.images.numpy(), expected)


def test_meta_lists_corrupt_file_counts_and_train_stats(folder, prepared_folder):
    meta = storage.read_json(storage.join(prepared_folder, META))
    assert [s["path"] for s in meta["skipped"]] == [os.path.join(folder, "train", *CORRUPT)]
    assert meta["train_counts"] == [len(FOLDER_SPEC[c]) for c in sorted(FOLDER_SPEC)]
    assert meta["test_counts"] == [2, 2, 2] and meta["resolution"] == RES
    assert meta["format_version"] == FORMAT_VERSION
    reader = open_dataset("prepared", prepared_folder)
    pixels = reader.read_train(range(3)).images.numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(meta["mean"], pixels.mean(1), atol=1e-12)
    np.testing.assert_allclose(meta["std"], pixels.std(1), atol=1e-12)
    test = reader.read_test()
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_schema_and_row_groups(prepared_folder):
    train = os.path.join(prepared_folder, "train")
    files = sorted(n for n in os.listdir(train) if n.endswith(".parquet"))
    assert files == ["classes-00000-00001.parquet", "classes-00002-00002.parquet"]
    parquet = pq.ParquetFile(os.path.join(train, files[0]))
    schema = parquet.schema_arrow
    assert schema.field("class_id").type == pa.int32() and schema.field("class_name").type == pa.string()
    image_type = schema.field("image").type
    assert isinstance(image_type, pa.FixedShapeTensorType)
    assert image_type.value_type == pa.uint8() and image_type.shape == [3, RES, RES]
    groups = [parquet.read_row_group(g).column("class_id").to_pylist() for g in range(parquet.num_row_groups)]
    assert groups == [[0] * 3, [1] * 4]  # sorted, one row group per class
    table = parquet.read()
    assert table.column("class_name").to_pylist() == ["apple"] * 3 + ["bear"] * 4
    # Plain pyarrow can filter the whole dataset by class too.
    dataset = ds.dataset(train, format="parquet")
    assert dataset.to_table(filter=ds.field("class_id") == 2).num_rows == len(FOLDER_SPEC["cat"])


def test_strict_prepare_fails_naming_the_file(folder, tmp_path):
    out = str(tmp_path / "strict")
    with pytest.raises(StageFailed, match="zz_corrupt.jpg"):
        prepare("imagefolder", folder, out, resolution=RES, strict=True, classes_per_task=2, **QUIET)
    assert not os.path.exists(os.path.join(out, META))  # incomplete: no meta.json


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("digits") / "prepared")
    prepare("digits", None, out, classes_per_task=3, **QUIET)
    return out


def test_prepared_digits_same_interface_and_content(prepared_digits):
    direct = open_dataset("digits")
    prepared = open_dataset("prepared", prepared_digits)
    counts = [len(direct.read_train([c])) for c in range(10)]
    check_reader_interface(prepared, counts)
    assert prepared.info.class_names == direct.info.class_names
    np.testing.assert_allclose(prepared.info.mean, direct.info.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prepared.info.std, direct.info.std, rtol=0, atol=1e-12)
    for ids in ([3], [0, 9], [4, 5, 6]):  # inside one range, across ranges, a whole range
        a, b = direct.read_train(ids), prepared.read_train(ids)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(direct.read_test().images, prepared.read_test().images)


def test_reader_rejects_wrong_resolution_and_format(prepared_digits, tmp_path):
    with pytest.raises(DatasetError, match="resolution 8, not 16"):
        open_dataset("prepared", prepared_digits, resolution=16)
    copy = tmp_path / "copy"
    copy.mkdir()
    meta = json.loads(open(os.path.join(prepared_digits, META)).read())
    (copy / META).write_text(json.dumps({**meta, "format_version": 999}))
    with pytest.raises(DatasetError, match="v999"):
        open_dataset("prepared", str(copy))


# ------------------------------------------------------------------ bytes read by a per-class read
class _CountingHandler(pafs.FileSystemHandler):
    """A local filesystem that counts the bytes read from each file."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()
        self.read: dict[str, int] = {}

    def open_input_file(self, path):
        handler = self

        class Counting(io.FileIO):
            def _count(self, n: int) -> None:
                handler.read[path] = handler.read.get(path, 0) + n

            def read(self, size=-1):
                data = super().read(size)
                self._count(len(data))
                return data

            def readinto(self, buffer):
                n = super().readinto(buffer) or 0
                self._count(n)
                return n

        return pa.PythonFile(Counting(path, "r"), mode="r")

    def open_input_stream(self, path):
        return self.open_input_file(path)

    def get_type_name(self):
        return "counting"

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self is other

    def _unused(self, *args, **kwargs):
        raise NotImplementedError("a read-only test filesystem")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _unused
    delete_file = move = copy_file = open_output_stream = open_append_stream = _unused


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory, request):
    """100 classes x 20 images at 64x64, prepared in 10 ranges of 10 classes."""
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(100), 20)
    images = rng.integers(0, 256, (2000, 3, 64, 64), dtype=np.uint8)
    test = (images[::20][:100], np.arange(100))
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    source = ArraySource("synthetic", [f"c{i}" for i in range(100)], (images, labels), test)
    mp.setitem(sources_mod.SOURCES, "synthetic", lambda root, resolution, download: source)
    out = str(tmp_path_factory.mktemp("inet") / "prepared")
    prepare("synthetic", None, out, classes_per_task=10, **QUIET)
    return out, images, labels


def _measure(out: str, class_ids: list[int]) -> tuple[dict[str, int], int, torch.Tensor]:
    handler = _CountingHandler()
    reader = PreparedReader(out, filesystem=pafs.PyFileSystem(handler))
    handler.read.clear()  # count the data reads only, not meta.json
    got = reader.read_train(class_ids)
    return {os.path.basename(p): n for p, n in handler.read.items()}, int(got.labels.numel()), got


def test_per_class_read_touches_only_its_ranges(imagenet_like, capsys):
    out, images, labels = imagenet_like
    train = os.path.join(out, "train")
    total = sum(os.path.getsize(os.path.join(train, n)) for n in os.listdir(train) if n.endswith(".parquet"))
    aligned, rows, got = _measure(out, list(range(20, 30)))
    assert list(aligned) == ["classes-00020-00029.parquet"] and rows == 200
    np.testing.assert_array_equal(got.images.numpy(), images[(labels >= 20) & (labels < 30)])
    straddling, rows, got = _measure(out, list(range(25, 35)))
    assert sorted(straddling) == ["classes-00020-00029.parquet", "classes-00030-00039.parquet"] and rows == 200
    np.testing.assert_array_equal(got.images.numpy(), images[(labels >= 25) & (labels < 35)])
    one, rows, _ = _measure(out, [42])
    share = {k: sum(v.values()) / total for k, v in (("aligned", aligned), ("straddling", straddling), ("one", one))}
    with capsys.disabled():
        print(f"\nbytes read / dataset ({total:,} B): " + ", ".join(f"{k} {v:.1%}" for k, v in share.items()))
    assert share["aligned"] < 0.11 and share["straddling"] < 0.12 and share["one"] < 0.015


# ------------------------------------------------------------------ a prepared dataset on S3
@pytest.fixture(scope="module")
def s3_out():
    with moto_s3("prepared") as endpoint:
        yield f"s3://prepared/digits?endpoint_override={endpoint}&scheme=http"


def test_prepare_to_and_read_from_s3(s3_out):
    meta = prepare("digits", None, s3_out, classes_per_task=4, **QUIET)
    assert storage.list_names(storage.join(s3_out, "train"))[:2] == [
        "classes-00000-00003.parquet", "classes-00004-00007.parquet"
    ]  # fmt: skip
    reader = open_dataset("prepared", s3_out)
    direct = open_dataset("digits")
    assert reader.info.mean == pytest.approx(direct.info.mean) and reader.info.class_names == meta["classes"]
    assert torch.equal(reader.read_train([7]).images, direct.read_train([7]).images)
