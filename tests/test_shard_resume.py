"""A checkpoint continues only under the stream that made it (device type, threads): a shard
whose checkpoint came from another device starts over instead of mixing two streams."""

from __future__ import annotations

import pytest
import torch

from orchestrator import storage
from orchestrator.stages.condense import condense_shard, stream_identity

from .conftest import ReportedProgress, checkpoint_first_shard, digits_run

SETS = ["condense.iterations=6", "condense.checkpoint_every=3", "condense.ipc=1", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=5", "resources.gpus_per_shard=0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    run = digits_run(tmp_path_factory.mktemp("r") / "whole", SETS)
    condense_shard(run, run.shards[0])
    return storage.read_bytes(run.shard_file(run.shards[0]))


@pytest.mark.parametrize("made_on, resumed_from", [("same", 3), ("cuda", 0), ("threads", 0)])
def test_a_checkpoint_is_continued_only_under_its_own_stream(tmp_path, uninterrupted, made_on, resumed_from):
    torch.set_num_threads(1)  # what a shard task with resources.cpus_per_shard=1 runs with
    run = digits_run(tmp_path / made_on, SETS)
    identity = stream_identity(torch.device("cpu"))
    if made_on == "cuda":
        identity["device_type"] = "cuda"
    elif made_on == "threads":
        identity["threads"] += 1
    checkpoint_first_shard(run, 3, identity)
    context = ReportedProgress()
    manifest = condense_shard(run, run.shards[0], context)
    assert manifest.resumed_from == resumed_from
    assert context.resumed_at == ([resumed_from] if resumed_from else [])  # kept out of the stage's pace
    assert storage.read_bytes(run.shard_file(run.shards[0])) == uninterrupted  # never two streams mixed
