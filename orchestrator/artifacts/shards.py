"""A shard's synthetic images: the Parquet file, its manifest (the commit), the mid-shard
checkpoint, the kept snapshots (``condense.keep_checkpoints``) and the progress heartbeat.

Paths come from the run handle (``RunDir.shard_file``, ``manifest``, ``checkpoint``,
``snapshot``, ``progress``, ``failure``); this module owns what those files hold.
"""

from __future__ import annotations

import io
import os
import socket
import time

import torch
from pydantic import BaseModel, ConfigDict

from orchestrator import commits, storage
from orchestrator.commits import FileEntry, UnitState
from orchestrator.plan import ShardSpec
from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from orchestrator.run_identity import differing_keys
from workers.data.tensor_table import tensor_table, to_parquet_bytes

STAGE = "condense"  # where a shard's failure is recorded (RUN/failed/condense/)
SNAPSHOT_PREFIX = "dm@"  # a kept checkpoint scored as a method: dm@<iteration>


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
    identity: dict | None = None  # run_identity.shard_identity on its device; None: made before identities


def device_type(manifest: ShardManifest) -> str:
    return manifest.device.split(":")[0]


def shard_state(run: RunDir, spec: ShardSpec, *, deep: bool = True) -> UnitState[ShardManifest]:
    """committed, corrupt (files or manifest no longer match), failed, in_progress or pending."""
    st = commits.read_state(run, run.manifest(spec), ShardManifest, deep=deep)
    if st.manifest is not None and st.manifest.identity is not None:
        keys = differing_keys(st.manifest.identity, run.resolved.shard_identities[device_type(st.manifest)])
        if keys:
            return UnitState("foreign", f"condensed under another configuration (differing keys: {', '.join(keys)})",
                             st.manifest)
    if st.manifest is not None and (st.manifest.classes != list(spec.class_ids) or st.manifest.seed != spec.seed):
        return UnitState("corrupt", "manifest does not match the plan (classes or seed differ)", st.manifest)
    if st.state != "pending":
        return st
    error = commits.failure_of(run.failure(STAGE, spec))
    if error is not None:
        return UnitState("failed", error)
    if storage.exists(run.progress(spec)):
        iteration = storage.read_json(run.progress(spec)).get("checkpoint_iteration", 0)
        return UnitState("in_progress", f"checkpoint at iteration {iteration}")
    return st


def commit_shard(run: RunDir, spec: ShardSpec, images: torch.Tensor, labels: torch.Tensor,
                 fields: dict) -> ShardManifest:
    """Write the shard's images, then its manifest (``fields``: the manifest's other entries)."""
    info = run.dataset
    meta = {"dataset": info.name, "mean": list(info.mean), "std": list(info.std), "ipc": run.config.condense.ipc,
            "factor": run.config.condense.factor, "shard_id": spec.shard_id, "seed": spec.seed,
            "method": run.config.condense.method, "config_hash": run.record.config_hash}
    table = tensor_table(images.numpy(), labels.numpy(), info.class_names, index=True, metadata=meta)
    entry = commits.write_file(run, run.shard_file(spec), to_parquet_bytes(table), len(labels))
    manifest = ShardManifest(shard_id=spec.shard_id, classes=list(spec.class_ids), seed=spec.seed, rows=entry.rows,
                             sha256=entry.sha256, files={"dm": entry}, host=socket.gethostname(),
                             identity=run.resolved.shard_identities[fields["device"].split(":")[0]], **fields)
    commits.write_manifest(run.manifest(spec), manifest)
    return manifest


def refuse_foreign_shards(run: RunDir) -> None:
    """Before any task starts: a committed shard of another configuration is never adopted."""
    foreign = [(spec.name, st.detail) for spec in run.shards
               if (st := shard_state(run, spec, deep=False)).state == "foreign"]
    if foreign:
        names = ", ".join(name for name, _ in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise RunError(f"{run.uri} holds shards {foreign[0][1]}: {names}; this configuration would not reproduce "
                       "them: resume that run with its own configuration, or give this one its own directory "
                       "with --out")


def clear_work_files(run: RunDir, spec: ShardSpec) -> None:
    """After the commit: the checkpoint, the heartbeat and any failure record go."""
    storage.remove(run.path("checkpoints", spec.name), recursive=True)
    for path in (run.progress(spec), run.failure(STAGE, spec)):
        storage.remove(path)


# ------------------------------------------------------------------ checkpoints and snapshots
def write_checkpoint(run: RunDir, spec: ShardSpec, state: dict) -> None:
    """The loop's state (and what made it), then the heartbeat that names its iteration."""
    _write_torch(run.checkpoint(spec), state)
    if run.config.condense.keep_checkpoints:
        _write_torch(run.snapshot(spec, state["iteration"]),
                     {k: state[k] for k in ("iteration", "class_ids", "images")})
    storage.write_json_atomic(run.progress(spec), {"checkpoint_iteration": state["iteration"], "pid": os.getpid(),
                                                   "host": socket.gethostname(), "time": time.time()})


def read_checkpoint(run: RunDir, spec: ShardSpec) -> dict | None:
    path = run.checkpoint(spec)
    if not storage.exists(path):
        return None
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=False)


def snapshot_iteration(method: str) -> int | None:
    """The iteration of a ``dm@<iteration>`` method (a kept checkpoint); None for any other."""
    rest = method[len(SNAPSHOT_PREFIX):] if method.startswith(SNAPSHOT_PREFIX) else ""
    return int(rest) if rest.isdigit() else None


def snapshot_iterations(run: RunDir) -> list[int]:
    """Iterations whose kept checkpoint (condense.keep_checkpoints) exists for every shard."""
    common: set[int] | None = None
    for spec in run.shards:
        names = storage.list_names(run.snapshot_dir(spec))
        its = {int(n[3:-3]) for n in names if n.startswith("it-") and n.endswith(".pt")}
        common = its if common is None else common & its
    return sorted(common or ())


def read_snapshot(run: RunDir, relative_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A kept checkpoint's stored images and their class ids."""
    state = torch.load(io.BytesIO(storage.read_bytes(run.path(relative_path))), map_location="cpu",
                       weights_only=True)
    ipc = state["images"].shape[0] // len(state["class_ids"])
    return state["images"], torch.tensor(state["class_ids"], dtype=torch.int64).repeat_interleave(ipc)


def _write_torch(uri: str, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())
