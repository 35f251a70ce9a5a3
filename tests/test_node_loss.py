"""Node loss at scale, on loopback: a three-node cluster loses a whole worker node mid-condense and
another mid-evaluation; their shards and networks run again elsewhere, every class is committed
once, and the bytes and scores equal those of an undisturbed run."""

from __future__ import annotations

import json
import threading
import time

import pytest

from orchestrator.cli import main


from .test_cluster import CONFIG, _sets

pytestmark = pytest.mark.ray


def _remove_a_node_when(cluster, node, ready) -> threading.Thread:  # noqa: ANN001
    """In the background: once ``ready()``, the whole worker node goes (its raylet and workers);
    the thread's ``removed_at`` is when."""
    def watch() -> None:
        deadline = time.time() + 300
        while not ready() and time.time() < deadline:
            time.sleep(0.05)
        cluster.remove_node(node, allow_graceful=False)
        thread.removed_at = time.monotonic()

    thread = threading.Thread(target=watch, daemon=True)
    thread.removed_at = None
    thread.start()
    return thread


def test_losing_a_node_mid_condense_and_mid_evaluation_changes_no_byte(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.artifacts.scores import read_results
    from orchestrator.run_dir import RunDir

    sets = _sets("condense.checkpoint_every=10", "evaluate.num_models=4", "evaluate.epochs=30",
                 "evaluate.models=[ConvNetW32]", "evaluate.num_actors=3", "resources.max_retries=3")
    reference = tmp_path / "undisturbed"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        condensing, evaluating = (cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2))
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        run = tmp_path / "node-lost"
        losses = [_remove_a_node_when(cluster, condensing, lambda: any((run / "checkpoints").glob("*/state.pt"))),
                  _remove_a_node_when(cluster, evaluating, lambda: any((run / "eval").rglob("*.parquet")))]
        assert main(["run", CONFIG, "--out", str(run), *sets]) == 0
        ended = time.monotonic()
        assert all(t.removed_at is not None and t.removed_at < ended for t in losses)  # both nodes went, mid-way
        assert main(["run", CONFIG, "--out", str(reference), *sets]) == 0  # on the head alone
    finally:
        ray.shutdown()
        cluster.shutdown()
    manifests = [json.loads(p.read_text()) for p in sorted((run / "manifest").glob("*.json"))]
    assert sorted(c for m in manifests for c in m["classes"]) == list(range(10))  # every class committed once
    for shard in sorted((reference / "shards").glob("*.parquet")):
        assert (run / "shards" / shard.name).read_bytes() == shard.read_bytes()
    scored = {(s.method, s.seed): s.accuracy for s in read_results(RunDir.load(str(run)))}
    assert scored == {(s.method, s.seed): s.accuracy for s in read_results(RunDir.load(str(reference)))}
