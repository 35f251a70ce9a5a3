"""The condense stage: one task per shard of the plan without a valid commit; the task reads its
classes, runs the matching loop with checkpoints (or, for condense.method rded, selects and
stitches its teacher's best real crops class by class, checkpointed per class) and commits the
shard's images.

Failures cost only their shard: Ray runs a task again when its worker dies
(``resources.max_retries``) or when it raised (``resources.retry_exceptions``); a
shard that still fails is recorded in RUN/failed/condense/ while the others finish,
and a re-run (``dmcondense resume``) computes only what is missing, from each
shard's last checkpoint.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch
from rich.console import Console

from orchestrator import faults, storage
from orchestrator.artifacts import shards
from orchestrator.artifacts.pool_networks import pool_states
from orchestrator.artifacts.shards import ShardManifest
from orchestrator.components.settings import dm_settings, precision, rded_settings
from orchestrator.components.teacher import loaded_teacher
from orchestrator.components.worker_setup import run_reader, task_device
from orchestrator.plan import ShardSpec
from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from orchestrator.stage_runner import Needs, Unit, UnitStage, run_units
from workers import rded
from workers.dm import DMCondenser
from workers.matching import PoolStates

STAGE = shards.STAGE


class Context(Protocol):
    """Where the task runs, and where it reports its iterations (orchestrator.ray_work.TaskContext)."""

    node_id: str

    def __call__(self, done: int, final: bool = False) -> None: ...

    def resumed(self, done: int) -> None: ...


def condense(run: RunDir, console: Console) -> None:
    """Compute every shard of the plan that has no valid commit; raises StageFailed naming the
    shards that failed after their retries (the others are committed)."""
    r, iterations = run.config.resources, run.config.condense.iterations
    selecting = run.config.condense.method == "rded"  # progress counts classes, not iterations
    if selecting:
        check_rded_classes(run)
    units = []
    for spec in run.shards:
        st = shards.shard_state(run, spec)
        if st.state == "corrupt":  # the manifest no longer vouches for the files: recompute
            storage.remove(run.manifest(spec))
        weight = len(spec.class_ids) if selecting else iterations
        units.append(Unit(spec.name, (spec,), weight, st.state == "committed", run.failure(STAGE, spec)))
    needs = Needs("a shard", r, run.config.precision.deterministic, run.resolved.condense_memory)
    stage = UnitStage(STAGE, "classes" if selecting else "it", "shards", rded_shard if selecting else condense_shard,
                      shared=(run,), needs=needs, limit=r.max_concurrent_shards, with_context=True)
    run_units(stage, units, console)


def check_rded_classes(run: RunDir) -> None:
    """Before any task starts: RDED keeps one crop per real image, so every class needs
    ipc x stitch^2 training images."""
    c = run.config.condense
    need = c.ipc * c.effective_rded.stitch**2
    short = [k for spec in run.shards for k in spec.class_ids if run.dataset.train_counts[k] < need]
    if short:
        k = short[0]
        raise RunError(f"condense.method rded keeps one crop per real image and needs ipc x stitch^2 = {need} "
                       f"training images per class; class {k} ({run.dataset.class_names[k]}) has "
                       f"{run.dataset.train_counts[k]}{f' ({len(short)} classes short)' if len(short) > 1 else ''}: "
                       "lower condense.ipc or condense.rded.stitch")


# ------------------------------------------------------------------ the task body
def condense_shard(run: RunDir, spec: ShardSpec, context: Context | None = None) -> ShardManifest:
    """Condense one shard and commit it; returns its manifest. Idempotent. Runs inside a Ray
    worker but knows nothing of Ray: it writes straight to the run directory."""
    state = shards.shard_state(run, spec)
    if state.state == "committed":  # a retry after a commit that the driver never heard of
        return state.manifest  # type: ignore[return-value]
    _maybe_fault(run, spec, "start")
    device = task_device(run.config.resources)
    started = time.time()
    real = run_reader(run).read_train(list(spec.class_ids))
    condenser = DMCondenser(real, run.dataset, spec.class_ids, dm_settings(run.config), spec.seed, device,
                            pool=shard_pool(run))
    resumed_from = _restore(run, spec, condenser, device)
    if context is not None and resumed_from:
        context.resumed(resumed_from)

    def on_checkpoint(st: dict) -> None:
        shards.write_checkpoint(run, spec, {**st, **stream_identity(device)})
        _maybe_fault(run, spec, "checkpoint")

    condenser.run(on_progress=(lambda p: context(p.iteration)) if context else None,
                  checkpoint_every=run.config.condense.checkpoint_every, on_checkpoint=on_checkpoint)
    images, labels = condenser.synthetic()
    losses = condenser.losses
    manifest = shards.commit_shard(run, spec, images, labels, dict(
        iterations=condenser.iteration, resumed_from=resumed_from, wall_time_s=round(time.time() - started, 3),
        final_loss=losses[-1][1] if losses else None, loss_curve=_downsample(losses, 200), device=str(device),
        threads=torch.get_num_threads(), compile=condenser.compile_state,
        node_id=context.node_id if context else None))
    shards.clear_work_files(run, spec)
    if context is not None:
        context(manifest.iterations, final=True)
    return manifest


def rded_shard(run: RunDir, spec: ShardSpec, context: Context | None = None) -> ShardManifest:
    """Select and stitch one shard's crops (workers.rded), a checkpoint after each class, and
    commit them; returns the manifest. Idempotent, like ``condense_shard``."""
    state = shards.shard_state(run, spec)
    if state.state == "committed":
        return state.manifest  # type: ignore[return-value]
    _maybe_fault(run, spec, "start")
    device = task_device(run.config.resources)
    started = time.time()
    real = run_reader(run).read_train(list(spec.class_ids))
    teacher = loaded_teacher(run, device)
    done = _restore_classes(run, spec, device)
    if context is not None and done:
        context.resumed(len(done))

    def on_class(results: list[rded.ClassResult]) -> None:
        if run.config.condense.checkpoint_every > 0:
            shards.write_checkpoint(run, spec, {"iteration": len(results), "classes": [vars(r) for r in results],
                                                **stream_identity(device)})
            _maybe_fault(run, spec, "checkpoint")
        if context is not None:
            context(len(results))

    with precision(run.config).numerics(device):
        results = rded.condense_classes(real, run.dataset, spec.class_ids, teacher, rded_settings(run.config),
                                        spec.seed, device, done=done, on_class=on_class)
    images, labels = rded.stored_set(results)
    manifest = shards.commit_shard(run, spec, images, labels, dict(
        iterations=0, resumed_from=len(done), wall_time_s=round(time.time() - started, 3),
        final_loss=float(torch.cat([r.losses for r in results]).mean()), loss_curve=[], device=str(device),
        threads=torch.get_num_threads(), node_id=context.node_id if context else None))
    shards.clear_work_files(run, spec)
    if context is not None:
        context(len(results), final=True)
    return manifest


def _restore_classes(run: RunDir, spec: ShardSpec, device: torch.device) -> list[rded.ClassResult]:
    """The classes an earlier attempt finished (its checkpoint), when made under this stream."""
    state = shards.read_checkpoint(run, spec)
    if state is None:
        return []
    made = {k: state.get(k) for k in ("device_type", "threads")}
    if made != stream_identity(device) or "classes" not in state:
        print(f"{spec.name}: its checkpoint after {state.get('iteration')} classes was made with {made}, this "
              f"attempt runs with {stream_identity(device)}: starting over, so that the images come from one stream")
        return []
    return [rded.ClassResult(**r) for r in state["classes"]]


def shard_pool(run: RunDir) -> PoolStates | None:
    """The pool states a shard draws its networks from (none for random networks or pixels)."""
    c = run.config.condense
    if c.networks not in ("pool", "blend"):
        return None
    return pool_states(run.resolved.pool_dir, c.pool_group if c.networks == "pool" else None)


def stream_identity(device: torch.device) -> dict:
    """What picks a shard's random stream and rounding besides its seed: a checkpoint made
    under other values is never continued (the images would mix two streams)."""
    return {"device_type": device.type, "threads": torch.get_num_threads()}


def _restore(run: RunDir, spec: ShardSpec, condenser: DMCondenser, device: torch.device) -> int:
    state = shards.read_checkpoint(run, spec)
    if state is None:
        return 0
    made = {k: state.get(k) for k in ("device_type", "threads")}
    if made != stream_identity(device):
        print(f"{spec.name}: its checkpoint at iteration {state['iteration']} was made with {made}, this attempt "
              f"runs with {stream_identity(device)}: starting over, so that the images come from one stream")
        return 0
    condenser.load_state_dict(state)
    return condenser.iteration


def _downsample(losses: list[tuple[int, float]], points: int) -> list[list[float]]:
    if len(losses) <= points:
        return [[i, v] for i, v in losses]
    step = len(losses) / points
    return [[losses[int(k * step)][0], losses[int(k * step)][1]] for k in range(points)] + [list(losses[-1])]


def _maybe_fault(run: RunDir, spec: ShardSpec, stage: str) -> None:
    """Injected shard faults (orchestrator.faults): kill-after-checkpoint SIGKILLs the worker after
    its first checkpoint (once per run); raise / raise-once raise at the start (always / once)."""
    fault = faults.fault_for(spec.name)
    if fault is None:
        return
    if stage == "start" and fault == "raise":
        raise RuntimeError(f"injected fault in {spec.name}")
    if stage == "start" and fault == "raise-once" and faults.first_time(run, spec.name, fault):
        raise RuntimeError(f"injected fault in {spec.name} (first attempt)")
    if stage == "checkpoint" and fault == "kill-after-checkpoint" and faults.first_time(run, spec.name, fault):
        faults.kill_this_process()
