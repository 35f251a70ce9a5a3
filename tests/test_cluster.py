"""A two-node cluster on loopback: shards spread over both nodes; GPU requests fail fast."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main

from .conftest import REPO

pytestmark = pytest.mark.ray

CONFIG = str(REPO / "configs" / "digits.yaml")
SETS = ["condense.iterations=30", "condense.checkpoint_every=0", "condense.ipc=1", "condense.batch_real=8",
        "condense.model=ConvNetW32", "plan.classes_per_shard=3", "resources.gpus_per_shard=0",
        "evaluate.num_models=0", "evaluate.baselines=[]"]


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _sets(*extra: str) -> list[str]:
    return [arg for s in [*SETS, *extra] for arg in ("--set", s)]


def test_shards_spread_over_both_nodes(two_nodes, tmp_path):
    import ray

    run = tmp_path / "spread"
    assert main(["run", CONFIG, "--out", str(run), *_sets()]) == 0
    manifests = [json.loads(p.read_text()) for p in sorted((run / "manifest").glob("*.json"))]
    assert len(manifests) == 4  # 3 + 3 + 3 + 1 classes
    node_ids = {m["node_id"] for m in manifests}
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert node_ids <= alive and len(node_ids) == 2


def test_gpus_on_a_gpu_less_cluster_fail_at_once(two_nodes, tmp_path, capsys):
    run = tmp_path / "gpu"
    assert main(["run", CONFIG, "--out", str(run), *_sets("resources.gpus_per_shard=1")]) == 2
    out = capsys.readouterr().out
    assert "the Ray cluster has no GPUs" in out and "resources.gpus_per_shard=0" in out
    assert not (run / "shards").exists()


def test_a_recipe_makes_its_pool_and_spreads_over_both_nodes_as_dm_does(two_nodes, tmp_path):
    import ray

    run = tmp_path / "dance"
    pool = ["pool.networks=2", "pool.epochs=1", "pool.states_every=2", "pool.model=ConvNetW32",
            f"pool.uri={tmp_path / 'pools'}"]
    assert main(["run", CONFIG, "--out", str(run), "--make-pool", *_sets(*pool, "condense.recipe=dance")]) == 0
    assert list((tmp_path / "pools").glob("*/pool.json"))  # the pool was trained on the cluster first
    manifests = [json.loads(p.read_text()) for p in sorted((run / "manifest").glob("*.json"))]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(manifests) == 4 and len({m["node_id"] for m in manifests} & alive) == 2
    assert "1 images per class stored and 4 trained on (factor 2)" in (run / "report.md").read_text()

