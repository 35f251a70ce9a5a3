"""The pool handle: a folder of trained networks with its typed record (POOL/pool.json).

A pool is an artifact of its own, named by a hash of what shapes it (the dataset as its info
describes it, the architecture, the training settings and seeds, the schedule of kept
states), under a root (``pool.uri``, default RUN/pool): any run on the same data and
architecture finds and reuses it. Its networks are units committed like shards.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from orchestrator import storage
from workers.data.uri import absolute
from orchestrator.config import DatasetConfig, RunConfig
from orchestrator.errors import RunError
from workers.data.types import DatasetInfo

RECORD = "pool.json"
NETWORK = re.compile(r"net-(\d{5})")  # a network's file stem: its index, five digits


def network_name(index: int) -> str:
    return f"net-{index:05d}"


class PoolSettings(BaseModel):
    """Everything that shapes a pool's networks (and so its key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    epochs: int
    batch: int
    lr: float
    momentum: float
    weight_decay: float
    dsa_strategy: str | None  # None: no augmentation
    states_every: int
    early_states: bool
    validation_fraction: float
    seed: int

    @classmethod
    def of(cls, cfg: RunConfig) -> "PoolSettings":
        p = cfg.pool
        return cls(model=p.model or cfg.condense.model, epochs=p.epochs, batch=p.batch, lr=p.lr, momentum=p.momentum,
                   weight_decay=p.weight_decay, dsa_strategy=(p.dsa_strategy or cfg.condense.dsa_strategy) if p.augment else None,
                   states_every=p.states_every, early_states=p.early_states,
                   validation_fraction=p.validation_fraction, seed=p.seed)


class PoolRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = 1
    key: str
    dataset: DatasetConfig  # where its images are read from (not part of the key)
    info: DatasetInfo  # what they are
    settings: PoolSettings

    def describe(self) -> str:
        i = self.info
        return (f"{self.key}: {self.settings.model} on {i.name} {i.channels}x{i.im_size[0]}x{i.im_size[1]}, "
                f"{self.settings.epochs} epoch(s), seed {self.settings.seed}")


def pool_key(info: DatasetInfo, settings: PoolSettings) -> str:
    shaping = {"dataset": {"name": info.name, "classes": info.class_names, "channels": info.channels,
                           "im_size": list(info.im_size), "train_counts": list(info.train_counts),
                           "mean": list(info.mean), "std": list(info.std)},
               "settings": settings.model_dump()}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PoolDir:
    uri: str
    record: PoolRecord
    networks: int  # how many networks are asked for (a pool grows: more seeds, same key)

    @classmethod
    def for_run(cls, cfg: RunConfig, info: DatasetInfo) -> "PoolDir":
        settings = PoolSettings.of(cfg)
        key = pool_key(info, settings)
        record = PoolRecord(key=key, dataset=cfg.dataset, info=info, settings=settings)
        return cls(storage.join(pool_root(cfg), key), record, cfg.pool.networks)

    @classmethod
    def at(cls, uri: str) -> "PoolDir":
        """A pool made elsewhere, by its directory: its record and as many networks as its highest
        committed one (a teacher's pool: ``evaluate.teacher.pool``). Raises naming what to give."""
        uri = absolute(uri)
        record = storage.join(uri, RECORD)
        if not storage.exists(record):
            raise RunError(f"no pool at {uri} (no {RECORD} there): give the directory a `dmcondense pool` "
                           "command made, as it printed it")
        committed = [NETWORK.fullmatch(name.removesuffix(".json"))
                     for name in storage.list_names(storage.join(uri, "manifest")) if name.endswith(".json")]
        indices = [int(m.group(1)) for m in committed if m]
        return cls(uri, PoolRecord.model_validate(storage.read_json(record)), max(indices, default=-1) + 1)

    def exists(self) -> bool:
        return storage.exists(self.path(RECORD))

    def save(self) -> None:
        storage.ensure_dir(self.uri)
        storage.write_json_atomic(self.path(RECORD), self.record.model_dump(mode="json"))

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def relative(self, path: str) -> str:
        return storage.relative(self.uri, path)

    def states_file(self, index: int) -> str:
        return self.path(f"{network_name(index)}.pt")

    def forgetting_file(self, index: int) -> str:
        return self.path(f"{network_name(index)}.forgetting.parquet")

    def manifest(self, index: int) -> str:
        return self.path("manifest", f"{network_name(index)}.json")

    def failure(self, index: int) -> str:
        return self.path("failed", f"{network_name(index)}.json")

    def checkpoint(self, index: int) -> str:
        """A network's training state after its last finished epoch, removed at its commit."""
        return self.path("checkpoints", f"{network_name(index)}.pt")

    def histogram(self) -> str:
        return self.path("pool.png")


def pool_root(cfg: RunConfig) -> str:
    return absolute(cfg.pool.uri or storage.join(cfg.output, "pool"))


def pools_at(root: str) -> list[PoolRecord]:
    """The pools a root holds (to name them when none fits)."""
    records = []
    for name in storage.list_names(root):
        path = storage.join(root, name, RECORD)
        if storage.exists(path):
            records.append(PoolRecord.model_validate(storage.read_json(path)))
    return records
