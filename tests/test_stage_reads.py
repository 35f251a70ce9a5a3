"""A whole run reads a raw folder dataset once per need: the driver learns its statistics and
counts once, each shard task decodes its own classes, the test split is decoded once for every
evaluation actor; no task or actor opens the whole source again."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main

from .conftest import REPO
from . import decode_counter
from .decode_counter import DECODE_LOG_ENV, install, read

pytestmark = pytest.mark.ray

CLASSES, TRAIN, TEST = 4, 5, 3


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN), ("test", TEST)):
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(root / split / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def counted_run(tmp_path_factory):
    import ray

    tmp = tmp_path_factory.mktemp("reads")
    log = tmp / "decodes.jsonl"
    os.environ[DECODE_LOG_ENV] = str(log)
    ray.cloudpickle.register_pickle_by_value(decode_counter)  # workers cannot import tests/
    ray.init(address="local", num_cpus=3, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": install, "env_vars": {DECODE_LOG_ENV: str(log)}})
    undo = install()  # the driver's own reads count too
    sets = ["dataset.name=imagefolder", f"dataset.root={_folder(tmp / 'data')}", "dataset.resolution=8",
            "condense.ipc=1", "condense.iterations=2", "condense.checkpoint_every=0", "condense.batch_real=4",
            "condense.model=ConvNetW32", "plan.classes_per_shard=2", "resources.gpus_per_shard=0",
            "evaluate.models=[ConvNetW32]", "evaluate.num_models=2", "evaluate.epochs=1", "evaluate.gpus=false",
            "evaluate.num_actors=2", "evaluate.baselines=[random,herding]"]
    try:
        code = main(["run", str(REPO / "configs" / "digits.yaml"), "--out", str(tmp / "run"),
                     *[a for s in sets for a in ("--set", s)]])
    finally:
        undo()
        ray.shutdown()
        del os.environ[DECODE_LOG_ENV]
    assert code == 0
    return read(str(log))


def test_the_whole_source_is_checked_once_in_the_driver(counted_run):
    checks = [e for e in counted_run if e["kind"] == "check"]
    assert [e["pid"] for e in checks] == [os.getpid()]


def test_each_train_class_is_decoded_for_the_statistics_once_then_once_per_stage(counted_run):
    per_class = Counter()
    in_driver = Counter()
    for e in counted_run:
        if e["kind"] == "decode" and "/train/" in e["items"][0]:
            cls = Path(e["items"][0]).parent.name
            per_class[cls] += 1
            in_driver[cls] += e["pid"] == os.getpid()
    # the driver's statistics pass, the condense task and the baselines task of its shard: no task
    # learns the statistics again
    assert per_class == {f"c{c}": 3 for c in range(CLASSES)}
    assert in_driver == {f"c{c}": 1 for c in range(CLASSES)}


def test_the_test_split_is_decoded_once_for_every_actor(counted_run):
    test = [e for e in counted_run if e["kind"] == "decode" and "/test/" in e["items"][0]]
    assert len(test) == 1 and test[0]["pid"] != os.getpid() and len(test[0]["items"]) == CLASSES * TEST
