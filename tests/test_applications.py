"""Class-incremental learning and the NAS proxy on a local Ray: growth without touching what is
committed, resume of both, and the bad input each refuses before any task starts."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main

from .conftest import REPO, sets

pytestmark = pytest.mark.ray

CONFIG = str(REPO / "configs" / "digits.yaml")
SMALL = ["condense.iterations=10", "condense.checkpoint_every=0", "condense.ipc=2", "condense.batch_real=16",
         "condense.model=ConvNetW32", "plan.classes_per_shard=2", "resources.gpus_per_shard=0",
         "evaluate.models=[ConvNetW32]", "evaluate.num_models=1", "evaluate.epochs=3", "evaluate.gpus=false"]


def _shards(run: Path) -> dict[str, tuple[bytes, int, int]]:
    out = {}
    for path in sorted((run / "shards").glob("*.parquet")):
        manifest = json.loads((run / "manifest" / path.name.replace(".parquet", ".json")).read_text())
        out[path.name] = (path.read_bytes(), path.stat().st_mtime_ns, manifest["seed"])
    return out


def test_a_continual_run_grows_without_touching_earlier_steps_and_resumes_where_it_stopped(
        cpu_ray, tmp_path, monkeypatch, capsys):
    run = tmp_path / "continual"
    args = ["continual", CONFIG, "--out", str(run), *sets(*SMALL, "continual.steps=3")]
    # steps of 4, 3 and 3 classes in shards of 2: shard-00002 is the first shard of step 2
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00002=raise")
    assert main([*args, *sets("resources.max_retries=0")]) == 1
    step_one = {k: v for k, v in _shards(run).items() if k in ("shard-00000.parquet", "shard-00001.parquet")}
    assert len(step_one) == 2 and not (run / "shards" / "shard-00002.parquet").exists()
    scores_after_step_one = {p.name: p.stat().st_mtime_ns for p in (run / "eval" / "scores").rglob("*.parquet")}
    assert scores_after_step_one  # step 1 was evaluated before step 2 failed
    monkeypatch.delenv("DMCONDENSE_FAULTS")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test accuracy on the classes seen" in out and "10 classes" in out
    assert "evaluate.coreset_feature_epochs=20" in out  # SMALL leaves herding's features untrained
    grown = _shards(run)
    assert len(grown) == 6 and all(grown[name] == step_one[name] for name in step_one)  # ids, bytes, seeds, untouched
    for path in (run / "eval" / "scores").rglob("*.parquet"):  # nothing committed was recomputed
        if path.name in scores_after_step_one:
            assert path.stat().st_mtime_ns == scores_after_step_one[path.name]
    rows = pq.read_table(run / "continual" / "results.parquet").to_pylist()
    assert {(r["step"], r["classes_seen"]) for r in rows} == {(1, 4), (2, 7), (3, 10)}
    assert {r["method"] for r in rows} == {"dm", "random", "herding"}
    assert (run / "continual" / "accuracy.png").stat().st_size > 0
    report = (run / "continual" / "report.md").read_text()
    assert "| method | 4 classes | 7 classes | 10 classes |" in report
    dm_final = [100 * r["accuracy"] for r in rows if r["method"] == "dm" and r["step"] == 3]
    assert f"{statistics.fmean(dm_final):.2f} ± {statistics.pstdev(dm_final):.2f}" in report.split("| dm |")[1]


def test_continual_with_the_shipped_config_and_its_default_output_beside_the_main_run(cpu_ray, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the shipped output, runs/digits-ipc10, is relative
    fast = ["condense.iterations=4", "condense.checkpoint_every=0", "evaluate.num_models=1", "evaluate.epochs=2"]
    assert main(["run", CONFIG, *sets(*fast, "evaluate.baselines=[]")]) == 0  # the main run, where it goes
    main_run = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "digits-ipc10" / "shards").glob("*")}
    # as shipped: 5 steps of 2 classes with classes_per_shard 5 (an upper bound: shards of 2)
    assert main(["continual", CONFIG, *sets(*fast)]) == 0
    assert "results: runs/digits-ipc10-continual/continual/report.md" in capsys.readouterr().out
    continual = tmp_path / "runs" / "digits-ipc10-continual"
    assert len(list((continual / "shards").glob("*.parquet"))) == 5
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / "digits-ipc10" / "shards").glob("*")} == main_run
    # and one kind never runs in the other's directory
    assert main(["continual", CONFIG, *sets(*fast), "--out", "runs/digits-ipc10"]) == 2
    assert "holds a plain run (dmcondense run); a continual run" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["continual.steps=11"], "continual.steps=11 but there are only 10 classes"),
    (["condense.ipc=200"], "condense.ipc=200 but class 8 ('8') of digits has only 130 train images"),
])
def test_continual_bad_input_fails_before_any_task(tmp_path, capsys, extra, message):
    assert main(["continual", CONFIG, "--out", str(tmp_path / "c"), *sets(*SMALL, *extra)]) == 2
    assert message in capsys.readouterr().out and not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def condensed(cpu_ray, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("nas") / "run"
    assert main(["run", CONFIG, "--out", str(run), *sets(*SMALL, "evaluate.num_models=0", "evaluate.baselines=[]")]) == 0
    return run


NAS = ["nas.sample=4", "nas.epochs=2", "nas.whole_epochs=1", "nas.space.depths=[1,2]", "nas.space.widths=[32]"]


def test_nas_ranks_every_architecture_on_every_proxy_and_resumes_with_what_is_missing(condensed, capsys):
    assert main(["nas", str(condensed), *sets(*NAS)]) == 0
    out = capsys.readouterr().out
    assert "proxy quality" in out and "synthetic" in out and "early_stopping" in out
    rows = pq.read_table(condensed / "nas" / "results.parquet").to_pylist()
    assert len({r["architecture"] for r in rows}) == 4 and len(rows) == 4 * 4  # 3 proxies and the whole set
    assert (condensed / "nas" / "proxy-vs-whole.png").stat().st_size > 0
    kept = sorted((condensed / "nas" / "scores").rglob("*.json"))
    kept[0].unlink()  # as if the search had stopped before this training
    others = {p: p.stat().st_mtime_ns for p in kept[1:]}
    assert main(["nas", str(condensed), *sets(*NAS)]) == 0
    assert "15 of 16 trainings were scored by an earlier attempt" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in others.items()) and kept[0].exists()


def test_nas_bad_input_fails_before_any_task(condensed, tmp_path, capsys):
    shutil.rmtree(condensed / "nas", ignore_errors=True)
    assert main(["nas", str(condensed), *sets(*NAS, "nas.space.depths=[4]", "nas.space.pools=[avgpooling]")]) == 2
    assert "cannot be built for 8x8 images" in capsys.readouterr().out and not (condensed / "nas").exists()
    empty = tmp_path / "empty"
    assert main(["run", CONFIG, "--out", str(empty), "--dry-run", *sets(*SMALL)]) == 0
    assert main(["nas", str(empty), *sets(*NAS)]) == 2  # no run directory at all
    uncommitted = condensed.parent / "uncommitted"
    shutil.copytree(condensed, uncommitted)
    (uncommitted / "manifest" / "shard-00000.json").unlink()
    capsys.readouterr()
    assert main(["nas", str(uncommitted), *sets(*NAS)]) == 2
    assert "shard-00000 is pending" in capsys.readouterr().out and not (uncommitted / "nas").exists()
