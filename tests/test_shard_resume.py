"""A checkpoint continues only under the stream that made it (device type, threads): a shard
whose checkpoint came from another device starts over instead of mixing two streams."""

from __future__ import annotations

import io

import pytest
import torch

from orchestrator import storage
from orchestrator.config import load_config
from orchestrator.pipeline import new_run
from orchestrator.components.settings import dm_settings
from orchestrator.stages.condense import condense_shard, stream_identity
from workers.dm import DMCondenser

from .conftest import REPO, ReportedProgress

SETS = ["condense.iterations=6", "condense.checkpoint_every=3", "condense.ipc=1", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=5", "resources.gpus_per_shard=0"]


def _run(tmp_path, name):  # noqa: ANN001, ANN202
    run = new_run(load_config(REPO / "configs" / "digits.yaml", [*SETS, f"output={tmp_path / name}"]))
    run.save()
    return run


def _checkpoint_at_3(run, identity: dict) -> None:  # noqa: ANN001
    spec = run.shards[0]
    from orchestrator.components.worker_setup import run_reader

    condenser = DMCondenser(run_reader(run).read_train(list(spec.class_ids)), run.dataset, spec.class_ids,
                            dm_settings(run.config), spec.seed)
    condenser.run(until=3)
    buf = io.BytesIO()
    torch.save({**condenser.state_dict(), **identity}, buf)
    storage.write_bytes_atomic(run.checkpoint(spec), buf.getvalue())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    run = _run(tmp_path_factory.mktemp("r"), "whole")
    condense_shard(run, run.shards[0])
    return storage.read_bytes(run.shard_file(run.shards[0]))


@pytest.mark.parametrize("made_on, resumed_from", [("same", 3), ("cuda", 0), ("threads", 0)])
def test_a_checkpoint_is_continued_only_under_its_own_stream(tmp_path, uninterrupted, made_on, resumed_from):
    torch.set_num_threads(1)  # what a shard task with resources.cpus_per_shard=1 runs with
    run = _run(tmp_path, made_on)
    identity = stream_identity(torch.device("cpu"))
    if made_on == "cuda":
        identity["device_type"] = "cuda"
    elif made_on == "threads":
        identity["threads"] += 1
    _checkpoint_at_3(run, identity)
    context = ReportedProgress()
    manifest = condense_shard(run, run.shards[0], context)
    assert manifest.resumed_from == resumed_from
    assert context.resumed_at == ([resumed_from] if resumed_from else [])  # kept out of the stage's pace
    assert storage.read_bytes(run.shard_file(run.shards[0])) == uninterrupted  # never two streams mixed
