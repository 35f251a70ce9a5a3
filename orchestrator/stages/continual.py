"""The continual stage: class-incremental learning on one growing run (paper 3.5, GDumb + DM).

The classes are split into steps by a seeded permutation. Each step grows the run's plan by
its new classes (new shards with new ids: the shards of earlier steps keep their ids, seeds
and bytes); the pipeline then condenses them, selects their baselines and trains networks
from scratch on the memory of every class seen so far, scored on those classes' test
images (``pipeline.run_continual``). This module plans the steps and the run each step
sees; every stage computes only what is missing, so a stopped continual run resumes where
it was.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from orchestrator.config import RunConfig, apply_overrides, from_dict
from orchestrator.plan import PlanError, check_config_against_dataset, planned_classes
from orchestrator.errors import RunError
from orchestrator.run_dir import RunDir
from orchestrator.run_record import RunRecord
from workers.data.types import DatasetInfo
from workers.seeding import derive_seed


def class_steps(classes: list[int], steps: int, seed: int) -> list[list[int]]:
    """The classes in ``steps`` groups of (nearly) equal size, by a seeded permutation."""
    if steps > len(classes):
        raise RunError(f"continual.steps={steps} but there are only {len(classes)} classes to spread over them; "
                       f"set continual.steps to at most {len(classes)}")
    order = np.random.default_rng(derive_seed(seed, "continual")).permutation(classes)
    return [sorted(int(c) for c in part) for part in np.array_split(order, steps)]


def check_continual(cfg: RunConfig, info: DatasetInfo) -> list[list[int]]:
    """Before any task starts: the steps, every class able to fill its memory, and a directory that
    holds no plain run."""
    if RunDir.exists(cfg.output):
        RunDir.load(cfg.output).refuse_other_kind("continual")
    classes = planned_classes(cfg, info)
    try:
        check_config_against_dataset(cfg, info, classes)
    except PlanError as exc:
        raise RunError(f"{exc} (the memory of each class)") from None
    return class_steps(classes, cfg.continual.steps, cfg.continual.seed)


def step_config(cfg: RunConfig, seen: list[int]) -> RunConfig:
    """The run's config at a step: the classes seen so far, the coreset memories as baselines."""
    coresets = [m for m in cfg.continual.methods if m != "dm"]
    return from_dict(apply_overrides(cfg.model_dump(mode="json"),
                                     [f"plan.classes={seen}", f"evaluate.baselines={coresets}"]))


def step_run(cfg: RunConfig, info: DatasetInfo, grow: Callable[[RunConfig], RunDir]) -> RunDir:
    """The run as a step sees it: for a step a stopped continual run had already reached, a view
    of the shards of the classes seen then; else ``grow(cfg)``, the run grown by the step's
    classes (and saved)."""
    seen = set(cfg.plan.classes or ())
    if RunDir.exists(cfg.output):
        current = RunDir.load(cfg.output)
        current.refuse_other_kind("continual")
        if seen <= set(current.record.classes):
            shards = [spec for spec in current.shards if set(spec.class_ids) <= seen]
            return RunDir(cfg.output, RunRecord.build(cfg, shards, info, current.record.kind))
    return grow(cfg)
