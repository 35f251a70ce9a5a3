"""Bad input fails at plan time, in --dry-run too, with one message naming the problem and the fix;
nothing is written and no Ray starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orchestrator.cli import main
from workers.data import sources as sources_mod

from .conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")


def _fails_before_any_work(capsys, tmp_path, argv: list[str]) -> str:
    import ray

    run = tmp_path / "run"
    assert main([*argv, "--out", str(run)]) == 2
    assert not run.exists() and not ray.is_initialized()
    return capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [True, False])
def test_more_images_per_class_than_the_smallest_class_has(capsys, tmp_path, dry_run):
    out = _fails_before_any_work(capsys, tmp_path, ["run", DIGITS, "--set", "condense.ipc=500",
                                                    *(["--dry-run"] if dry_run else [])])
    # digits: 1,347 train images, the smallest class ('8') has 130
    assert "condense.ipc=500 but class 8 ('8') of digits has only 130 train images" in out
    assert "set condense.ipc to at most 130" in out


def test_a_network_that_cannot_take_the_image_size_is_named_with_its_key(capsys, tmp_path):
    out = _fails_before_any_work(capsys, tmp_path, ["run", DIGITS, "--dry-run", "--set", "evaluate.models=[ConvNetD4]"])
    assert "evaluate.models: ConvNetD4 cannot take digits's 1x8x8 images" in out


def test_classes_the_dataset_lacks_are_named(capsys, tmp_path):
    out = _fails_before_any_work(capsys, tmp_path, ["run", DIGITS, "--dry-run", "--set", "plan.classes=[3,12]"])
    assert "plan.classes: [12] are not classes of digits (it has classes 0..9)" in out


def test_missing_mnist_files_with_a_failed_download_in_one_line(capsys, tmp_path, monkeypatch):
    from types import SimpleNamespace
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sources_mod, "_torchvision", lambda: SimpleNamespace(datasets=SimpleNamespace(MNIST=offline)))
    out = _fails_before_any_work(capsys, tmp_path, ["run", str(REPO / "configs" / "mnist-ipc1.yaml"),
                                                    "--set", "dataset.root=/nonexistent"])
    assert len(out.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte" in out and "/nonexistent/MNIST/raw" in out and "dataset.download" in out


def test_a_dry_run_of_a_shipped_config_fetches_nothing_and_writes_nothing(capsys, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a dry run must not download")

    monkeypatch.setattr(sources_mod, "_torchvision", lambda: SimpleNamespace(datasets=SimpleNamespace(
        CIFAR10=no_download)))
    monkeypatch.chdir(tmp_path)  # the shipped config's dataset.root (data) and output (runs/...) are relative
    assert main(["run", str(REPO / "configs" / "cifar10-ipc10.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data/cifar-10-batches-py" in out and "nothing was written" in out and len(out.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_yaml_syntax_error_names_the_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncondense: {ipc: 3\n")
    out = _fails_before_any_work(capsys, tmp_path, ["run", str(bad), "--dry-run"])
    assert f"{bad}, line 3, column 1: not valid YAML" in out


def test_an_unknown_network_gets_one_message_with_the_names_and_no_config_dump(capsys, tmp_path):
    out = _fails_before_any_work(capsys, tmp_path, ["run", DIGITS, "--dry-run", "--set", "evaluate.models=[ConvNett]"])
    assert "evaluate.models: unknown network 'ConvNett'" in out and "did you mean 'ConvNet'?" in out
    assert out.count("Valid names:") == 1 and "'dataset':" not in out


def test_every_name_build_network_builds_is_a_valid_config_name():
    from orchestrator.config import load_config

    cfg = load_config(None, ["evaluate.models=[ConvNetD4BN, ConvNetW64NP]", "condense.model=ConvNetD2W32"])
    assert cfg.evaluate.models == ["ConvNetD4BN", "ConvNetW64NP"] and cfg.condense.model == "ConvNetD2W32"
