"""Planning: classes -> shards, each with a seed derived from (run seed, shard id).

Shard ids never depend on the total class count: a plan that grows (classes
added later) keeps every existing shard as it is and puts the new classes in
new shards with new ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from workers.seeding import derive_seed


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class ShardSpec:
    shard_id: int
    class_ids: tuple[int, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_ids"] = list(self.class_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ShardSpec":
        return cls(int(d["shard_id"]), tuple(int(c) for c in d["class_ids"]), int(d["seed"]))


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
    shards of ``classes_per_shard``, numbered after the largest existing id.
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
    if not existing and classes_per_shard > len(new):
        raise PlanError(
            f"plan.classes_per_shard={classes_per_shard} is larger than the {len(new)} classes to condense; "
            f"set plan.classes_per_shard to at most {len(new)}"
        )
    next_id = max((s.shard_id for s in existing), default=-1) + 1
    shards = list(existing)
    for i in range(0, len(new), classes_per_shard):
        sid = next_id + i // classes_per_shard
        shards.append(ShardSpec(sid, tuple(new[i : i + classes_per_shard]), shard_seed(run_seed, sid)))
    return shards


def estimate_work(shards: Sequence[ShardSpec], iterations: int, batch_real: int, ipc: int) -> dict[str, int]:
    """Images pushed through the embedding network, an upper bound (classes may be smaller)."""
    classes = sum(len(s.class_ids) for s in shards)
    return {
        "shards": len(shards),
        "classes": classes,
        "real_images_embedded": classes * iterations * batch_real,
        "synthetic_forward_backward": classes * iterations * ipc,
    }
