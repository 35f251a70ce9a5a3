"""The GPU path on a GPU (skipped without one): one DM step, one evaluation step, a shard end to
end on a real GPU through Ray, and resume. `benchmarks/gpu_check.sh` runs them on a GPU machine."""

from __future__ import annotations

import json
import os

import pytest
import torch

from .conftest import REPO
from .test_dm import tiny_set

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def test_one_dm_step_matches_the_per_class_loop_and_never_synchronises():
    from benchmarks.reference_dm import ReferenceDM
    from workers.dm import DMCondenser, DMSettings

    real, info = tiny_set(classes=4, per_class=9)
    settings = DMSettings(ipc=2, iterations=3, batch_real=6, model="ConvNetW32")
    grouped = DMCondenser(real, info, [0, 1, 2, 3], settings, seed=7, device=CUDA)
    per_class = ReferenceDM(real, info, [0, 1, 2, 3], settings, seed=7, device=CUDA)
    assert grouped.settings.sync_free and grouped.settings.embed_chunk == 0  # the CUDA defaults
    grad_g, = torch.autograd.grad(grouped.loss(grouped.draw()), grouped.syn)
    grad_r, = torch.autograd.grad(per_class.loss(per_class.draw()), per_class.syn)
    torch.testing.assert_close(grad_g, grad_r, rtol=1e-3, atol=1e-5)
    grouped.step()  # tables made once
    torch.cuda.set_sync_debug_mode("error")  # any synchronising op raises
    try:
        loss = grouped.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_one_evaluation_step_never_synchronises():
    from workers.training.optimizers import make_sgd
    from workers.training.plain import epoch_batches, fresh_network, train_step
    from workers.training.settings import ModelStreams, TrainSettings

    x, y = torch.randn(64, 1, 8, 8, device=CUDA), torch.arange(4, device=CUDA).repeat(16)
    settings = TrainSettings(epochs=1, batch=32)
    net = fresh_network("ConvNetW32", channels=1, num_classes=4, im_size=(8, 8), seed=0, device=CUDA)
    optimizer, streams = make_sgd(net.parameters(), settings, settings.lr), ModelStreams.for_seed(0, CUDA)
    first, second = epoch_batches(64, 32, streams.order, CUDA)
    train_step(net, optimizer, x, y, first, settings, streams)
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(net, optimizer, x, y, second, settings, streams)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_evaluation_scores_on_the_gpu():
    from workers.data.types import DatasetInfo
    from workers.training.evaluation import Placement, train_and_score
    from workers.training.settings import TrainSettings

    real, _ = tiny_set(classes=4, per_class=10)
    x = real.images.float() / 255
    info = DatasetInfo("tiny", ["0", "1", "2", "3"], 1, (8, 8), (0.0,), (1.0,), (10,) * 4, (10,) * 4)
    accs = train_and_score("ConvNetW32", x, real.labels, real.images, real.labels, info,
                           TrainSettings(epochs=2, batch=16), [1, 2], Placement(CUDA))
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)


@pytest.fixture(scope="module")
def gpu_ray():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


SETS = ["condense.iterations=40", "condense.checkpoint_every=20", "condense.ipc=2", "condense.batch_real=16",
        "condense.model=ConvNetW32", "plan.classes_per_shard=10", "resources.gpus_per_shard=1",
        "precision.deterministic=true", "evaluate.num_models=2", "evaluate.epochs=2", "evaluate.models=[ConvNetW32]",
        "evaluate.baselines=[random]", "evaluate.actors_per_gpu=2"]


def _run(tmp_path, name, *extra):  # noqa: ANN001, ANN202
    from orchestrator.cli import main

    run = tmp_path / name
    args = [a for s in [*SETS, *extra] for a in ("--set", s)]
    return main(["run", str(REPO / "configs" / "digits.yaml"), "--out", str(run), *args]), run


def test_a_shard_end_to_end_and_a_resume_on_the_gpu(gpu_ray, tmp_path, monkeypatch):
    code, whole = _run(tmp_path, "whole")
    assert code == 0
    manifest = json.loads((whole / "manifest" / "shard-00000.json").read_text())
    assert manifest["device"].startswith("cuda")
    results = (whole / "eval" / "results.parquet")
    assert results.stat().st_size > 0
    # deterministic mode: a shard killed after its checkpoint and resumed gives the same bytes
    monkeypatch.setenv("DMCONDENSE_FAULTS", "shard-00000=kill-after-checkpoint")
    code, killed = _run(tmp_path, "killed", "evaluate.num_models=0")
    assert code == 0 and (killed / "faults" / "shard-00000.kill-after-checkpoint").exists()
    assert json.loads((killed / "manifest" / "shard-00000.json").read_text())["resumed_from"] == 20
    assert (killed / "shards" / "shard-00000.parquet").read_bytes() == (whole / "shards" / "shard-00000.parquet").read_bytes()
    os.environ.pop("DMCONDENSE_FAULTS", None)
