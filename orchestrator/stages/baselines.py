"""The baselines stage: coreset selections (random, herding, k-center, forgetting) of every shard's classes.

One task per shard that lacks a selection asked for; each selection is committed like a
shard (``orchestrator.artifacts.selections``). A selection is valid only for the settings
that shaped it (its identity, in the manifest): a run asked for a method, or for other
feature settings, computes what it lacks and nothing else.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console

from orchestrator.artifacts import selections
from orchestrator.artifacts.pool_networks import forgetting_scores
from orchestrator.components.settings import train_settings
from orchestrator.components.worker_setup import run_reader, task_device
from orchestrator.plan import ShardSpec
from orchestrator.run_dir import RunDir
from orchestrator.stage_runner import Needs, Unit, UnitStage, run_units
from workers.coreset import embed_features, select_coreset
from workers.data import normalize

STAGE = selections.STAGE


def baselines(run: RunDir, methods: list[str], console: Console) -> None:
    """Select what is missing of ``methods`` for every shard; raises StageFailed naming the
    shards whose selection failed (the others are committed)."""
    units, other_settings = [], 0
    for spec in run.shards:
        states = {m: selections.selection_state(run, spec, m) for m in methods}
        missing = [m for m, st in states.items() if st.state != "committed"]
        other_settings += sum(st.manifest is not None for st in states.values() if st.state != "committed")
        units.append(Unit(spec.name, (spec, missing), committed=not missing, failure=run.failure(STAGE, spec)))
    if other_settings:
        console.print(f"baselines: {other_settings} selections were made under other settings or no longer verify; "
                      "selecting them again", highlight=False)
    r = run.config.resources
    stage = UnitStage(STAGE, "shards", "shards", select_baselines, shared=(run,),
                      needs=Needs("a baseline selection", r, run.config.precision.deterministic),
                      limit=r.max_concurrent_shards)
    run_units(stage, [u for u in units if not u.committed], console)


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
        trained = cfg.evaluate.coreset_feature_epochs > 0
        features = embed_features(
            x, cfg.condense.model, info.channels, len(spec.class_ids), tuple(info.im_size), seed=spec.seed,
            device=device, train=train_settings(cfg, "coreset_features") if trained else None, labels=local,
        )
    for method in methods:
        scores = forgetting_scores(run.resolved.pool_dir, list(spec.class_ids)) if method == "forgetting" else None
        idx = select_coreset(method, x, real.labels, cfg.condense.ipc, class_ids=spec.class_ids, seed=spec.seed,
                             features=features, scores=scores)
        selections.commit_selection(run, spec, method, x[idx], real.labels[idx], started)
    return methods
