"""Advice that can be followed: every refusal of a run directory names one command that works, and
a test runs it. Images changed under a run are condensed again when asked (resume
--recompute-changed); a hand-edited run.json is set back by the command printed; a read-only run
directory, a damaged pool and a continual run each get the command that fits them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from orchestrator import storage
from orchestrator.artifacts.shards import shard_state
from orchestrator.artifacts.training_sets import training_set
from orchestrator.cli import _parser, main
from orchestrator.config import load_config
from orchestrator.pipeline import new_run, reopened_run
from orchestrator.run_dir import RunDir, RunError
from orchestrator.stages.condense import condense_shard
from workers.data.tensor_table import table_arrays

from .test_data_sources import make_image_folder

SPEC = {name: [(f"{i}.png", "RGB", (8, 8)) for i in range(4)] for name in ("ant", "bee", "cow")}
# condense.iterations=0 with init real: a shard holds real images of its class, as drawn, normalised
TINY = ["dataset.name=imagefolder", "condense.iterations=0", "condense.checkpoint_every=0", "condense.ipc=1",
        "condense.batch_real=4", "condense.model=ConvNetW32D2", "plan.classes_per_shard=1",
        "resources.gpus_per_shard=0", "evaluate.num_models=0", "evaluate.baselines=[]"]
NEW_PIXEL = 201  # the value of every pixel of the images that replace class 1's


def _committed(tmp_path, *extra: str) -> tuple[RunDir, str]:
    """(a run of 3 one-class shards over an image folder, with shards 0 and 1 committed; the folder)."""
    root = make_image_folder(str(tmp_path / "data"), SPEC, corrupt=None)
    run = new_run(load_config(None, [*TINY, *extra, f"dataset.root={root}", f"output={tmp_path / 'run'}"]))
    run.save()
    for spec in run.shards[:2]:
        condense_shard(run, spec)
    return run, root


def _config(tmp_path) -> str:  # noqa: ANN001 - TINY as a config file
    path = tmp_path / "tiny.yaml"
    data: dict = {}
    for item in TINY:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        data.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _replace_class_images(root: str, cls: str, count: int) -> None:
    folder = os.path.join(root, "train", cls)
    shutil.rmtree(folder)
    os.makedirs(folder)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), NEW_PIXEL, np.uint8)).save(os.path.join(folder, f"new-{i}.png"))


def _cli(argv: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001 - the exit code and the one line printed
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr().out.strip()
    assert code != 2 or (len(out.splitlines()) == 1 and "Traceback" not in out), out
    return code, out


def _advised(line: str) -> list[str]:
    """The command in backquotes of a one-line message, as shell words."""
    return shlex.split(re.search(r"`(dmcondense [^`]*)`", line).group(1))


# ------------------------------------------------------------------ images changed under a run
def test_changed_images_are_named_with_the_command_that_condenses_them_again(tmp_path, capsys):
    run, root = _committed(tmp_path)
    _replace_class_images(root, "bee", 6)
    argv = ["resume", run.uri]
    code, line = _cli(argv, capsys)
    assert code == 2 and "1 of its 3 classes changed (1 (bee))" in line
    advised = _advised(line)
    assert advised[1:] == ["resume", run.uri, "--recompute-changed"]
    assert _parser().parse_args(advised[1:]).recompute_changed  # a flag resume takes
    argv = ["evaluate", run.uri]
    assert _cli(argv, capsys) == (2, line)  # the same way forward from evaluate


def test_recomputing_keeps_the_statistics_drops_the_stale_units_and_scores_the_sets_again(tmp_path):
    run, root = _committed(tmp_path)
    condense_shard(run, run.shards[2])
    before = training_set(run, "dm").data_key
    kept = (tmp_path / "run" / "shards" / "shard-00000.parquet").read_bytes()
    _replace_class_images(root, "bee", 6)
    again = reopened_run(run.uri, [], recompute_changed=True)
    info = again.dataset
    assert info.train_counts == (4, 6, 4) and (info.mean, info.std) == (run.dataset.mean, run.dataset.std)
    assert again.record.stale == (1,)  # dropped under the lease, when the stages start
    again.save()
    assert reopened_run(run.uri, []).record.stale == (1,)  # a stop before the drop still drops it next time
    from rich.console import Console

    from orchestrator.pipeline import _drop_stale_units

    console = Console(record=True, width=400)
    dropped = _drop_stale_units(again, console)
    assert "the dataset's mean and std stay as recorded" in console.export_text()
    assert [shard_state(dropped, s).state for s in dropped.shards] == ["committed", "pending", "committed"]
    assert RunDir.load(run.uri).record.stale == ()
    condense_shard(dropped, dropped.shards[1])
    assert training_set(dropped, "dm").data_key != before  # no score of the earlier images is reused
    assert (tmp_path / "run" / "shards" / "shard-00000.parquet").read_bytes() == kept
    images = pq.read_table(tmp_path / "run" / "shards" / "shard-00001.parquet")
    assert images.num_rows == 1


def test_a_run_over_changed_images_gets_the_same_way_forward(tmp_path, capsys):
    run, root = _committed(tmp_path)
    _replace_class_images(root, "cow", 5)  # class 2: planned, not committed yet, still the run's
    moved = str(tmp_path / "moved")
    shutil.move(root, moved)
    with pytest.raises(RunError) as refused:
        new_run(load_config(None, [*TINY, f"dataset.root={moved}", f"output={run.uri}"]))
    advised = _advised(str(refused.value))
    assert advised[1:] == ["resume", run.uri, "--set", f"dataset.root={moved}", "--recompute-changed"]
    args = _parser().parse_args(advised[1:])
    assert reopened_run(args.run, args.overrides, recompute_changed=args.recompute_changed).record.stale == (2,)


def test_classes_added_to_the_dataset_are_not_offered_a_recompute(tmp_path):
    run, root = _committed(tmp_path)
    os.rename(os.path.join(root, "train", "ant"), os.path.join(root, "train", "dog"))  # ids shift
    for asked in (False, True):
        with pytest.raises(RunError, match="start a new run with --out") as refused:
            reopened_run(run.uri, [], recompute_changed=asked)
        assert "--recompute-changed" not in str(refused.value)


# ------------------------------------------------------------------ a hand-edited run.json
def _edit_record(run: RunDir, key: str, value: object) -> None:
    path = os.path.join(run.uri, "run.json")
    record = json.load(open(path))
    section, name = key.split(".")
    record["config"][section][name] = value
    json.dump(record, open(path, "w"))


def test_an_edited_record_is_named_with_the_one_command_that_sets_it_back(tmp_path, capsys):
    run, root = _committed(tmp_path)
    _edit_record(run, "condense.ipc", 2)
    for argv in (["resume", run.uri], ["evaluate", run.uri], ["resume", run.uri, "--set", "condense.ipc=3"]):
        code, line = _cli(argv, capsys)
        assert code == 2 and "condense.ipc 2 where its shards have 1" in line and "it was edited" in line
        assert _advised(line)[1:] == ["resume", run.uri, "--set", "condense.ipc=1"]
    args = _parser().parse_args(_advised(line)[1:])
    restored = reopened_run(args.run, args.overrides)  # accepted as setting the record back
    assert restored.config.condense.ipc == 1 and shard_state(restored, restored.shards[0]).state == "committed"
    restored.save()
    assert reopened_run(run.uri, []).config.condense.ipc == 1  # set back for good
    # a run over the edited directory with the config its shards were made with adopts them
    _edit_record(run, "condense.ipc", 2)
    argv = ["run", _config(tmp_path), "--dry-run", "--out", run.uri, "--set", f"dataset.root={root}"]
    assert _cli(argv, capsys)[0] == 0


def test_an_edited_record_keeps_the_other_settings_of_the_command_in_its_advice(tmp_path):
    run, _ = _committed(tmp_path)
    _edit_record(run, "condense.batch_real", 2)
    with pytest.raises(RunError) as refused:
        reopened_run(run.uri, ["evaluate.num_models=3", "condense.batch_real=7"])
    assert _advised(str(refused.value))[1:] == ["resume", run.uri, "--set", "evaluate.num_models=3",
                                                 "--set", "condense.batch_real=4"]


# ------------------------------------------------------------------ a read-only run directory
def _read_only(monkeypatch, folder: str) -> None:  # noqa: ANN001
    """Writes under ``folder`` fail as on a read-only mount (the tests run as root, which chmod
    does not stop)."""
    write = storage.write_json_atomic

    def refuse(uri: str, data: object) -> None:
        if uri.startswith(folder):
            raise PermissionError(13, "Permission denied", uri)
        write(uri, data)

    monkeypatch.setattr(storage, "write_json_atomic", refuse)


@pytest.mark.parametrize("command", [["resume"], ["evaluate", "--set", "evaluate.num_models=2"], ["nas"]])
def test_a_read_only_run_directory_is_advised_a_command_its_command_takes(command, tmp_path, capsys, monkeypatch):
    run, _ = _committed(tmp_path)
    condense_shard(run, run.shards[2])  # nas needs every shard
    _read_only(monkeypatch, run.uri)
    argv = [command[0], *command[1:], run.uri]
    code, line = _cli(argv, capsys)
    assert code == 2 and f"cannot write {run.uri}" in line
    advised = _advised(line)
    assert advised[1:] == [command[0], *command[1:], "COPY"] and "--out" not in line
    _parser().parse_args(advised[1:])  # a command line this command takes (argparse exits otherwise)


def test_a_read_only_out_is_still_advised_another_out(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    _read_only(monkeypatch, out)
    argv = ["run", _config(tmp_path), "--out", out,
            "--set", f"dataset.root={make_image_folder(str(tmp_path / 'data'), SPEC, corrupt=None)}"]
    code, line = _cli(argv, capsys)
    assert code == 2 and "choose a writable location with --out" in line


# ------------------------------------------------------------------ a damaged pool
def test_a_damaged_pool_is_repaired_by_a_command_with_the_pool_settings_given(tmp_path):
    run, _ = _committed(tmp_path)
    sets = ["evaluate.baselines=[forgetting]", "pool.epochs=2", "pool.networks=1"]
    needed = reopened_run(run.uri, sets, make_pool=True).resolved.pool_dir
    needed.save()  # a pool record without its network: what a pool stopped before its commit leaves
    with pytest.raises(RunError, match="is not complete") as refused:
        reopened_run(run.uri, sets)
    args = _parser().parse_args(_advised(str(refused.value))[1:])
    assert args.func.__name__ == "cmd_pool"
    made = reopened_run(args.source, args.overrides, make_pool=True)  # what `dmcondense pool RUN` trains
    assert made.resolved.pool_dir.uri == needed.uri


# ------------------------------------------------------------------ a continual run
def test_resume_and_evaluate_on_a_continual_run_name_the_continual_command(tmp_path, capsys):
    root = make_image_folder(str(tmp_path / "data"), SPEC, corrupt=None)
    new_run(load_config(None, [*TINY, f"dataset.root={root}", f"output={tmp_path / 'c'}"]), kind="continual").save()
    uri = str(tmp_path / "c")
    for argv in (["resume", uri], ["evaluate", uri]):
        code, line = _cli(argv, capsys)
        assert code == 2 and "holds a continual run" in line
        advised = _advised(line)
        assert advised[1] == "continual" and advised[-2:] == ["--out", uri]
        _parser().parse_args([*advised[1:2], "CONFIG.yaml", *advised[3:]])


# ------------------------------------------------------------------ each printed command, run
def _pixels(run_dir: str, shard: str) -> np.ndarray:
    """A committed shard's images in [0, 255], with the mean and std its run records."""
    info = json.load(open(os.path.join(run_dir, "run.json")))["dataset"]
    x, _ = table_arrays(pq.read_table(os.path.join(run_dir, "shards", f"{shard}.parquet")))
    mean, std = np.array(info["mean"])[:, None, None], np.array(info["std"])[:, None, None]
    return (x * std + mean) * 255


def test_each_printed_command_works_when_run(cpu_ray, tmp_path, capsys, monkeypatch):
    run, root = _committed(tmp_path)
    assert abs(_pixels(run.uri, "shard-00001") - NEW_PIXEL).max() > 20  # drawn from the first images
    first = (tmp_path / "run" / "shards" / "shard-00000.parquet").read_bytes()
    _replace_class_images(root, "bee", 6)
    code, line = _cli(["resume", run.uri], capsys)
    assert code == 2 and main(_advised(line)[1:]) == 0  # resume --recompute-changed
    assert abs(_pixels(run.uri, "shard-00001") - NEW_PIXEL).max() < 0.01  # condensed from the new images
    assert (tmp_path / "run" / "shards" / "shard-00000.parquet").read_bytes() == first
    record = json.load(open(tmp_path / "run" / "run.json"))
    assert record["dataset"]["train_counts"] == [4, 6, 4] and record["stale"] == []
    assert "the dataset's mean and std stay as recorded" in capsys.readouterr().out

    _edit_record(run, "condense.ipc", 2)  # a hand-edited record: set back by the command printed
    code, line = _cli(["evaluate", run.uri], capsys)
    assert code == 2 and main(_advised(line)[1:]) == 0
    assert json.load(open(tmp_path / "run" / "run.json"))["config"]["condense"]["ipc"] == 1

    _read_only(monkeypatch, run.uri)  # a read-only run: its command again, on a writable copy
    code, line = _cli(["evaluate", "--set", "evaluate.epochs=3", run.uri], capsys)
    monkeypatch.undo()
    copy = str(tmp_path / "copy")
    shutil.copytree(run.uri, copy)
    advised = [copy if word == "COPY" else word for word in _advised(line)]
    assert code == 2 and main(advised[1:]) == 0
    assert json.load(open(os.path.join(copy, "run.json")))["config"]["evaluate"]["epochs"] == 3
