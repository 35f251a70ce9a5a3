"""The pool stage and its users on a local Ray: commits, retries, resume, plan-time errors."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from orchestrator.cli import _parser, main
from orchestrator.pool_dir import PoolRecord, pool_key
from orchestrator.run_opening import opened
from orchestrator.artifacts.selections import selection_state

from .conftest import REPO, sets

pytestmark = pytest.mark.ray

CONFIG = str(REPO / "configs" / "digits.yaml")
POOL = ["pool.networks=2", "pool.epochs=2", "pool.states_every=2", "pool.model=ConvNetW32"]
RUN = ["condense.model=ConvNetW32", "condense.iterations=30", "condense.checkpoint_every=10", "condense.ipc=2",
       "condense.batch_real=16", "plan.classes_per_shard=5", "resources.gpus_per_shard=0", "evaluate.num_models=0",
       "evaluate.baselines=[]"]


@pytest.fixture(scope="module")
def pools(cpu_ray, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pools")
    assert main(["pool", CONFIG, "--out", str(root), *sets(*POOL)]) == 0
    return root


def _pool_dir(root: Path) -> Path:
    [folder] = [p for p in root.iterdir() if (p / "pool.json").exists()]
    return folder


def test_a_pool_commits_every_network_and_a_second_call_trains_nothing(pools, capsys):
    folder = _pool_dir(pools)
    manifests = [json.loads(p.read_text()) for p in sorted((folder / "manifest").glob("net-*.json"))]
    assert [m["index"] for m in manifests] == [0, 1] and (folder / "pool.png").stat().st_size > 0
    for m in manifests:  # the states from the initialisation to the end, each with its accuracy
        assert m["steps"][0] == 0 and len(m["steps"]) == len(m["val_accuracy"]) > 3
        assert m["val_accuracy"][-1] > m["val_accuracy"][0]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("net-*")}
    capsys.readouterr()
    assert main(["pool", CONFIG, "--out", str(pools), *sets(*POOL)]) == 0
    assert "training" not in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("net-*")} == mtimes


def test_a_killed_network_is_retried_and_a_failed_one_is_all_the_next_call_trains(cpu_ray, tmp_path,
                                                                                  monkeypatch, capsys):
    monkeypatch.setenv("DMCONDENSE_FAULTS", "net-00001=kill-once")
    assert main(["pool", CONFIG, "--out", str(tmp_path / "killed"), *sets(*POOL)]) == 0
    assert (_pool_dir(tmp_path / "killed") / "faults" / "net-00001.kill-once").exists()
    monkeypatch.setenv("DMCONDENSE_FAULTS", "net-00001=raise")
    root = tmp_path / "failed"
    capsys.readouterr()
    assert main(["pool", CONFIG, "--out", str(root), *sets(*POOL, "resources.max_retries=0")]) == 1
    advised = shlex.split(re.search(r"Finish with: (.*)", capsys.readouterr().out).group(1))
    folder = _pool_dir(root)
    first = (folder / "net-00000.pt").stat().st_mtime_ns
    assert not (folder / "manifest" / "net-00001.json").exists()
    monkeypatch.delenv("DMCONDENSE_FAULTS")
    assert advised[:2] == ["dmcondense", "pool"] and main(advised[1:]) == 0  # the advice finishes the pool
    assert (folder / "manifest" / "net-00001.json").exists() and (folder / "net-00000.pt").stat().st_mtime_ns == first


def test_a_shard_on_pool_networks_resumes_to_the_bytes_of_an_uninterrupted_one(pools, tmp_path, monkeypatch):
    on_pool = [*RUN, *POOL, f"pool.uri={pools}", "condense.networks=pool", "condense.pool_group=[20,100]"]
    assert main(["run", CONFIG, "--out", str(tmp_path / "whole"), *sets(*on_pool)]) == 0
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00001=kill-after-checkpoint")
    assert main(["run", CONFIG, "--out", str(tmp_path / "killed"), *sets(*on_pool)]) == 0
    assert json.loads((tmp_path / "killed" / "manifest" / "shard-00001.json").read_text())["resumed_from"] == 10
    for name in ("shard-00000.parquet", "shard-00001.parquet"):
        assert (tmp_path / "killed" / "shards" / name).read_bytes() == (tmp_path / "whole" / "shards" / name).read_bytes()
    random = tmp_path / "random"  # the pool changes the images
    assert main(["run", CONFIG, "--out", str(random), *sets(*RUN)]) == 0
    assert (random / "shards" / "shard-00000.parquet").read_bytes() != \
        (tmp_path / "whole" / "shards" / "shard-00000.parquet").read_bytes()


def test_what_is_wrong_with_a_pool_is_named_before_any_shard_starts(pools, tmp_path, capsys):
    def dry(*extra: str) -> str:
        capsys.readouterr()
        assert main(["run", CONFIG, "--dry-run", "--out", str(tmp_path / "r"),
                     *sets(*RUN, *POOL, f"pool.uri={pools}", "condense.networks=pool", *extra)]) == 2
        return capsys.readouterr().out

    out = dry("pool.epochs=3")  # another pool than the one there
    assert "no pool made from this run's data and settings" in out and "dmcondense pool" in out
    advised = shlex.split(re.search(r"`(dmcondense pool [^`]*)`", out).group(1))
    args = _parser().parse_args(advised[1:])  # the advice is a command that parses to this run's pool
    assert args.source == CONFIG and "pool.epochs=3" in args.overrides and f"pool.uri={pools}" in args.overrides
    assert "--make-pool" in out and "the pools there were made from other data or settings" in out
    out = dry("condense.pool_group=[99.5,100]")
    assert "holds no state of the pool; its states by validation accuracy:" in out and "%: " in out
    folder = _pool_dir(pools)
    states = folder / "net-00001.pt"
    saved = states.read_bytes()
    states.write_bytes(saved[: len(saved) // 2])
    try:
        out = dry()
        assert "is not complete" in out and "net-00001 is corrupt" in out
    finally:
        states.write_bytes(saved)
    assert not (tmp_path / "r").exists()


def test_make_pool_trains_the_pool_first_and_the_forgetting_baseline_reads_it(cpu_ray, tmp_path, capsys):
    run = tmp_path / "run"
    pool = [*POOL, f"pool.uri={tmp_path / 'pools'}"]
    assert main(["run", CONFIG, "--out", str(run), "--make-pool",
                 *sets(*RUN, *pool, "condense.networks=pool", "condense.iterations=10")]) == 0
    assert (tmp_path / "pools").exists()
    assert main(["evaluate", str(run), *sets("evaluate.baselines=[forgetting]", "evaluate.num_models=1",
                                             "evaluate.epochs=1", "evaluate.models=[ConvNetW32]")]) == 0
    handle = opened(str(run))
    for spec in handle.shards:
        assert selection_state(handle, spec, "forgetting").state == "committed"
    capsys.readouterr()
    assert main(["status", str(run), "--json"]) == 0
    pool = json.loads(capsys.readouterr().out)["pool"]
    assert (pool["committed"], pool["networks"]) == (2, 2) and pool["states"] > 6
    assert (run / "pool.png").exists() and "## The pool" in (run / "report.md").read_text()


@pytest.mark.parametrize("recipe", ["dance", "m3d"])
def test_a_recipe_runs_resumes_exports_and_reports_as_dm_does(pools, tmp_path, monkeypatch, recipe):
    run_sets = [*RUN, *POOL, f"pool.uri={pools}", f"condense.recipe={recipe}", "evaluate.num_models=1",
                "evaluate.epochs=2", "evaluate.models=[ConvNetW32]", "evaluate.baselines=[random]"]
    whole = tmp_path / "whole"
    assert main(["run", CONFIG, "--out", str(whole), *sets(*run_sets)]) == 0
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00000=kill-after-checkpoint")
    killed = tmp_path / "killed"
    assert main(["run", CONFIG, "--out", str(killed), *sets(*run_sets, "evaluate.num_models=0")]) == 0
    assert json.loads((killed / "manifest" / "shard-00000.json").read_text())["resumed_from"] == 10
    assert (killed / "shards" / "shard-00000.parquet").read_bytes() == (whole / "shards" / "shard-00000.parquet").read_bytes()
    # 2 images stored per class, each holding 2x2 tiles: 8 trained on per class, and exported decoded
    assert main(["export", str(whole), "--format", "npz", "--to", str(tmp_path / "syn.npz")]) == 0
    import numpy as np

    assert np.load(tmp_path / "syn.npz")["images"].shape == (80, 1, 8, 8)
    report = (whole / "report.md").read_text()
    assert "2 images per class stored and 8 trained on (factor 2)" in report and f"| {recipe} | ConvNetW32 | paper | 1 |" in report


def test_a_pool_made_elsewhere_teaches_a_run_whose_own_pool_is_not_made(pools, tmp_path, capsys):
    run = tmp_path / "run"  # DM on random networks: its pool: section names no pool made
    assert main(["run", CONFIG, "--out", str(run), *sets(*RUN, "condense.iterations=10")]) == 0
    folder = _pool_dir(pools)
    soft = ["evaluate.labels=soft", "evaluate.num_models=1", "evaluate.epochs=1", "evaluate.models=[ConvNetW32]"]
    capsys.readouterr()
    assert main(["evaluate", str(run), *sets(*soft)]) == 2  # the run's own pool is not there
    assert "no pool made" in capsys.readouterr().out
    named = [*soft, f"evaluate.teacher.pool={folder}"]
    assert main(["evaluate", str(run), *sets(*named)]) == 0
    handle = opened(str(run))
    teacher, key = handle.resolved.teacher, json.loads((folder / "pool.json").read_text())["key"]
    assert teacher.identity.startswith(f"pool {key} net ") and not handle.resolved.uses_pool
    final = json.loads((folder / "manifest" / f"net-{teacher.network:05d}.json").read_text())["val_accuracy"][-1]
    others = [json.loads(p.read_text())["val_accuracy"][-1] for p in (folder / "manifest").glob("net-*.json")]
    assert final == max(others)  # the best network of that pool teaches
    assert f"soft labels from the best network of the pool at {folder}" in (run / "report.md").read_text()


@pytest.mark.parametrize("problem, expected", [
    ("missing", "no pool at"),
    ("untrained", "has no trained network yet"),
    ("other data", "was trained on fashion-mnist"),
])
def test_a_teacher_pool_that_cannot_teach_is_named_before_any_work(pools, tmp_path, capsys, problem, expected):
    run = tmp_path / "run"
    assert main(["run", CONFIG, "--out", str(run), *sets(*RUN, "condense.iterations=0")]) == 0
    named = tmp_path / "named"
    if problem != "missing":
        record = json.loads((_pool_dir(pools) / "pool.json").read_text())
        if problem == "other data":  # a pool's record names its data in its key too
            record["info"]["name"] = "fashion-mnist"
            faked = PoolRecord.model_validate(record)
            record["key"] = pool_key(faked.info, faked.settings)
        (named / "manifest").mkdir(parents=True)
        (named / "pool.json").write_text(json.dumps(record))
        if problem == "other data":  # a committed network, so that only the dataset is wrong
            for part in ("manifest/net-00000.json", "net-00000.pt"):
                (named / part).write_bytes((_pool_dir(pools) / part).read_bytes())
    capsys.readouterr()
    assert main(["evaluate", str(run), *sets("evaluate.labels=soft", f"evaluate.teacher.pool={named}")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: evaluate.teacher.pool:") and expected in out, out
    assert not (run / "eval" / "scores").exists()


def test_a_teacher_pool_goes_with_a_pool_teacher_only(tmp_path, capsys):
    assert main(["run", CONFIG, "--dry-run", "--out", str(tmp_path / "r"), *sets(
        *RUN, "evaluate.labels=soft", "evaluate.teacher.source=torchvision", "evaluate.teacher.arch=resnet18",
        "evaluate.teacher.weights=w.pt", f"evaluate.teacher.pool={tmp_path}")]) == 2
    assert "goes with source: pool" in capsys.readouterr().out


def test_rdeds_teacher_from_a_pool_made_elsewhere_is_checked_under_its_key(tmp_path, capsys):
    missing = tmp_path / "no-pool"
    assert main(["run", CONFIG, "--dry-run", "--out", str(tmp_path / "r"), *sets(
        *RUN, "condense.method=rded", "condense.iterations=0", f"evaluate.teacher.pool={missing}")]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"error: evaluate.teacher.pool: no pool at {missing}"), out
