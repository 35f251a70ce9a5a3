"""The product end to end on a local Ray: commit, determinism, failures, resume, bad input."""

from __future__ import annotations

import json
import shlex
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.run_opening import opened
from orchestrator.artifacts.selections import selection_state
from orchestrator.artifacts.shards import shard_state, snapshot_iterations
from orchestrator.artifacts.training_sets import read_method

from .conftest import REPO

pytestmark = pytest.mark.ray

CONFIG = str(REPO / "configs" / "digits.yaml")
# Tiny settings: 3 shards (4 + 4 + 2 classes), a few dozen iterations, fake GPUs (reserved for
# scheduling, computed on: resources.device=cpu says so).
SETS = [
    "condense.iterations=60", "condense.checkpoint_every=20", "condense.ipc=2", "condense.batch_real=16",
    "condense.model=ConvNetW32", "plan.classes_per_shard=4", "resources.gpus_per_shard=0.5", "resources.device=cpu",
    "evaluate.num_models=2", "evaluate.epochs=3", "evaluate.models=[ConvNetW32]",
]
NO_EVAL = ["evaluate.num_models=0"]


def run_cli(*args: str) -> int:
    return main(list(args))


def sets(*extra: str) -> list[str]:
    out = []
    for s in [*SETS, *extra]:
        out += ["--set", s]
    return out


def shard_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "shards").glob("*.parquet"))}


@pytest.fixture(scope="module")
def reference_run(local_ray, tmp_path_factory) -> Path:
    """An uninterrupted run with up to 3 shards in flight, evaluated and reported."""
    run = tmp_path_factory.mktemp("runs") / "reference"
    assert run_cli("run", CONFIG, "--out", str(run), *sets()) == 0
    return run


def test_end_to_end_commits_every_class_with_the_design_schema(reference_run):
    run = opened(str(reference_run))
    assert len(run.shards) == 3
    seen = []
    for spec in run.shards:
        st = shard_state(run, spec)
        assert st.state == "committed", st.detail
        table = pq.read_table(reference_run / st.manifest.files["dm"].path)
        assert table.schema.field("class_id").type == pa.int32()
        assert table.schema.field("class_name").type == pa.string()
        assert table.schema.field("index").type == pa.int32()
        image_type = table.schema.field("image").type
        assert isinstance(image_type, pa.FixedShapeTensorType) and image_type.value_type == pa.float32()
        assert list(image_type.shape) == [1, 8, 8]
        meta = json.loads(table.schema.metadata[b"dmcondense"])
        assert meta["ipc"] == 2 and meta["dataset"] == "digits" and len(meta["mean"]) == 1
        counts = {}
        for c in table.column("class_id").to_pylist():
            counts[c] = counts.get(c, 0) + 1
        assert counts == {c: 2 for c in spec.class_ids}
        assert sorted(table.column("index").to_pylist()) == sorted([0, 1] * len(spec.class_ids))
        seen += list(spec.class_ids)
        for method in ("random", "herding"):  # the baselines stage committed its selections of the shard
            selection = selection_state(run, spec, method)
            assert selection.state == "committed" and selection.manifest.classes == list(spec.class_ids)
    assert sorted(seen) == list(range(10))
    results = pq.read_table(reference_run / "eval" / "results.parquet").to_pylist()
    assert {(r["method"], r["model"]) for r in results} == {
        ("dm", "ConvNetW32"), ("random", "ConvNetW32"), ("herding", "ConvNetW32")}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results) and len(results) == 6
    for name in ("report.md", "grid.png", "loss.png"):
        assert (reference_run / name).stat().st_size > 0
    assert "| dm | ConvNetW32 | paper | 2 |" in (reference_run / "report.md").read_text()
    assert not list(reference_run.glob("checkpoints/*/state.pt"))


def test_same_bytes_with_one_worker_and_any_completion_order(reference_run, tmp_path):
    run = tmp_path / "serial"
    assert run_cli("run", CONFIG, "--out", str(run), *sets("resources.max_concurrent_shards=1", *NO_EVAL)) == 0
    assert shard_bytes(run) == shard_bytes(reference_run)


def test_worker_killed_after_checkpoint_is_retried_from_it(reference_run, tmp_path, monkeypatch):
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00001=kill-after-checkpoint")
    run = tmp_path / "killed"
    assert run_cli("run", CONFIG, "--out", str(run), *sets(*NO_EVAL)) == 0
    assert (run / "faults" / "shard-00001.kill-after-checkpoint").exists()  # the kill did happen
    manifest = json.loads((run / "manifest" / "shard-00001.json").read_text())
    assert manifest["resumed_from"] == 20  # continued from its first checkpoint, made under the same stream
    assert shard_bytes(run) == shard_bytes(reference_run)


def test_exception_retried_then_failed_shard_is_reported(tmp_path, monkeypatch, capsys, local_ray):
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00000=raise-once,shard-00002=raise")
    run = tmp_path / "failing"
    assert run_cli("run", CONFIG, "--out", str(run), *sets(*NO_EVAL, "resources.max_retries=1")) == 1
    out = capsys.readouterr().out
    assert "shard-00002 failed" in out and f"dmcondense resume {run}" in out
    assert (run / "manifest" / "shard-00000.json").exists()  # retried after its one exception
    assert (run / "manifest" / "shard-00001.json").exists()
    failure = json.loads((run / "failed" / "condense" / "shard-00002.json").read_text())
    assert "injected fault in shard-00002" in failure["error"]
    assert run_cli("status", str(run), "--json") == 1
    status = json.loads(capsys.readouterr().out)
    assert [s["state"] for s in status["shards"]] == ["committed", "committed", "failed"]
    monkeypatch.delenv("DMCONDENSE_FAULTS")
    assert run_cli("resume", str(run), "--set", "evaluate.num_models=0") == 0
    resumed = opened(str(run))
    assert shard_state(resumed, resumed.shards[2]).state == "committed"
    assert not (run / "failed" / "condense" / "shard-00002.json").exists()


def test_driver_killed_mid_run_then_resume_recomputes_only_missing(reference_run, tmp_path):
    run = tmp_path / "driver-killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", CONFIG, "--out", str(run),
           *sets("resources.max_concurrent_shards=1", "resources.gpus_per_shard=0", *NO_EVAL)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (run / "manifest" / "shard-00000.json").exists():
            assert proc.poll() is None, "the driver ended before the first commit"
            assert time.time() < deadline, "no shard committed in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    committed = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (run / "shards").glob("*.parquet")}
    assert 1 <= len(committed) < 3, "the kill must land mid-run"
    assert run_cli("resume", str(run)) == 0
    for name, (data, mtime) in committed.items():
        path = run / "shards" / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    assert shard_bytes(run) == shard_bytes(reference_run)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_driver_stops_cleanly_and_resume_finishes_with_the_same_bytes(reference_run, tmp_path, sig,
                                                                                     code):
    run = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", CONFIG, "--out", str(run),
           *sets("resources.max_concurrent_shards=1", "resources.gpus_per_shard=0", *NO_EVAL)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not list((run / "checkpoints").glob("*/state.pt")):  # a shard is mid-way
        assert proc.poll() is None and time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    last = out.strip().splitlines()[-1]
    assert "Traceback" not in out and last.startswith(f"stopped by {signal.Signals(sig).name}"), out
    assert f"finish with: dmcondense resume {run}" in last and "shards:" in last
    assert not (run / "lease.json").exists()  # released
    advised = shlex.split(last.split("finish with: ")[1])
    assert run_cli(*advised[1:]) == 0  # the advice, followed
    assert shard_bytes(run) == shard_bytes(reference_run)


def test_truncated_shard_is_reported_and_recomputed(reference_run, tmp_path, capsys):
    run = tmp_path / "truncated"
    shutil.copytree(reference_run, run)
    victim = run / "shards" / "shard-00001.parquet"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    other_mtime = (run / "shards" / "shard-00000.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli("status", str(run), "--json") == 1
    states = {s["shard"]: s for s in json.loads(capsys.readouterr().out)["shards"]}
    assert states["shard-00001"]["state"] == "corrupt" and "bytes where its manifest has" in states["shard-00001"]["detail"]
    assert states["shard-00000"]["state"] == "committed"
    assert run_cli("resume", str(run), "--set", "evaluate.num_models=0") == 0
    assert shard_bytes(run) == shard_bytes(reference_run)
    assert (run / "shards" / "shard-00000.parquet").stat().st_mtime_ns == other_mtime


def test_resume_with_another_config_names_the_keys(reference_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(reference_run, run)
    capsys.readouterr()
    assert run_cli("resume", str(run), "--set", "condense.ipc=3") == 2
    assert "condense.ipc" in capsys.readouterr().out
    assert run_cli("run", CONFIG, "--out", str(run), *sets("seed=5")) == 2
    assert "differing keys: seed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["condense.ipcc=3"], "condense.ipcc: unknown key; did you mean 'ipc'"),
        (["condense.ipc=0"], "condense.ipc"),
        (["plan.classes=[3,12]"], "plan.classes: [12] are not classes of digits"),
        (["dataset.name=mnist", "dataset.root=/nonexistent/mnist"], "/nonexistent/mnist"),
        (["resources.gpus_per_shard=3"], "no node can host a shard needing 1 CPU and 3 GPU"),
        (["evaluate.models=[ConvNett]"], "did you mean 'ConvNet'"),
    ],
)
def test_bad_configs_fail_before_any_task(extra, message, tmp_path, capsys, local_ray):
    run = tmp_path / "bad"
    assert run_cli("run", CONFIG, "--out", str(run), *sets(*extra)) == 2
    assert message in capsys.readouterr().out
    assert not (run / "shards").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "dry"
    assert run_cli("run", CONFIG, "--out", str(run), "--dry-run", *sets()) == 0
    out = capsys.readouterr().out
    assert "3 shards" in out and "shard-00002" in out and "estimated work" in out
    assert not run.exists()


def test_exports(reference_run, tmp_path):
    import numpy as np
    import torch

    assert run_cli("export", str(reference_run), "--format", "pt", "--to", str(tmp_path / "syn.pt")) == 0
    data = torch.load(tmp_path / "syn.pt", weights_only=False)
    images, labels = data["data"][0]
    assert images.shape == (20, 1, 8, 8) and labels.tolist() == sorted(labels.tolist())
    assert run_cli("export", str(reference_run), "--format", "npz", "--to", str(tmp_path / "syn.npz")) == 0
    assert np.load(tmp_path / "syn.npz")["images"].shape == (20, 1, 8, 8)
    assert run_cli("export", str(reference_run), "--format", "png", "--to", str(tmp_path / "png")) == 0
    assert len(list((tmp_path / "png").glob("*/*.png"))) == 20


def test_evaluate_reruns_the_evaluation_stage_only(reference_run, tmp_path, capsys):
    run = tmp_path / "reeval"
    shutil.copytree(reference_run, run)
    before = shard_bytes(run)
    assert run_cli("evaluate", str(run), "--set", "evaluate.num_models=1", "--set", "evaluate.baselines=[random]") == 0
    rows = pq.read_table(run / "eval" / "results.parquet").to_pylist()
    assert sorted(r["method"] for r in rows) == ["dm", "random"]
    assert shard_bytes(run) == before
    assert run_cli("evaluate", str(run), "--set", "condense.ipc=3") == 2
    assert "differing keys: condense.ipc" in capsys.readouterr().out


def scores(run: Path) -> dict[tuple[str, str, int], dict]:
    return {(r["method"], r["model"], r["seed"]): r for r in pq.read_table(run / "eval" / "results.parquet").to_pylist()}


def test_evaluation_actor_killed_mid_job_is_replaced_and_the_job_rerun(reference_run, tmp_path, monkeypatch):
    monkeypatch.setenv("DMCONDENSE_FAULTS", "eval-dm=kill-once")
    run = tmp_path / "eval-killed"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "eval")
    assert run_cli("evaluate", str(run)) == 0
    assert (run / "faults" / "eval-dm.kill-once").exists()  # an actor did die
    got, want = scores(run), scores(reference_run)
    assert got.keys() == want.keys()  # every network scored once, none lost or doubled
    assert all(got[k]["accuracy"] == want[k]["accuracy"] for k in want)  # same seeds, same scores


def test_failed_evaluation_keeps_its_scores_and_the_next_attempt_trains_only_the_rest(
        reference_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DMCONDENSE_FAULTS", "eval-random=raise")
    run = tmp_path / "eval-failed"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "eval")  # as if it had never been evaluated
    one_actor = ["--set", "evaluate.gpus=false", "--set", "evaluate.num_actors=1"]  # jobs in order: dm first
    assert run_cli("evaluate", str(run), *one_actor) == 3
    out = capsys.readouterr().out
    assert "evaluate: 2 of 6 failed" in out and "injected fault in eval-random" in out  # random's two jobs
    partial = [r for f in (run / "eval" / "scores").rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert partial and not any(r["method"] == "random" for r in partial)
    assert not (run / "eval" / "results.parquet").exists()
    assert run_cli("status", str(run), "--json") == 0  # every shard is committed
    assert json.loads(capsys.readouterr().out)["evaluation"] == {"state": "unfinished", "scored": len(partial),
                                                                 "planned": 6}

    monkeypatch.delenv("DMCONDENSE_FAULTS")
    assert run_cli("evaluate", str(run)) == 0
    assert f"{len(partial)} of 6 networks were scored by an earlier attempt" in capsys.readouterr().out
    assert run_cli("status", str(run), "--json") == 0
    assert json.loads(capsys.readouterr().out)["evaluation"] == {"state": "done", "scored": 6, "planned": 6}
    got, want = scores(run), scores(reference_run)
    assert got.keys() == want.keys()
    assert all(got[k]["accuracy"] == want[k]["accuracy"] for k in want)
    for r in partial:  # reused, not trained again: even the timing is the first attempt's
        assert got[(r["method"], r["model"], r["seed"])]["train_seconds"] == r["train_seconds"]


def test_kept_checkpoints_give_an_iteration_sweep_from_one_run(local_ray, tmp_path, capsys):
    import torch

    one_shard = ["plan.classes_per_shard=10", "condense.checkpoint_every=20"]
    long, short = tmp_path / "long", tmp_path / "short"
    assert run_cli("run", CONFIG, "--out", str(long), *sets(*one_shard, "condense.iterations=40",
                                                            "condense.keep_checkpoints=true")) == 0
    assert run_cli("run", CONFIG, "--out", str(short), *sets(*one_shard, "condense.iterations=20", *NO_EVAL)) == 0
    assert snapshot_iterations(opened(str(long))) == [20]  # the last iteration is the shard itself
    x20, y20 = read_method(opened(str(long)), "dm@20")
    x, y = read_method(opened(str(short)), "dm")
    assert torch.equal(y20, y) and torch.equal(x20, x)  # the images as they were at iteration 20
    before = pq.read_table(long / "eval" / "results.parquet").to_pylist()

    assert run_cli("evaluate", str(long), "--snapshots") == 0
    rows = pq.read_table(long / "eval" / "results.parquet").to_pylist()
    assert [r for r in rows if r["method"] != "dm@20"] == before  # earlier results kept, not recomputed
    assert len([r for r in rows if r["method"] == "dm@20"]) == 2
    assert (long / "sweep.png").stat().st_size > 0 and "Iteration sweep" in (long / "report.md").read_text()

    assert run_cli("evaluate", str(short), "--snapshots") == 2
    assert "keep_checkpoints" in capsys.readouterr().out


def _page_faults_per_training_step() -> float:
    """Minor page faults of a training step of a ConvNet on 64 grey 28x28 images (activations > 32
    MiB): the fewest over three steps, so that a one-off growth of the heap does not count."""
    import resource

    import torch
    import torch.nn.functional as F

    from workers.training.plain import fresh_network

    torch.set_num_threads(1)
    net = fresh_network("ConvNet", channels=1, num_classes=10, im_size=(28, 28), seed=0, device="cpu")
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for _ in range(3):  # the heap settles over the first two steps
        F.cross_entropy(net(x), y).backward()
    steps = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        F.cross_entropy(net(x), y).backward()
        steps.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(steps)


@pytest.mark.parametrize("reuse_memory", [True, False])
def test_workers_reuse_freed_memory_unless_switched_off(local_ray, reuse_memory):
    """resources.reuse_memory's allocator settings reach the shard tasks and evaluation actors and
    stop glibc from handing every activation buffer back to the kernel (a page fault per 4 KiB)."""
    from orchestrator.config import load_config
    from orchestrator.ray_work import actor_options, task_options

    cfg = load_config(None, [f"resources.reuse_memory={reuse_memory}"])
    for options in (task_options(cfg.resources, False), actor_options(cfg.resources, False, gpus=0)):
        env = options.get("runtime_env", {}).get("env_vars", {})
        remote = local_ray.remote(_page_faults_per_training_step).options(num_cpus=1, runtime_env={"env_vars": env})
        faults = local_ray.get(remote.remote())
        # one step's buffers are ~190 MiB: about 49,000 faults when they are mapped afresh
        assert (faults < 1_000) == reuse_memory, faults


def test_evaluate_with_a_new_baseline_selects_it_per_shard_and_trains_only_its_networks(reference_run, tmp_path, capsys):
    run = tmp_path / "k-center"
    shutil.copytree(reference_run, run)
    before = scores(run)
    assert run_cli("evaluate", str(run), "--set", "evaluate.baselines=[k_center]") == 0
    assert "2 of 4 networks were scored by an earlier attempt; training the other 2" in capsys.readouterr().out
    handle = opened(str(run))
    for spec in handle.shards:  # selected per shard and committed like a shard
        selection = selection_state(handle, spec, "k_center")
        assert selection.state == "committed" and selection.manifest.classes == list(spec.class_ids)
    got = scores(run)
    assert {k[0] for k in got} == {"dm", "k_center"}
    for key, row in got.items():
        if key[0] == "dm":  # reused, not trained again
            assert row["train_seconds"] == before[key]["train_seconds"]
    assert handle.config.evaluate.baselines == ["k_center"]  # the record keeps what was asked


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine where CUDA is unusable")
def test_fake_gpus_without_saying_so_fail_before_any_shard_starts(tmp_path, capsys, local_ray):
    run = tmp_path / "fake-gpus"
    assert run_cli("run", CONFIG, "--out", str(run), *sets("resources.device=auto", *NO_EVAL)) == 2
    out = capsys.readouterr().out
    assert "CUDA is unusable on" in out and "resources.gpus_per_shard=0" in out
    assert not (run / "shards").exists() and not (run / "checkpoints").exists()
