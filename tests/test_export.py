"""`dmcondense export` to formats anyone can load, from a run committed here without Ray; and
where it writes: exactly the path named, never over an existing one without --force, every
failure one line with its exit code."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from orchestrator.artifacts.training_sets import read_method
from orchestrator.cli import main
from orchestrator.run_dir import RunDir
from orchestrator.set_formats import pixels_uint8

from .conftest import REPO
from .test_run_integrity import _committed_run, _one_line


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


FILE_FORMATS, FOLDER_FORMATS = ("pt", "npz"), ("png", "imagefolder", "hf")


def _export(run: RunDir, fmt: str, to: Path, *more: str) -> int:
    if fmt == "hf":
        pytest.importorskip("datasets")
    return main(["export", run.uri, "--format", fmt, "--to", str(to), *more])


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fmt", FILE_FORMATS + FOLDER_FORMATS)
def test_export_writes_exactly_the_path_named_creating_the_folders_above(run, tmp_path, capsys, fmt):
    to = tmp_path / "new" / "deeper" / "synthetic"  # no suffix: npz used to write synthetic.npz
    assert _export(run, fmt, to) == 0
    assert _one_line(capsys).startswith(f"wrote {to}")
    assert _entries(to.parent) == ["synthetic"] and to.is_dir() == (fmt in FOLDER_FORMATS)
    if fmt == "npz":
        _, labels = read_method(run)
        assert np.load(to)["labels"].tolist() == labels.tolist()


@pytest.mark.parametrize("fmt", FILE_FORMATS + FOLDER_FORMATS)
def test_an_existing_export_is_replaced_only_with_force(run, tmp_path, capsys, fmt):
    to = tmp_path / "set"
    if fmt in FOLDER_FORMATS:  # an earlier export, with a class folder this one does not write
        (to / "00009_gone").mkdir(parents=True)
        (to / "00009_gone" / "0000.png").write_bytes(b"old")
    else:
        to.write_bytes(b"old")
    before = _entries(to) if to.is_dir() else to.read_bytes()
    assert _export(run, fmt, to) == 2
    message = _one_line(capsys)
    assert f"{to} exists; pass --force to replace it" in message
    assert (_entries(to) if to.is_dir() else to.read_bytes()) == before
    assert _export(run, fmt, to, "--force") == 0 and _one_line(capsys).startswith(f"wrote {to}")
    if fmt in FOLDER_FORMATS:
        assert "00009_gone" not in _entries(to)
    else:
        assert to.read_bytes() != b"old"
    assert _entries(tmp_path) == ["set"]  # no staging folder left beside it


def test_force_never_deletes_what_no_export_wrote(run, tmp_path, capsys):
    to = tmp_path / "mine"
    to.mkdir()
    (to / "notes.txt").write_text("keep me")
    assert _export(run, "imagefolder", to, "--force") == 2
    assert "holds notes.txt, which no export writes" in _one_line(capsys)
    assert _entries(to) == ["notes.txt"]


def test_a_target_without_a_name_of_its_own_is_refused(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _export(run, "imagefolder", Path(".")) == 2
    assert "names no file or folder of its own" in _one_line(capsys) and _entries(tmp_path) == []


def test_a_file_where_a_folder_must_be_is_one_line(run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for fmt, to in (("npz", tmp_path / "file" / "set.npz"), ("imagefolder", tmp_path / "file")):
        assert _export(run, fmt, to, "--force") == 2
        assert "not a folder" in _one_line(capsys)
    assert _entries(tmp_path) == ["file"]


def _refuses_files(folder: str) -> bool:
    try:
        Path(tempfile.mkdtemp(dir=folder)).rmdir()
    except PermissionError:
        return True
    except OSError:
        return False
    return False


@pytest.mark.skipif(not _refuses_files("/sys"), reason="needs a folder no one may write, as Linux's /sys")
@pytest.mark.parametrize("fmt", ["pt", "npz", "imagefolder"])
def test_an_unwritable_target_is_one_line_with_exit_2(run, capsys, fmt):
    to = Path("/sys") / f"dmcondense-export-{fmt}"
    assert _export(run, fmt, to) == 2  # was a 20-line traceback and exit 1
    reason = "(Permission denied|Operation not permitted)"  # creating a file, a folder
    assert re.fullmatch(f"error: cannot write {to}: {reason}; choose another --to \\(nothing was written\\)",
                        _one_line(capsys))


def _limit_file_size() -> None:
    """In the child: files stop growing at 2 KiB, the way a full disk stops them (writes fail with EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


@pytest.mark.parametrize("fmt", FILE_FORMATS)  # (a 2 KiB limit holds every PNG of this set)
def test_a_write_the_disk_cannot_take_is_one_line_with_exit_4_and_leaves_nothing(run, tmp_path, fmt):
    to = tmp_path / "out" / "set"
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "export", run.uri, "--format", fmt,
                           "--to", str(to)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 4 and len(output.splitlines()) == 1, output
    assert output.startswith(f"error: writing {to} failed: File too large; nothing was left there"), output
    assert _entries(tmp_path / "out") == []
