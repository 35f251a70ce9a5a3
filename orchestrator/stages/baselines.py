"""The baselines stage: coreset selections (random, herding, k-center, forgetting) of every shard's classes.

One task per shard that lacks a selection asked for; each selection is committed like a
shard (its Parquet file, then a manifest) under RUN/baselines/<method>/. A selection is
valid only for the settings that shaped it (its identity, in the manifest): a run asked
for a method, or for other feature settings, computes what it lacks and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time

import torch
from pydantic import BaseModel
from rich.console import Console

from orchestrator import commits, ray_work, storage
from orchestrator.commits import FileEntry, UnitState
from orchestrator.config import shards_hash
from orchestrator.plan import ShardSpec
from orchestrator.pool_dir import PoolDir
from orchestrator.run_dir import RunDir
from orchestrator.stages import StageFailed
from orchestrator.stages.pool import forgetting_scores
from orchestrator.stages.worker_setup import check_gpus_usable, run_reader, task_device
from workers.coreset import embed_features, select_coreset
from workers.data import normalize
from workers.data.tensor_table import tensor_table, to_parquet_bytes

STAGE = "baselines"


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


def baseline_identity(run: RunDir, method: str) -> str:
    """A key of everything that changes a selection's bytes: what shapes the run's shards
    (dataset, seeds, ipc; not how many classes the plan has grown to) and, for selections in a
    feature space, the feature network."""
    e = run.config.evaluate
    shaping: dict = {"method": method, "run": shards_hash(run.config)}
    if method in ("herding", "k_center"):
        shaping.update(feature_model=run.config.condense.model, feature_epochs=e.coreset_feature_epochs)
    if method == "forgetting":
        shaping.update(pool=PoolDir.for_run(run.config, run.dataset).record.key, networks=run.config.pool.networks)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def selection_state(run: RunDir, spec: ShardSpec, method: str, *, deep: bool = True) -> UnitState[BaselineManifest]:
    st = commits.read_state(run, run.baseline_manifest(method, spec), BaselineManifest, deep=deep)
    if st.manifest is not None and st.manifest.identity != baseline_identity(run, method):
        return UnitState("pending", "made under other settings", st.manifest)
    return st


def baselines(run: RunDir, methods: list[str], console: Console) -> None:
    """Select what is missing of ``methods`` for every shard; raises StageFailed naming the
    shards whose selection failed (the others are committed)."""
    work = []
    for spec in run.shards:
        missing = [m for m in methods if selection_state(run, spec, m).state != "committed"]
        if missing:
            storage.remove(run.failure(STAGE, spec))
            work.append(ray_work.Work(spec.name, (spec, missing)))
    if not work:
        return
    resources = run.config.resources
    ray_work.check_fits(resources.cpus_per_shard, resources.gpus_per_shard, "a baseline selection")
    check_gpus_usable(run.config.resources, resources.gpus_per_shard, "baseline selections (resources.gpus_per_shard)")
    outcome = ray_work.run_tasks(select_baselines, work, shared=(run,), options=ray_work.task_options(run.config),
                                 label=STAGE, unit="shards", console=console,
                                 limit=resources.max_concurrent_shards)
    by_name = {spec.name: spec for spec in run.shards}
    for name, error in outcome.failed.items():
        commits.record_failure(run.failure(STAGE, by_name[name]), error)
    if outcome.failed:
        raise StageFailed(STAGE, outcome.failed, again=f"dmcondense evaluate {run.uri}")


def select_baselines(run: RunDir, spec: ShardSpec, methods: list[str]) -> list[str]:
    """The task body: select ``methods`` among the shard's real images and commit each."""
    started = time.time()
    device = task_device(run.config.resources)
    info, cfg = run.dataset, run.config
    real = run_reader(run).read_train(list(spec.class_ids))
    x = normalize(real.images, info.mean, info.std)
    features = None
    if any(m in ("herding", "k_center") for m in methods):
        # Labels remapped to 0..K-1: the feature network only sees this shard's classes.
        local = torch.searchsorted(torch.tensor(sorted(spec.class_ids)), real.labels)
        features = embed_features(
            x, cfg.condense.model, info.channels, len(spec.class_ids), tuple(info.im_size),
            seed=spec.seed, device=device, train_epochs=cfg.evaluate.coreset_feature_epochs, labels=local,
        )
    for method in methods:
        scores = forgetting_scores(PoolDir.for_run(cfg, info), list(spec.class_ids)) if method == "forgetting" else None
        idx = select_coreset(method, x, real.labels, cfg.condense.ipc, class_ids=spec.class_ids, seed=spec.seed,
                             features=features, scores=scores)
        meta = {"dataset": info.name, "mean": list(info.mean), "std": list(info.std), "ipc": cfg.condense.ipc,
                "shard_id": spec.shard_id, "seed": spec.seed, "method": method}
        table = tensor_table(x[idx].numpy(), real.labels[idx].numpy(), info.class_names, index=True, metadata=meta)
        entry = commits.write_file(run, run.baseline_file(method, spec), to_parquet_bytes(table), len(idx))
        commits.write_manifest(run.baseline_manifest(method, spec), BaselineManifest(
            method=method, identity=baseline_identity(run, method), shard_id=spec.shard_id,
            classes=list(spec.class_ids), seed=spec.seed, files={method: entry},
            wall_time_s=round(time.time() - started, 3), host=socket.gethostname()))
    return methods
