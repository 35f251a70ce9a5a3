"""The pool stage: N networks trained on the real training set as Ray tasks, each from its own
seed, keeping its states at fixed steps with their validation accuracy and counting every
training example's forgetting events. Each network is committed like a shard
(``orchestrator.artifacts.pool_networks``), so a stopped pool trains only the networks it lacks.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console

from orchestrator import faults
from orchestrator.artifacts.pool_networks import (
    NetworkManifest, commit_network, network_seed, network_state,
    read_epoch_checkpoint, write_epoch_checkpoint,
)
from orchestrator.components.pictures import draw_pool
from orchestrator.components.settings import train_settings
from orchestrator.components.worker_setup import open_reader, task_device
from orchestrator.config import ResourcesConfig, RunConfig
from orchestrator.pool_dir import PoolDir, network_name
from orchestrator.stage_runner import Needs, Unit, UnitStage, run_units
from workers.data import normalize
from workers.pool_training import (
    Schedule, final_state_accuracy, train_pool_network, train_size, validation_split,
)
from workers.training.settings import TrainSettings

STAGE = "pool"


def make_pool(pool: PoolDir, cfg: RunConfig, console: Console) -> None:
    """Train every network of the pool that has no valid commit, with ``cfg``'s resources and
    precision; raises StageFailed naming the networks that failed (the others are committed)."""
    pool.save()
    steps = total_steps(pool)
    units = [Unit(network_name(i), (i,), steps, network_state(pool, i).state == "committed", pool.failure(i))
             for i in range(pool.networks)]
    stage = UnitStage(STAGE, "steps", "networks", train_network, shared=(pool, cfg.resources, train_settings(cfg, "pool")),
                      needs=Needs("a pool network", cfg.resources, cfg.precision.deterministic), with_context=True)
    run_units(stage, units, console)
    draw_pool(pool)


def total_steps(pool: PoolDir) -> int:
    s, counts = pool.record.settings, pool.record.info.train_counts
    return s.epochs * -(-train_size(counts, s.validation_fraction) // s.batch)


def train_network(pool: PoolDir, resources: ResourcesConfig, settings: TrainSettings, index: int,
                  context=None) -> NetworkManifest:  # noqa: ANN001 - orchestrator.ray_work.TaskContext
    """The task body: train network ``index`` and commit its states and forgetting counts."""
    st = network_state(pool, index)
    if st.state == "committed":  # a retry after a commit the driver never heard of
        return st.manifest  # type: ignore[return-value]
    _maybe_fault(pool, index)
    started = time.time()
    device = task_device(resources)
    rec, s = pool.record, pool.record.settings
    real = open_reader(rec.dataset, rec.info).read_train(range(rec.info.num_classes))
    train_rows, val_rows = validation_split(real.labels.tolist(), s.validation_fraction, s.seed)
    x = normalize(real.images, rec.info.mean, rec.info.std, device=device)
    y = real.labels.to(device)
    train, val = torch.tensor(train_rows, device=device), torch.tensor(val_rows, device=device)
    resume = read_epoch_checkpoint(pool, index, device)
    if context is not None and resume is not None:
        context.resumed(resume.step)
    trained = train_pool_network(
        s.model, x[train], y[train], x[val], y[val], channels=rec.info.channels, num_classes=rec.info.num_classes,
        im_size=tuple(rec.info.im_size), settings=settings, schedule=Schedule(s.states_every, s.early_states),
        seed=network_seed(pool, index), device=device, on_step=(lambda step, total: context(step)) if context else None,
        resume=resume, on_epoch=lambda ck: write_epoch_checkpoint(pool, index, ck, device),
    )
    test = open_reader(rec.dataset, rec.info).read_test()
    test_accuracy = final_state_accuracy(
        s.model, trained, normalize(test.images, rec.info.mean, rec.info.std, device=device), test.labels.to(device),
        channels=rec.info.channels, num_classes=rec.info.num_classes, im_size=tuple(rec.info.im_size),
        settings=settings, device=device)
    manifest = commit_network(pool, index, trained, real.labels.numpy(), train_rows, started, device, test_accuracy)
    if context is not None:
        context(total_steps(pool), final=True)
    return manifest


def _maybe_fault(pool: PoolDir, index: int) -> None:
    """Injected pool faults (orchestrator.faults): net-NNNNN=kill-once SIGKILLs the worker at the
    network's first start; =raise raises every time."""
    target = network_name(index)
    fault = faults.fault_for(target)
    if fault == "raise":
        raise RuntimeError(f"injected fault in {target}")
    if fault == "kill-once" and faults.first_time(pool, target, fault):
        faults.kill_this_process()
