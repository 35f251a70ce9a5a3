"""Planning: classes -> shards, each with a seed derived from (run seed, shard id), and the
checks of a config against what the dataset's info already knows, before any work starts.

Shard ids never depend on the total class count: a plan that grows (classes
added later) keeps every existing shard as it is and puts the new classes in
new shards with new ids.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict

from orchestrator.config import RunConfig
from workers.data.types import DatasetInfo
from workers.networks import build_network
from workers.seeding import derive_seed


class PlanError(ValueError):
    """The config asks for something the dataset cannot give; the message names the fix."""


class ShardSpec(BaseModel):
    """One shard of the plan: its classes and the seed of every random stream it draws."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shard_id: int
    class_ids: tuple[int, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"


def shard_seed(run_seed: int, shard_id: int) -> int:
    return derive_seed(run_seed, "shard", shard_id)


def make_plan(
    classes: Sequence[int],
    classes_per_shard: int,
    run_seed: int,
    existing: Sequence[ShardSpec] = (),
) -> list[ShardSpec]:
    """Shards covering ``classes``; shards in ``existing`` are kept unchanged.

    New classes (not covered by ``existing``) are chunked in ascending order into
    shards of at most ``classes_per_shard``, numbered after the largest existing id.
    """
    if classes_per_shard <= 0:
        raise PlanError(f"plan.classes_per_shard must be >= 1, got {classes_per_shard}")
    wanted = list(dict.fromkeys(int(c) for c in classes))
    covered = {c for s in existing for c in s.class_ids}
    dropped = sorted(covered - set(wanted))
    if dropped:
        raise PlanError(
            f"the run already holds shards for classes {dropped[:10]} that the new plan leaves out; "
            "a plan can only grow (start a new run with --out to shrink it)"
        )
    new = sorted(c for c in wanted if c not in covered)
    next_id = max((s.shard_id for s in existing), default=-1) + 1
    shards = list(existing)
    for i in range(0, len(new), classes_per_shard):
        sid = next_id + i // classes_per_shard
        shards.append(ShardSpec(shard_id=sid, class_ids=tuple(new[i : i + classes_per_shard]),
                                seed=shard_seed(run_seed, sid)))
    return shards


def planned_classes(cfg: RunConfig, info: DatasetInfo) -> list[int]:
    """The classes the config asks for, checked against the dataset's."""
    if cfg.plan.classes is None:
        return list(range(info.num_classes))
    bad = [c for c in cfg.plan.classes if not 0 <= c < info.num_classes]
    if bad:
        raise PlanError(f"plan.classes: {bad[:10]} are not classes of {info.name} "
                        f"(it has classes 0..{info.num_classes - 1})")
    return list(cfg.plan.classes)


def check_config_against_dataset(cfg: RunConfig, info: DatasetInfo, classes: Sequence[int]) -> None:
    """What would otherwise fail inside every shard task: too few images per class for the
    images asked for, networks that cannot take the dataset's image size."""
    c = cfg.condense
    if info.im_size[0] % c.factor or info.im_size[1] % c.factor:
        raise PlanError(f"condense.factor={c.factor} splits each image into {c.factor}x{c.factor} tiles, but "
                        f"{info.name}'s images are {info.im_size[0]}x{info.im_size[1]}; choose a factor that divides "
                        "both sides")
    need = max(c.ipc * c.factor**2 if c.init == "real" else 0, c.ipc if cfg.evaluate.baselines else 0)
    if need and classes:
        smallest = min(classes, key=lambda k: info.train_counts[k])
        count = info.train_counts[smallest]
        if count < need:
            why = (f"condense.init: real starts from ipc x factor^2 = {need}" if c.init == "real" and need > c.ipc
                   else "condense.init: real starts from" if c.init == "real" else "the coreset baselines select")
            most = count // c.factor**2 if c.init == "real" else count
            raise PlanError(
                f"condense.ipc={c.ipc} but class {smallest} ({info.class_names[smallest]!r}) of {info.name} has only "
                f"{count} train images, and {why} real images per class; set condense.ipc to at most {most}"
            )
    for key, name in [("condense.model", cfg.condense.model)] + [("evaluate.models", m) for m in cfg.evaluate.models]:
        try:
            build_network(name, info.channels, info.num_classes, tuple(info.im_size))
        except ValueError as exc:
            raise PlanError(f"{key}: {name} cannot take {info.name}'s {info.channels}x{info.im_size[0]}x"
                            f"{info.im_size[1]} images: {exc}; choose another network") from None


def estimate_work(shards: Sequence[ShardSpec], iterations: int, batch_real: int, ipc: int) -> dict[str, int]:
    """Images pushed through the embedding network, an upper bound (classes may be smaller)."""
    classes = sum(len(s.class_ids) for s in shards)
    return {
        "shards": len(shards),
        "classes": classes,
        "real_images_embedded": classes * iterations * batch_real,
        "synthetic_forward_backward": classes * iterations * ipc,
    }
