"""The commit and resume protocol on S3 (a moto server on loopback), against a local-path run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from orchestrator import storage
from orchestrator.cli import main
from orchestrator.run_opening import opened
from orchestrator.artifacts.selections import selection_state
from orchestrator.artifacts.shards import shard_state

from .conftest import REPO, moto_s3, start_local_ray

pytestmark = pytest.mark.ray

CONFIG = str(REPO / "configs" / "digits.yaml")
# 3 shards (4 + 4 + 2 classes), a checkpoint at 20, the random baseline as a second file per shard.
SETS = ["condense.iterations=40", "condense.checkpoint_every=20", "condense.ipc=2", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=4", "resources.gpus_per_shard=0",
        "evaluate.num_models=0", "evaluate.baselines=[random]"]
BUCKET = "dmc-runs"


def _sets() -> list[str]:
    return [arg for s in SETS for arg in ("--set", s)]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server; AWS_* set before Ray starts so workers inherit them."""
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def ray_with_s3(s3_endpoint):
    import ray

    start_local_ray(num_cpus=3)
    yield s3_endpoint
    ray.shutdown()


@pytest.fixture(scope="module")
def local_reference(ray_with_s3, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "local"
    assert main(["run", CONFIG, "--out", str(run), *_sets()]) == 0
    return run


def _keys(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def _status(run: str, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["status", run, "--json"])
    return code, [s["state"] for s in json.loads(capsys.readouterr().out)["shards"]]


def test_s3_run_survives_a_kill_and_a_failure_then_resumes_to_local_bytes(
        local_reference, ray_with_s3, monkeypatch, capsys):
    run = f"s3://{BUCKET}/runs/digits?endpoint_override={ray_with_s3}&scheme=http"
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00001=kill-after-checkpoint,shard-00002=raise")
    assert main(["run", CONFIG, "--out", run, *_sets()]) == 1
    assert _status(run, capsys) == (1, ["committed", "committed", "failed"])
    keys = _keys(run)
    assert "faults/shard-00001.kill-after-checkpoint" in keys  # the worker was killed after its checkpoint...
    assert storage.read_json(storage.join(run, "manifest", "shard-00001.json"))["resumed_from"] == 20  # ...and restored

    monkeypatch.delenv("DMCONDENSE_FAULTS")
    assert main(["resume", run]) == 0
    assert _status(run, capsys) == (0, ["committed"] * 3)
    keys = _keys(run)
    assert not [k for k in keys if k.startswith(("checkpoints/", "failed/")) or f"/{storage.TMP_PREFIX}" in f"/{k}"]
    handle = opened(run)
    for spec in handle.shards:
        entries = [*shard_state(handle, spec).manifest.files.values(),
                   *selection_state(handle, spec, "random").manifest.files.values()]
        assert len(entries) == 2  # the shard's images and its random selection
        for entry in entries:
            local = (local_reference / entry.path).read_bytes()
            assert storage.read_bytes(storage.join(run, entry.path)) == local, entry.path

    # the evaluation stage on S3: a failed attempt keeps its scores there, the next one finishes
    ev = [arg for s in ("evaluate.num_models=2", "evaluate.epochs=2", "evaluate.models=[ConvNetW32]",
                        "evaluate.gpus=false", "evaluate.num_actors=1") for arg in ("--set", s)]
    monkeypatch.setenv("DMCONDENSE_FAULTS", "eval-random=raise")
    assert main(["evaluate", run, *ev]) == 3
    partial = [k for k in _keys(run) if k.startswith("eval/scores/")]
    assert partial  # dm's two networks, scored before random's job failed
    capsys.readouterr()
    assert main(["status", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluation"] == {"state": "unfinished", "scored": 2, "planned": 4}
    monkeypatch.delenv("DMCONDENSE_FAULTS")
    assert main(["evaluate", run, *ev]) == 0
    keys = _keys(run)
    assert "eval/results.parquet" in keys and set(partial) < {k for k in keys if k.startswith("eval/scores/")}
    rows = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(run, "eval", "results.parquet")))).to_pylist()
    assert sorted(r["method"] for r in rows) == ["dm", "dm", "random", "random"]
