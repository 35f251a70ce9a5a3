"""The teacher of soft-label evaluation, resolved in the driver from ``evaluate.teacher``: its spec
(what the actors load) and its memory (part of an actor's estimate), checked before any network
trains; its identity, part of every score's settings key, is ``artifacts.scores.teacher_identity``."""

from __future__ import annotations

from orchestrator.artifacts.pool_networks import best_network, read_states
from orchestrator.pool_dir import PoolDir
from orchestrator.run_dir import RunDir, RunError
from workers.teachers import NetworkTeacher, TeacherSpec, TorchvisionTeacher, load_teacher, teacher_memory


def teacher_spec(run: RunDir) -> TeacherSpec | None:
    """None under hard labels; else the pool's best final state or the torchvision network."""
    e = run.config.evaluate
    if e.labels == "hard":
        return None
    if e.teacher.source == "torchvision":
        return TorchvisionTeacher(e.teacher.arch, e.teacher.weights)  # type: ignore[arg-type]
    pool = PoolDir.for_run(run.config, run.dataset)
    index = best_network(pool)
    return NetworkTeacher(pool.record.settings.model, read_states(pool, index)["states"][-1])


def check_teacher(run: RunDir) -> None:
    """Before any network trains: the teacher loads and fits the dataset (classes, image size)."""
    spec = teacher_spec(run)
    if spec is None:
        return
    info = run.dataset
    try:
        load_teacher(spec, channels=info.channels, num_classes=info.num_classes, im_size=tuple(info.im_size))
    except ValueError as exc:
        raise RunError(f"evaluate.teacher: {exc}") from None


def teacher_bytes(run: RunDir, batch: int) -> int:
    """The teacher's memory in an actor that labels ``batch`` images at once (0 under hard labels)."""
    spec = teacher_spec(run) if run.config.evaluate.labels == "soft" else None
    if spec is None:
        return 0
    info = run.dataset
    return teacher_memory(spec, channels=info.channels, num_classes=info.num_classes,
                          im_size=tuple(info.im_size)).bytes(batch)
