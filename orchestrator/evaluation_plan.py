"""Which networks a config's evaluation trains, and the key of the settings that shape their
scores: pure functions of the config (and, under soft labels, of the teacher's identity),
resolved once per run into its ``EvaluationPlan`` (``orchestrator.run_opening``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.config import RunConfig
from workers.seeding import derive_seed

Network = tuple[str, str, int]  # (method, model, seed)


@dataclass(frozen=True)
class EvaluationPlan:
    """What the run's evaluation asks for, under its settings as they are."""

    settings_key: str  # settings_key() of the config, its teacher's identity included
    data_keys: Mapping[str, str]  # method -> the identity of its current set (dm and the baselines asked for)
    seeds: Mapping[str, tuple[int, ...]]  # model -> its networks' seeds (model_seeds)

    @property
    def planned(self) -> frozenset[Network]:
        """Every network the config asks to score (dm and the baselines asked for)."""
        return self.networks_of(list(self.data_keys))

    def networks_of(self, methods: list[str]) -> frozenset[Network]:
        return frozenset((m, model, s) for model, seeds in self.seeds.items() for s in seeds for m in methods)


def asked_methods(cfg: RunConfig) -> list[str]:
    return ["dm", *cfg.evaluate.baselines]


def model_seeds(cfg: RunConfig, model: str) -> list[int]:
    """The same seeds for every method, so that comparisons are paired."""
    return [derive_seed(cfg.seed, "eval", model, i) for i in range(cfg.evaluate.num_models)]


def seeds_by_model(cfg: RunConfig) -> dict[str, tuple[int, ...]]:
    """Every evaluation model's seeds (``EvaluationPlan.seeds``)."""
    return {model: tuple(model_seeds(cfg, model)) for model in cfg.evaluate.models}


def planned_networks(cfg: RunConfig, methods: list[str]) -> set[Network]:
    return {(m, model, s) for model in cfg.evaluate.models for s in model_seeds(cfg, model) for m in methods}


def settings_key(cfg: RunConfig, test_classes: list[int] | None = None, teacher: str | None = None) -> str:
    """A key of every setting that shapes a score, the test classes included (None: all) and, under
    soft labels, the temperature and the teacher's identity, and the protocol; how the work is
    spread shapes none."""
    e = cfg.evaluate
    shaping = {"epochs": e.protocol_epochs, "batch": e.batch, "lr": e.protocol_lr, "vectorized": e.vectorized,
               "dsa_strategy": cfg.condense.dsa_strategy, "precision": cfg.precision.model_dump()}
    if test_classes is not None:
        shaping["test_classes"] = sorted(test_classes)
    if e.protocol_labels == "soft":  # hard-label keys stay as they were
        shaping.update(labels="soft", temperature=e.protocol_temperature, teacher=teacher)
    if not e.augment:  # so do augmented ones
        shaping["augment"] = False
    if e.protocol != "paper":  # and the paper protocol's
        shaping["protocol"] = e.protocol
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
