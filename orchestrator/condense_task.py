"""The body of one shard's task: read its classes, run DM with checkpoints, commit.

Runs inside a Ray worker, but takes plain values (the run URI, the shard, the
resolved config) and writes straight to the run directory: nothing but the
manifest returns to the driver.
"""

from __future__ import annotations

import io
import os
import socket
import time
from typing import Any, Callable

import torch

from orchestrator import faults, shards, storage
from orchestrator.config import RunConfig, from_dict
from orchestrator.plan import ShardSpec
from workers.coreset import embed_features, select_coreset
from workers.data import normalize, open_dataset
from workers.data.types import DatasetInfo, ImageSet
from workers.devices import Precision
from workers.dm import DMCondenser, DMSettings, Progress

ProgressSink = Callable[[dict[str, Any]], None]


def dm_settings(cfg: RunConfig) -> DMSettings:
    c = cfg.condense
    return DMSettings(
        ipc=c.ipc,
        iterations=c.iterations,
        lr_img=c.effective_lr_img,
        momentum=c.momentum,
        batch_real=c.batch_real,
        init=c.init,
        model=c.model,
        dsa_strategy=c.dsa_strategy,
        embed_chunk=c.embed_chunk,
        precision=Precision(bf16=c.bf16, tf32=c.tf32, channels_last=c.channels_last),
        compile=c.effective_compile,
        loss_every=c.loss_every,
    )


def shard_device(cfg: RunConfig) -> torch.device:
    """The GPU Ray gave this task, else the CPU (fake GPU resources in tests land here)."""
    if cfg.resources.gpus_per_shard > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def condense_shard(
    run: str, spec_dict: dict, config: dict, sink: ProgressSink | None = None, node_id: str | None = None
) -> dict:
    """Condense one shard and commit it; returns its manifest. Idempotent."""
    cfg, spec = from_dict(config), ShardSpec.from_dict(spec_dict)
    state = shards.verify(run, spec)
    if state.state == "committed":  # a retry after a commit that the driver never heard of
        return state.manifest
    _maybe_fault(run, spec, "start")
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_shard)))  # same threads => same bytes
    started = time.time()
    reader = open_dataset(cfg.dataset.name, cfg.dataset.root, resolution=cfg.dataset.resolution)
    real = reader.read_train(list(spec.class_ids))
    device = shard_device(cfg)
    condenser = DMCondenser(real, reader.info, spec.class_ids, dm_settings(cfg), spec.seed, device)
    resumed_from = _restore(run, spec, condenser)
    reporter = _Reporter(run, spec, sink, cfg.condense.iterations)

    def on_checkpoint(st: dict) -> None:
        buf = io.BytesIO()
        torch.save(st, buf)
        storage.write_bytes_atomic(shards.checkpoint_path(run, spec.name), buf.getvalue())
        if cfg.condense.keep_checkpoints:
            snap = {k: st[k] for k in ("iteration", "class_ids", "images")}
            buf = io.BytesIO()
            torch.save(snap, buf)
            storage.write_bytes_atomic(shards.snapshot_path(run, spec.name, st["iteration"]), buf.getvalue())
        reporter.checkpointed(st["iteration"])
        _maybe_fault(run, spec, "checkpoint")

    condenser.run(
        on_progress=reporter.progress,
        checkpoint_every=cfg.condense.checkpoint_every,
        on_checkpoint=on_checkpoint,
    )
    images, labels = condenser.synthetic()
    output = _shard_output(cfg, spec, reader.info, real, images, labels, condenser, resumed_from, started, device)
    output.record["node_id"] = node_id
    manifest = shards.commit(run, output)
    _cleanup(run, spec)
    reporter.done(manifest)
    return manifest


def _restore(run: str, spec: ShardSpec, condenser: DMCondenser) -> int:
    path = shards.checkpoint_path(run, spec.name)
    if not storage.exists(path):
        return 0
    state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=False)
    condenser.load_state_dict(state)
    return condenser.iteration


def _shard_output(
    cfg: RunConfig,
    spec: ShardSpec,
    info: DatasetInfo,
    real: ImageSet,
    images: torch.Tensor,
    labels: torch.Tensor,
    condenser: DMCondenser,
    resumed_from: int,
    started: float,
    device: torch.device,
) -> shards.ShardOutput:
    meta = {
        "dataset": info.name,
        "mean": list(info.mean),
        "std": list(info.std),
        "ipc": cfg.condense.ipc,
        "shard_id": spec.shard_id,
        "seed": spec.seed,
        "method": "dm",
    }
    files = {"dm": shards.table_bytes(shards.images_table(images, labels, info.class_names, meta))}
    rows = {"dm": len(labels)}
    for method, (x, y) in _baselines(cfg, spec, info, real, device).items():
        files[method] = shards.table_bytes(shards.images_table(x, y, info.class_names, {**meta, "method": method}))
        rows[method] = len(y)
    losses = condenser.losses
    record = {
        "iterations": condenser.iteration,
        "resumed_from": resumed_from,
        "wall_time_s": round(time.time() - started, 3),
        "final_loss": losses[-1][1] if losses else None,
        "loss_curve": _downsample(losses, 200),
        "device": str(device),
        "host": socket.gethostname(),
    }
    return shards.ShardOutput(spec=spec, files=files, rows=rows, record=record)


def _baselines(
    cfg: RunConfig, spec: ShardSpec, info: DatasetInfo, real: ImageSet, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Coreset selections of this shard's classes, as normalised float images."""
    methods = cfg.evaluate.baselines
    if not methods:
        return {}
    x = normalize(real.images, info.mean, info.std)
    features = None
    if any(m != "random" for m in methods):
        # Labels remapped to 0..K-1: the feature network only sees this shard's classes.
        local = torch.searchsorted(torch.tensor(sorted(spec.class_ids)), real.labels)
        features = embed_features(
            x, cfg.condense.model, info.channels, len(spec.class_ids), tuple(info.im_size),
            seed=spec.seed, device=device, train_epochs=cfg.evaluate.coreset_feature_epochs, labels=local,
        )
    out = {}
    for method in methods:
        idx = select_coreset(
            method, x, real.labels, cfg.condense.ipc, class_ids=spec.class_ids, seed=spec.seed, features=features
        )
        out[method] = (x[idx], real.labels[idx])
    return out


def _downsample(losses: list[tuple[int, float]], points: int) -> list[list[float]]:
    if len(losses) <= points:
        return [[i, v] for i, v in losses]
    step = len(losses) / points
    return [[losses[int(k * step)][0], losses[int(k * step)][1]] for k in range(points)] + [list(losses[-1])]


def _cleanup(run: str, spec: ShardSpec) -> None:
    storage.remove(storage.join(run, "checkpoints", spec.name), recursive=True)
    for path in (shards.progress_path(run, spec.name), shards.failure_path(run, spec.name)):
        if storage.exists(path):
            storage.remove(path)


class _Reporter:
    """Throttled progress to the driver's live display, and a progress file for `status`."""

    def __init__(self, run: str, spec: ShardSpec, sink: ProgressSink | None, total: int, every_s: float = 1.0):
        self.run, self.spec, self.sink, self.total, self.every_s = run, spec, sink, total, every_s
        self._last = 0.0

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if self.sink is not None and (now - self._last >= self.every_s or p.iteration == p.total):
            self._last = now
            self.sink({"shard": self.spec.shard_id, "iteration": p.iteration, "total": p.total,
                       "loss": p.loss, "it_per_s": p.it_per_s})

    def checkpointed(self, iteration: int) -> None:
        storage.write_json_atomic(
            shards.progress_path(self.run, self.spec.name),
            {"checkpoint_iteration": iteration, "total": self.total, "pid": os.getpid(),
             "host": socket.gethostname(), "time": time.time()},
        )

    def done(self, manifest: dict) -> None:
        if self.sink is not None:
            self.sink({"shard": self.spec.shard_id, "iteration": manifest["iterations"], "total": self.total,
                       "loss": manifest["final_loss"], "done": True})


def _maybe_fault(run: str, spec: ShardSpec, stage: str) -> None:
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
