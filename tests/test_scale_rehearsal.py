"""The scale rehearsals in small: 3 nodes, 40 classes, a worker killed at every commit point; and the whole
pipeline on 150 classes (more than the report's grid shows) through a node loss."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from benchmarks import many_class_rehearsal as many_classes
from benchmarks import scale_rehearsal as rehearsal
from orchestrator import commits, storage
from orchestrator.report import grid_images
from orchestrator.run_dir import RunDir
from orchestrator.run_opening import opened
from orchestrator.run_status import run_status

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
    # at most the node's 2 running shards finish their write as its raylet goes; none starts there after
    assert lost["after_commits"] >= 6 and 0 <= lost["committed_after_removal"] <= 2
    assert lost["shards_committed_by_the_lost_node"] <= lost["after_commits"] + lost["committed_after_removal"]
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
            rehearsal.check_exactly_once(opened(str(run)), _kills(run))
    finally:
        extra.unlink()


def test_the_check_catches_a_lost_shard(rehearsed):
    run, _ = rehearsed
    manifest = run / "manifest" / "shard-00007.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    try:
        with pytest.raises(rehearsal.RehearsalError, match="shard-00007 is pending"):
            rehearsal.check_exactly_once(opened(str(run)), _kills(run))
    finally:
        manifest.write_bytes(saved)
    assert rehearsal.check_exactly_once(opened(str(run)), _kills(run))["exactly_once"]


# ------------------------------------------------ the whole pipeline with more classes than the grid shows
MANY = ["--classes", "150", "--classes-per-shard", "15", "--nodes", "2", "--gpus-per-node", "2", "--epochs", "1"]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    out = tmp_path_factory.mktemp("many")
    return out, many_classes.rehearse(many_classes.parse_args([*MANY, "--out", str(out)]))


def test_many_classes_run_end_to_end_through_a_node_loss(many):
    out, figures = many
    assert figures["shards"] == 10 and figures["node_lost"]["after_commits"] >= 5
    assert len(figures["accuracy"]) == 1  # one network with a 150-way head, scored
    assert figures["status"]["exit"] == 0 and "10 committed" in figures["status"]["output_tail"]
    exported = np.load(out / "set.npz")
    assert sorted(exported["labels"].tolist()) == list(range(150))
    # the driver's memory is a benchmark figure (docs/benchmarks.md), measured in a process of its
    # own: here the driver is the test session, whose peak holds whatever earlier tests loaded
    assert figures["driver_peak_rss_mb"] > 0


def test_many_classes_report_a_grid_sample_with_its_index(many):
    out, _ = many
    text = (out / "run" / "report.md").read_text()
    assert "grid.png shows 100 of 150 classes" in text
    indexed = [line.split(" | ")[1] for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert indexed[0] == "0" and indexed[-1] == "149" and len(indexed) == 100
    assert Image.open(out / "run" / "grid.png").size[1] == 100 * (32 + 2) + 2  # 8x8 enlarged to 32, padded


def test_status_reads_a_bounded_number_of_files_per_shard(many):
    """status opens each shard's manifest and file, never a file per class: its reads grow with the shards."""
    out, figures = many
    run = opened(str(out / "run"))
    with mock.patch.object(storage, "exists", wraps=storage.exists) as exists, \
            mock.patch.object(storage, "read_bytes", wraps=storage.read_bytes) as read, \
            mock.patch.object(storage, "size", wraps=storage.size) as stat, \
            mock.patch.object(storage, "sha256_of", wraps=storage.sha256_of) as hashed:  # read_json reads bytes
        status = run_status(run)
    assert status.shard_summary() == "10 committed" and hashed.call_count == 0  # lengths, not hashes
    calls = exists.call_count + read.call_count + stat.call_count  # 4 per shard: 2 exists, manifest, its length
    assert calls <= 5 * figures["shards"] + 20 < figures["classes"], calls


def test_the_grid_reads_only_the_shards_of_its_classes(many):
    out, _ = many
    run = opened(str(out / "run"))
    with mock.patch.object(commits, "read_checked", wraps=commits.read_checked) as read:
        _, labels = grid_images(run, [0, 149])
    assert read.call_count == 2  # the first and last of 10 shards
    assert sorted(set(labels.tolist())) == [*range(15), *range(135, 150)]
