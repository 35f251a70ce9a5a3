"""The scale rehearsal in small: 2 nodes, 4 fake GPUs, 40 classes, a worker killed at every commit point."""

from __future__ import annotations

import json

import pytest

from benchmarks import scale_rehearsal as rehearsal
from orchestrator.run_dir import RunDir

pytestmark = pytest.mark.ray

ARGS = ["--nodes", "3", "--gpus-per-node", "2", "--classes", "40", "--classes-per-shard", "2",
        "--kill-fraction", "0.15", "--task-seconds", "0.3", "--lose-node-at", "0.3"]


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    run = tmp_path_factory.mktemp("rehearsal") / "run"
    return run, rehearsal.rehearse(rehearsal.parse_args([*ARGS, "--out", str(run)]))


def test_killed_shards_are_retried_and_every_class_is_committed_once(rehearsed):
    run, figures = rehearsed
    assert (figures["shards"], figures["committed"], figures["failed"]) == (20, 20, 0)
    assert figures["kills_injected"] == 3 and figures["killed_shards_retried"] == 3  # ceil(15% of 20)
    assert set(figures["kills_by_point"]) == set(rehearsal.KILL_STAGES)
    manifests = [json.loads(p.read_text()) for p in (run / "manifest").glob("*.json")]
    assert sorted(c for m in manifests for c in m["classes"]) == list(range(40))
    assert sum(figures["shards_per_node"]) == 20 and len(figures["shards_per_node"]) >= 2  # work spread
    lost = figures["node_lost"]  # a whole node went after 6 commits; its shards were computed elsewhere
    assert lost["after_commits"] >= 6 and lost["shards_committed_by_the_lost_node"] <= lost["after_commits"]
    assert figures["driver_cpu_ms_per_shard"] > 0 and figures["object_store"]["capacity_bytes"] > 0


def _kills(run) -> dict[str, str]:
    ids = [s.shard_id for s in RunDir.load(str(run)).shards]
    return rehearsal.plan_kills(ids, 0.15, 0)


def test_the_check_catches_a_double_commit(rehearsed):
    run, _ = rehearsed
    extra = run / "commits" / "shard-00004" / "second"
    extra.write_bytes(b"")
    try:
        with pytest.raises(rehearsal.RehearsalError, match="shard-00004 was committed 2 times"):
            rehearsal.check_exactly_once(RunDir.load(str(run)), _kills(run))
    finally:
        extra.unlink()


def test_the_check_catches_a_lost_shard(rehearsed):
    run, _ = rehearsed
    manifest = run / "manifest" / "shard-00007.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    try:
        with pytest.raises(rehearsal.RehearsalError, match="shard-00007 is pending"):
            rehearsal.check_exactly_once(RunDir.load(str(run)), _kills(run))
    finally:
        manifest.write_bytes(saved)
    assert rehearsal.check_exactly_once(RunDir.load(str(run)), _kills(run))["exactly_once"]
