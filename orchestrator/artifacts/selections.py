"""A coreset baseline's selection of one shard's classes: RUN/baselines/<method>/shard-*.parquet
and its manifest, valid only for the settings that shaped it (its identity)."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import torch
from pydantic import BaseModel

from orchestrator import commits
from orchestrator.commits import FileEntry, UnitState
from orchestrator.config import RunConfig
from orchestrator.pool_dir import PoolDir
from orchestrator.run_identity import shards_hash
from orchestrator.plan import ShardSpec
from orchestrator.run_dir import RunDir
from workers.data.tensor_table import tensor_table, to_parquet_bytes

STAGE = "baselines"  # where a shard's failed selection is recorded (RUN/failed/baselines/)


class BaselineManifest(BaseModel):
    """The commit record of one coreset selection of one shard's classes."""

    format: int = 2
    method: str
    identity: str  # baseline_identity(): the settings that shaped it
    shard_id: int
    classes: list[int]
    seed: int
    files: dict[str, FileEntry]
    wall_time_s: float
    host: str


def baseline_identity(cfg: RunConfig, method: str, pool: PoolDir) -> str:
    """A key of everything that changes a selection's bytes: what shapes the run's shards
    (dataset, seeds, ipc; not how many classes the plan has grown to) and, for selections in a
    feature space, the feature network and its training; resolved once where the run is opened
    (``Resolved.baseline_identities``)."""
    e = cfg.evaluate
    shaping: dict = {"method": method, "run": shards_hash(cfg)}
    if method in ("herding", "k_center"):
        shaping.update(feature_model=cfg.condense.model, feature_epochs=e.coreset_feature_epochs)
        if e.coreset_feature_epochs > 0:  # the features' training follows the evaluation's settings
            shaping.update(feature_lr=e.feature_lr, feature_batch=e.batch)
    if method == "forgetting":
        shaping.update(pool=pool.record.key, networks=cfg.pool.networks)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def selection_state(run: RunDir, spec: ShardSpec, method: str, *, deep: bool = True) -> UnitState[BaselineManifest]:
    st = commits.read_state(run, run.baseline_manifest(method, spec), BaselineManifest, deep=deep)
    if st.manifest is not None and st.manifest.identity != run.resolved.baseline_identities[method]:
        return UnitState("pending", "made under other settings", st.manifest)
    return st


def commit_selection(run: RunDir, spec: ShardSpec, method: str, images: torch.Tensor, labels: torch.Tensor,
                     started: float) -> BaselineManifest:
    """Write the selected (normalised) images, then the manifest that commits them."""
    info, cfg = run.dataset, run.config
    meta = {"dataset": info.name, "mean": list(info.mean), "std": list(info.std), "ipc": cfg.condense.ipc,
            "shard_id": spec.shard_id, "seed": spec.seed, "method": method}
    table = tensor_table(images.numpy(), labels.numpy(), info.class_names, index=True, metadata=meta)
    entry = commits.write_file(run, run.baseline_file(method, spec), to_parquet_bytes(table), len(labels))
    manifest = BaselineManifest(method=method, identity=run.resolved.baseline_identities[method], shard_id=spec.shard_id,
                                classes=list(spec.class_ids), seed=spec.seed, files={method: entry},
                                wall_time_s=round(time.time() - started, 3), host=socket.gethostname())
    commits.write_manifest(run.baseline_manifest(method, spec), manifest)
    return manifest
