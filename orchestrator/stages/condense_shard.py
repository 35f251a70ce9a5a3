"""The body of one shard's task: read its classes, run DM with checkpoints, commit.

Runs inside a Ray worker but knows nothing of Ray: it takes the run handle and its
shard, writes straight to the run directory, and returns only the manifest.
"""

from __future__ import annotations

import io
import os
import socket
import time
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict

from orchestrator import commits, faults, storage
from orchestrator.commits import FileEntry
from orchestrator.config import RunConfig
from orchestrator.plan import ShardSpec
from orchestrator.pool_dir import PoolDir
from orchestrator.run_dir import RunDir
from orchestrator.stages.pool import pool_states
from orchestrator.stages.worker_setup import run_reader, task_device
from workers.data.tensor_table import tensor_table, to_parquet_bytes
from workers.devices import Precision
from workers.dm import DMCondenser, DMSettings
from workers.matching import PoolStates


class Context(Protocol):
    """Where the task runs, and where it reports its iterations (orchestrator.ray_work.TaskContext)."""

    node_id: str

    def __call__(self, done: int, final: bool = False) -> None: ...


class ShardManifest(BaseModel):
    """The commit record of a shard's synthetic images."""

    model_config = ConfigDict(extra="ignore")  # 0.1 manifests also named the baselines' files

    format: int = 2
    shard_id: int
    classes: list[int]
    seed: int
    rows: int
    sha256: str
    files: dict[str, FileEntry]
    iterations: int
    resumed_from: int
    wall_time_s: float
    final_loss: float | None
    loss_curve: list[list[float]]
    device: str
    threads: int | None = None
    compile: str = "off"  # on | on, CUDA graphs | off | off: <why the worker could not compile>
    host: str
    node_id: str | None = None


def dm_settings(cfg: RunConfig) -> DMSettings:
    c, p = cfg.condense, cfg.precision
    pixels = c.method == "mmd_pixel"  # no network, no augmentation: MMD of the images themselves
    return DMSettings(
        ipc=c.ipc, iterations=c.iterations, lr_img=c.effective_lr_img, momentum=c.momentum,
        batch_real=c.batch_real, init=c.init, model=c.model, dsa_strategy="none" if pixels else c.dsa_strategy,
        embed_chunk=c.embed_chunk, compile=c.effective_compile, loss_every=c.loss_every, cuda_graphs=c.cuda_graphs,
        precision=Precision(bf16=c.bf16, tf32=p.tf32, channels_last=c.channels_last, deterministic=p.deterministic),
        networks="pixels" if pixels else c.networks, loss="mmd" if pixels else c.loss, kernel=c.kernel,
        factor=c.factor, ce_weight=c.ce_weight, ce_network=c.ce_network,
    )


def shard_pool(run: RunDir) -> PoolStates | None:
    """The pool states a shard draws its networks from (none for random networks or pixels)."""
    c = run.config.condense
    if c.networks not in ("pool", "blend"):
        return None
    return pool_states(PoolDir.for_run(run.config, run.dataset), c.pool_group if c.networks == "pool" else None)


def condense_shard(run: RunDir, spec: ShardSpec, context: Context | None = None) -> ShardManifest:
    """Condense one shard and commit it; returns its manifest. Idempotent."""
    manifest_uri = run.manifest(spec)
    state = commits.read_state(run, manifest_uri, ShardManifest)
    if state.state == "committed":  # a retry after a commit that the driver never heard of
        return state.manifest  # type: ignore[return-value]
    _maybe_fault(run, spec, "start")
    device = task_device(run.config.resources)
    started = time.time()
    real = run_reader(run).read_train(list(spec.class_ids))
    condenser = DMCondenser(real, run.dataset, spec.class_ids, dm_settings(run.config), spec.seed, device,
                            pool=shard_pool(run))
    resumed_from = _restore(run, spec, condenser, device)

    def on_checkpoint(st: dict) -> None:
        _write_torch(run.checkpoint(spec), {**st, **_stream_identity(device)})
        if run.config.condense.keep_checkpoints:
            _write_torch(run.snapshot(spec, st["iteration"]), {k: st[k] for k in ("iteration", "class_ids", "images")})
        storage.write_json_atomic(run.progress(spec), {"checkpoint_iteration": st["iteration"], "pid": os.getpid(),
                                                       "host": socket.gethostname(), "time": time.time()})
        _maybe_fault(run, spec, "checkpoint")

    condenser.run(on_progress=(lambda p: context(p.iteration)) if context else None,
                  checkpoint_every=run.config.condense.checkpoint_every, on_checkpoint=on_checkpoint)
    manifest = _commit(run, spec, condenser, resumed_from, started, device, context.node_id if context else None)
    storage.remove(run.path("checkpoints", spec.name), recursive=True)
    for path in (run.progress(spec), run.failure("condense", spec)):
        storage.remove(path)
    if context is not None:
        context(manifest.iterations, final=True)
    return manifest


def _stream_identity(device: torch.device) -> dict:
    """What picks a shard's random stream and rounding besides its seed: a checkpoint made
    under other values is never continued (the images would mix two streams)."""
    return {"device_type": device.type, "threads": torch.get_num_threads()}


def _restore(run: RunDir, spec: ShardSpec, condenser: DMCondenser, device: torch.device) -> int:
    path = run.checkpoint(spec)
    if not storage.exists(path):
        return 0
    state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=False)
    made = {k: state.get(k) for k in ("device_type", "threads")}
    if made != _stream_identity(device):
        print(f"{spec.name}: its checkpoint at iteration {state['iteration']} was made with {made}, this attempt "
              f"runs with {_stream_identity(device)}: starting over, so that the images come from one stream")
        return 0
    condenser.load_state_dict(state)
    return condenser.iteration


def _commit(run: RunDir, spec: ShardSpec, condenser: DMCondenser, resumed_from: int, started: float,
            device: torch.device, node_id: str | None) -> ShardManifest:
    images, labels = condenser.synthetic()
    info = run.dataset
    meta = {"dataset": info.name, "mean": list(info.mean), "std": list(info.std), "ipc": run.config.condense.ipc,
            "factor": run.config.condense.factor, "shard_id": spec.shard_id, "seed": spec.seed, "method": "dm",
            "config_hash": run.record.config_hash}
    table = tensor_table(images.numpy(), labels.numpy(), info.class_names, index=True, metadata=meta)
    entry = commits.write_file(run, run.shard_file(spec), to_parquet_bytes(table), len(labels))
    losses = condenser.losses
    manifest = ShardManifest(
        shard_id=spec.shard_id, classes=list(spec.class_ids), seed=spec.seed, rows=entry.rows, sha256=entry.sha256,
        files={"dm": entry}, iterations=condenser.iteration, resumed_from=resumed_from,
        wall_time_s=round(time.time() - started, 3), final_loss=losses[-1][1] if losses else None,
        loss_curve=_downsample(losses, 200), device=str(device), threads=torch.get_num_threads(),
        compile=condenser.compile_state,
        host=socket.gethostname(), node_id=node_id,
    )
    commits.write_manifest(run.manifest(spec), manifest)
    return manifest


def _write_torch(uri: str, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


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
