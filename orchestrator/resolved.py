"""What a run resolves once, where it is opened (``orchestrator.run_opening``), and carries on
its handle (``RunDir.resolved``) to every stage, task, actor and reader: its pool, its
teachers with their identities and its evaluation plan. Nothing else works these out again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.config import TeacherConfig
from orchestrator.errors import RunError
from orchestrator.evaluation_plan import EvaluationPlan
from orchestrator.pool_dir import PoolDir
from workers.teachers import TeacherMemory


@dataclass(frozen=True)
class Teacher:
    """A teacher as the run uses it: soft labels' (``evaluate.teacher``) or RDED's."""

    where: str  # the config key it comes from, named when it fails to load
    config: TeacherConfig
    identity: str  # the pool's key, network and states' sha256, or the architecture and its weights' sha256
    score_identity: str  # the form the scores' settings keys have named it by since soft labels came
    # its weights and a forward's activations, from its architecture alone (None: it cannot take the
    # dataset's images, which the check before any work names: run_opening.checked)
    memory: TeacherMemory | None
    network: int | None = None  # a pool teacher: the pool network whose final state it is
    pool: PoolDir | None = None  # a pool teacher: the pool that network is in (the run's or teacher.pool)


@dataclass(frozen=True)
class Resolved:
    """A run's pool, teachers, evaluation plan and the identities its units must have. A run
    opened to make its pool first has its pool but not yet its pool teachers and plan
    (``ready`` False) until it is resolved again."""

    pool_dir: PoolDir  # where the run's pool is (made or not, needed or not: the real data's accuracy)
    uses_pool: bool  # its shards, baselines or teachers read the pool
    teacher: Teacher | None  # soft labels' (None under hard labels)
    condense_teacher: Teacher | None  # RDED's (None for the other methods)
    plan: EvaluationPlan | None
    condense_memory: int | None = None  # bytes Ray reserves for RDED's largest shard task (None: no reservation)
    # per device type ("cpu", "cuda"): what a committed shard was made under (None: RDED's teacher not resolved yet)
    identities: Mapping[str, dict] | None = None
    baseline_identities: Mapping[str, str] = field(default_factory=dict)  # per coreset method: its selections'
    real_accuracy: float | None = None  # the pool's mean final validation accuracy (None: no network committed)

    @property
    def shard_identities(self) -> Mapping[str, dict]:
        if self.identities is None:
            self.require_ready()
        return self.identities  # type: ignore[return-value]

    @property
    def pool(self) -> PoolDir | None:
        """The pool the run reads (None: it reads none)."""
        return self.pool_dir if self.uses_pool else None

    @property
    def ready(self) -> bool:
        return self.plan is not None

    def require_ready(self) -> None:
        """Raises, naming the fix, while a teacher's pool is not trained yet."""
        if self.plan is None:
            raise RunError(f"the run's teacher is a network of its pool at {self.pool_dir.uri}, which is not "
                           "trained yet: --make-pool trains it first")

    @property
    def evaluation(self) -> EvaluationPlan:
        self.require_ready()
        return self.plan  # type: ignore[return-value]
