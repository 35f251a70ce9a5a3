"""Shard files, their manifests and the commit protocol of DESIGN.md.

A shard exists once its Parquet file and then its manifest are in place (both
written under temporary names and moved). A reader trusts a shard only when the
manifest's sha256 matches the file. Besides the DM images a shard commits the
coreset baselines of its classes (random, herding, ...) as sibling files named
in the same manifest, so the evaluation never needs the real training set.
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator import storage
from orchestrator.plan import ShardSpec

FORMAT_VERSION = 1
META_KEY = b"dmcondense"


# ----------------------------------------------------------------- run layout
def shard_path(run: str, spec_name: str, method: str = "dm") -> str:
    if method == "dm":
        return storage.join(run, "shards", f"{spec_name}.parquet")
    return storage.join(run, "baselines", method, f"{spec_name}.parquet")


def manifest_path(run: str, spec_name: str) -> str:
    return storage.join(run, "manifest", f"{spec_name}.json")


def checkpoint_path(run: str, spec_name: str) -> str:
    return storage.join(run, "checkpoints", spec_name, "state.pt")


def snapshot_path(run: str, spec_name: str, iteration: int) -> str:
    return storage.join(run, "snapshots", spec_name, f"it-{iteration:07d}.pt")


def failure_path(run: str, spec_name: str) -> str:
    return storage.join(run, "failed", f"{spec_name}.json")


def progress_path(run: str, spec_name: str) -> str:
    return storage.join(run, "progress", f"{spec_name}.json")


# --------------------------------------------------------------- parquet form
def images_table(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    metadata: dict[str, Any],
) -> pa.Table:
    """One row per image: class_id, class_name, index (within its class), image [C,H,W] float32."""
    x = images.detach().to("cpu", torch.float32).contiguous().numpy()
    y = labels.to("cpu", torch.int64).numpy()
    index = np.zeros(len(y), dtype=np.int32)
    for c in np.unique(y):
        rows = np.nonzero(y == c)[0]
        index[rows] = np.arange(len(rows), dtype=np.int32)
    tensor_type = pa.fixed_shape_tensor(pa.float32(), list(x.shape[1:]))
    flat = pa.array(x.reshape(len(x), -1).ravel(), pa.float32())
    storage_arr = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(x.shape[1:])))
    table = pa.table(
        {
            "class_id": pa.array(y.astype(np.int32), pa.int32()),
            "class_name": pa.array([class_names[int(c)] for c in y], pa.string()),
            "index": pa.array(index, pa.int32()),
            "image": pa.ExtensionArray.from_storage(tensor_type, storage_arr),
        }
    )
    meta = {META_KEY: json.dumps(metadata, sort_keys=True).encode()}
    return table.replace_schema_metadata(meta)


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_images(data: bytes) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(images float32 [N,C,H,W], class ids int64, file metadata) from a shard file's bytes."""
    table = pq.read_table(pa.BufferReader(data))
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    column = table.column("image").combine_chunks()
    images = torch.from_numpy(column.to_numpy_ndarray().astype(np.float32, copy=True))
    labels = torch.from_numpy(table.column("class_id").to_numpy().astype(np.int64))
    return images, labels, meta


# ------------------------------------------------------------------- commit
@dataclass
class ShardOutput:
    """Everything a finished shard commits."""

    spec: ShardSpec
    files: dict[str, bytes]  # method -> Parquet bytes
    rows: dict[str, int]
    record: dict[str, Any]  # iterations, wall time, final loss, loss curve, ...


def commit(run: str, out: ShardOutput) -> dict[str, Any]:
    """Write every file, then the manifest; the manifest's presence is the commit."""
    files = {}
    for method, data in out.files.items():
        path = shard_path(run, out.spec.name, method)
        storage.write_bytes_atomic(path, data)
        files[method] = {
            "path": _relative(run, path),
            "sha256": _sha256(data),
            "bytes": len(data),
            "rows": out.rows[method],
        }
    manifest = {
        "format": FORMAT_VERSION,
        "shard_id": out.spec.shard_id,
        "classes": list(out.spec.class_ids),
        "seed": out.spec.seed,
        "rows": out.rows["dm"],
        "sha256": files["dm"]["sha256"],
        "files": files,
        **out.record,
    }
    storage.write_json_atomic(manifest_path(run, out.spec.name), manifest)
    return manifest


def _relative(run: str, path: str) -> str:
    """``path`` relative to ``run``; a URI's query string (endpoint options) belongs to neither."""
    if "://" in run:
        run, path = urlsplit(run).path, urlsplit(path).path
    return path[len(run.rstrip("/")) + 1 :]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------- verify
@dataclass(frozen=True)
class ShardState:
    spec: ShardSpec
    state: str  # committed | corrupt | failed | in_progress | pending
    detail: str = ""
    manifest: dict[str, Any] | None = None


def verify(run: str, spec: ShardSpec, *, deep: bool = True) -> ShardState:
    """The state of one shard from the run directory alone."""
    mpath = manifest_path(run, spec.name)
    if storage.exists(mpath):
        try:
            manifest = storage.read_json(mpath)
        except (ValueError, OSError) as exc:
            return ShardState(spec, "corrupt", f"unreadable manifest: {exc}")
        problem = _check_files(run, manifest, spec) if deep else ""
        if problem:
            return ShardState(spec, "corrupt", problem, manifest)
        return ShardState(spec, "committed", "", manifest)
    fpath = failure_path(run, spec.name)
    if storage.exists(fpath):
        return ShardState(spec, "failed", storage.read_json(fpath).get("error", "unknown error"))
    ppath = progress_path(run, spec.name)
    if storage.exists(ppath):
        prog = storage.read_json(ppath)
        return ShardState(spec, "in_progress", f"checkpoint at iteration {prog.get('checkpoint_iteration', 0)}")
    return ShardState(spec, "pending")


def _check_files(run: str, manifest: dict[str, Any], spec: ShardSpec) -> str:
    if list(manifest.get("classes", [])) != list(spec.class_ids) or manifest.get("seed") != spec.seed:
        return "manifest does not match the plan (classes or seed differ)"
    for method, entry in manifest.get("files", {}).items():
        path = storage.join(run, entry["path"])
        if not storage.exists(path):
            return f"{entry['path']} is missing"
        digest = storage.sha256_of(path)
        if digest != entry["sha256"]:
            return f"{entry['path']}: sha256 {digest[:12]}... does not match the manifest ({entry['sha256'][:12]}...)"
    return ""


def load_method(run: str, shards: Sequence[ShardSpec], method: str = "dm") -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic (or baseline) set of every committed, valid shard, sorted by class."""
    images, labels = [], []
    for spec in shards:
        st = verify(run, spec)
        if st.state != "committed":
            raise RuntimeError(f"{spec.name} is {st.state} {st.detail}; run `dmcondense resume {run}` first")
        entry = st.manifest["files"].get(method)
        if entry is None:
            raise RuntimeError(f"{spec.name} has no {method!r} selection; known: {sorted(st.manifest['files'])}")
        x, y, _ = read_images(storage.read_bytes(storage.join(run, entry["path"])))
        images.append(x)
        labels.append(y)
    return _by_class(torch.cat(images), torch.cat(labels))


# ------------------------------------------------------------------ snapshots
def snapshot_iterations(run: str, specs: Sequence[ShardSpec]) -> list[int]:
    """Iterations whose kept checkpoint (condense.keep_checkpoints) exists for every shard."""
    common: set[int] | None = None
    for spec in specs:
        names = storage.list_names(storage.join(run, "snapshots", spec.name))
        its = {int(n[3:-3]) for n in names if n.startswith("it-") and n.endswith(".pt")}
        common = its if common is None else common & its
    return sorted(common or ())


def load_snapshot(run: str, specs: Sequence[ShardSpec], iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every shard's synthetic images at ``iteration``, sorted by class (as load_method)."""
    images, labels = [], []
    for spec in specs:
        state = torch.load(io.BytesIO(storage.read_bytes(snapshot_path(run, spec.name, iteration))),
                           map_location="cpu", weights_only=True)
        ipc = state["images"].shape[0] // len(state["class_ids"])
        images.append(state["images"])
        labels.append(torch.tensor(state["class_ids"], dtype=torch.int64).repeat_interleave(ipc))
    return _by_class(torch.cat(images), torch.cat(labels))


def _by_class(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(y, stable=True)
    return x[order], y[order]
