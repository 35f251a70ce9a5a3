"""Run integrity without a cluster: one driver per run directory, units that match their run,
every failure a user can cause in one line with its exit code and advice that works."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from orchestrator import storage
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.lease import acquire
from orchestrator.pipeline import new_run
from orchestrator.stages.condense import condense_shard

from .conftest import REPO, moto_s3

DIGITS = str(REPO / "configs" / "digits.yaml")
TINY = ["condense.iterations=4", "condense.checkpoint_every=2", "condense.ipc=1", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=10", "resources.gpus_per_shard=0",
        "evaluate.num_models=0", "evaluate.baselines=[]"]
BUCKET = "dmc-integrity"


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _committed_run(out: str, *extra: str):  # noqa: ANN202 - a RunDir whose one shard is committed, no Ray
    run = new_run(load_config(DIGITS, [*TINY, *extra, f"output={out}"]))
    run.save()
    condense_shard(run, run.shards[0])
    return run


def _one_line(capsys) -> str:  # noqa: ANN001
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    return out


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_driver_refuses_at_once_naming_the_holder(where, tmp_path, capsys):
    import ray

    def check(out: str) -> None:
        with acquire(out, "dmcondense run digits.yaml (the first driver)"):
            started = time.monotonic()
            assert main(["run", DIGITS, *_sets(*TINY), "--out", out]) == 2
            assert time.monotonic() - started < 10  # within seconds, before any Ray starts
        message = _one_line(capsys)
        assert "is in use" in message and "the first driver" in message and "--wait" in message
        assert not ray.is_initialized() and not storage.exists(storage.join(out, "run.json"))

    if where == "local":
        check(str(tmp_path / "run"))
    else:
        with moto_s3(BUCKET) as endpoint:
            check(f"s3://{BUCKET}/{uuid.uuid4().hex}/run?endpoint_override={endpoint}&scheme=http")


def test_shards_of_another_config_are_refused_when_run_json_is_gone(tmp_path, capsys):
    run = _committed_run(str(tmp_path / "run"))
    (tmp_path / "run" / "run.json").unlink()
    # the advice printed for a missing run.json: `dmcondense run CONFIG --out RUN`, here with other iterations
    assert main(["run", DIGITS, *_sets(*TINY, "condense.iterations=6"), "--out", run.uri]) == 2
    message = _one_line(capsys)
    assert "differing keys: condense.iterations" in message and "--out" in message
    assert not (tmp_path / "run" / "run.json").exists()  # nothing written


def test_keys_that_change_no_bytes_may_change_on_resume(tmp_path, capsys):
    run = _committed_run(str(tmp_path / "run"))
    from orchestrator.pipeline import reopened_run

    again = reopened_run(run.uri, ["name=renamed", "condense.checkpoint_every=1", "precision.tf32=false"])
    assert again.config.name == "renamed"  # no refusal: none of these changes a byte on the CPU
    with pytest.raises(Exception, match="differing keys: condense.batch_real"):
        reopened_run(run.uri, ["condense.batch_real=4"])


@pytest.mark.parametrize("damage", ["truncated", "empty object", "not json"])
def test_a_damaged_run_json_is_one_line_and_a_run_over_it_adopts_its_shard(damage, tmp_path, capsys):
    run = _committed_run(str(tmp_path / "run"))
    record = tmp_path / "run" / "run.json"
    text = record.read_text()
    record.write_text({"truncated": text[: len(text) // 2], "empty object": "{}", "not json": "]["}[damage])
    assert main(["status", run.uri]) == 2
    message = _one_line(capsys)
    assert str(record) in message and "dmcondense run CONFIG --out RUN" in message
    # the advice: the same config over the directory adopts the committed shard (dry run: nothing written)
    assert main(["run", DIGITS, *_sets(*TINY), "--out", run.uri, "--dry-run"]) == 0


@pytest.mark.parametrize("where", ["parent is a file", "out is a file"])
def test_an_unwritable_out_is_bad_input_in_one_line(where, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = str(blocker / "run") if where == "parent is a file" else str(blocker)
    assert main(["run", DIGITS, *_sets(*TINY), "--out", out]) == 2
    message = _one_line(capsys)
    assert out in message and "--out" in message


def test_an_address_where_nothing_listens_fails_within_seconds_writing_nothing(tmp_path, capsys):
    started = time.monotonic()
    assert main(["run", DIGITS, *_sets(*TINY), "--out", str(tmp_path / "run"), "--address", "127.0.0.1:1"]) == 2
    assert time.monotonic() - started < 15
    message = _one_line(capsys)
    assert "no Ray cluster answers at 127.0.0.1:1" in message and "--address" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["report"], ["export", "--format", "npz", "--to", "x.npz"]])
def test_a_corrupt_shard_is_named_with_the_command_that_mends_it(command, tmp_path, capsys):
    run = _committed_run(str(tmp_path / "run"))
    shard = tmp_path / "run" / "shards" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    argv = [command[0], run.uri, *command[1:]]
    assert main([a.replace("x.npz", str(tmp_path / "x.npz")) for a in argv]) == 2
    message = _one_line(capsys)
    assert "shard-00000 is corrupt" in message and f"dmcondense resume {run.uri}" in message


def test_worker_env_values_are_never_written_in_clear(tmp_path, capsys, monkeypatch):
    secret = "s3cr3t-" + uuid.uuid4().hex
    run = _committed_run(str(tmp_path / "run"), f"resources.worker_env.AWS_SECRET_ACCESS_KEY={secret}")
    assert main(["report", run.uri]) == 0
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in capsys.readouterr().out
    stored = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["resources"]["worker_env"]
    assert stored["AWS_SECRET_ACCESS_KEY"].startswith("redacted:sha256:")
    from orchestrator.run_dir import RunDir
    from orchestrator.worker_env import runtime_env

    with pytest.raises(Exception, match="export AWS_SECRET_ACCESS_KEY"):
        runtime_env(RunDir.load(run.uri).config.resources)  # what every task and actor is started with
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert runtime_env(RunDir.load(run.uri).config.resources)["env_vars"]["AWS_SECRET_ACCESS_KEY"] == secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another value")
    with pytest.raises(Exception, match="export AWS_SECRET_ACCESS_KEY"):
        runtime_env(RunDir.load(run.uri).config.resources)  # a different value is not taken for it


def test_the_advice_for_a_corrupt_shard_mends_it(cpu_ray, tmp_path, capsys):
    run = _committed_run(str(tmp_path / "run"))
    shard = tmp_path / "run" / "shards" / "shard-00000.parquet"
    good = shard.read_bytes()
    shard.write_bytes(good[:100])
    assert main(["report", run.uri]) == 2
    advised = _one_line(capsys).split("`")[1].split()  # "... `dmcondense resume RUN` computes it first"
    assert advised[:2] == ["dmcondense", "resume"]
    assert main(advised[1:]) == 0  # followed as printed
    assert shard.read_bytes() == good and main(["report", run.uri]) == 0


def test_wait_takes_the_lease_once_the_first_driver_lets_it_go(tmp_path, capsys):
    import threading

    run = _committed_run(str(tmp_path / "run"))
    held = acquire(run.uri, "dmcondense resume (the first driver)")
    threading.Timer(3.0, held.release).start()
    started = time.monotonic()
    assert main(["resume", run.uri, "--wait"]) == 0
    assert time.monotonic() - started >= 3.0
    assert "waiting for" in capsys.readouterr().out


def test_the_report_reads_each_shard_it_draws_once(tmp_path, monkeypatch):
    """grid.png's shards are hashed as they are read, not hashed first and read again."""
    from orchestrator import storage

    run = _committed_run(str(tmp_path / "run"))
    touched: Counter[str] = Counter()
    read, digest = storage.read_bytes, storage.sha256_of
    monkeypatch.setattr(storage, "read_bytes", lambda uri, *a, **k: touched.update([uri]) or read(uri, *a, **k))
    monkeypatch.setattr(storage, "sha256_of", lambda uri: touched.update([uri]) or digest(uri))
    assert main(["report", run.uri]) == 0
    shards = {uri: n for uri, n in touched.items() if "/shards/" in uri and uri.endswith(".parquet")}
    assert shards and set(shards.values()) == {1}, shards


def test_status_checks_lengths_and_verify_hashes_every_byte(tmp_path, capsys):
    """A shard changed in place at its own length passes the length check; --verify finds it."""
    run = _committed_run(str(tmp_path / "run"))
    shard = tmp_path / "run" / "shards" / "shard-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["status", run.uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"][0]["state"] == "committed"
    assert main(["status", run.uri, "--json", "--verify"]) == 1
    row = json.loads(capsys.readouterr().out)["shards"][0]
    assert row["state"] == "corrupt" and "sha256" in row["detail"] and "shard-00000.parquet" in row["detail"]
    shard.write_bytes(bytes(data[:100]))
    assert main(["status", run.uri, "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["shards"][0]
    assert row["state"] == "corrupt" and f"100 bytes where its manifest has {len(data):,}" in row["detail"]


def test_a_set_without_a_loss_curve_has_no_loss_picture_and_the_report_line_says_so(tmp_path, capsys):
    """A set of 0 iterations is its start: no loss curve, so no loss.png (not even an earlier one)."""
    run = _committed_run(str(tmp_path / "run"), "condense.iterations=0")
    (tmp_path / "run" / "loss.png").write_bytes(b"an earlier report's")
    capsys.readouterr()
    assert main(["report", run.uri]) == 0
    assert capsys.readouterr().out.strip().endswith("report.md (grid.png)")
    assert (tmp_path / "run" / "grid.png").exists() and not (tmp_path / "run" / "loss.png").exists()
    assert "loss.png" not in (tmp_path / "run" / "report.md").read_text()
