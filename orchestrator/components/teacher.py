"""The teachers, resolved from the config: soft-label evaluation's (``evaluate.teacher``) and
RDED's, which scores its crops at condense time (``condense.teacher``, else the evaluation's):
their specs (what actors and tasks load), their memory (part of an actor's or a task's
estimate), checked before any work. A score's teacher identity is
``artifacts.scores.teacher_identity``; a shard's, ``artifacts.shards.teacher_identity``."""

from __future__ import annotations

import torch
from torch import nn

from orchestrator.artifacts.pool_networks import best_network, read_states
from orchestrator.artifacts.shards import condense_teacher, teacher_identity
from orchestrator.config import TeacherConfig
from orchestrator.pool_dir import PoolDir
from orchestrator.run_dir import RunDir, RunError
from workers.teachers import NetworkTeacher, TeacherSpec, TorchvisionTeacher, load_teacher, teacher_memory


def teacher_spec(run: RunDir) -> TeacherSpec | None:
    """None under hard labels; else the pool's best final state or the torchvision network."""
    e = run.config.evaluate
    if e.labels == "hard":
        return None
    return spec_of(run, e.teacher)


def condense_teacher_spec(run: RunDir) -> TeacherSpec | None:
    """RDED's teacher (None for the other methods)."""
    teacher = condense_teacher(run.config)
    return None if teacher is None else spec_of(run, teacher)


def spec_of(run: RunDir, teacher: TeacherConfig) -> TeacherSpec:
    if teacher.source == "torchvision":
        return TorchvisionTeacher(teacher.arch, teacher.weights)  # type: ignore[arg-type]
    pool = PoolDir.for_run(run.config, run.dataset)
    index = best_network(pool)
    return NetworkTeacher(pool.record.settings.model, read_states(pool, index)["states"][-1])


def check_teacher(run: RunDir) -> None:
    """Before any work: each teacher the run needs loads and fits the dataset (classes, image size)."""
    for where, spec in (("evaluate.teacher", teacher_spec(run)),
                        (_condense_teacher_key(run), condense_teacher_spec(run))):
        if spec is None:
            continue
        info = run.dataset
        try:
            load_teacher(spec, channels=info.channels, num_classes=info.num_classes, im_size=tuple(info.im_size))
        except ValueError as exc:
            raise RunError(f"{where}: {exc}") from None


def _condense_teacher_key(run: RunDir) -> str:
    return "condense.teacher" if run.config.condense.teacher is not None else \
        "evaluate.teacher (RDED's teacher while condense.teacher is null)"


def teacher_bytes(run: RunDir, batch: int) -> int:
    """The teacher's memory in an actor that labels ``batch`` images at once (0 under hard labels)."""
    spec = teacher_spec(run) if run.config.evaluate.labels == "soft" else None
    return 0 if spec is None else _memory(run, spec, batch)


def condense_teacher_bytes(run: RunDir) -> int:
    """RDED's teacher in a shard task: its weights and a forward of condense.rded.batch crops."""
    spec = condense_teacher_spec(run)
    return 0 if spec is None else _memory(run, spec, run.config.condense.effective_rded.batch)


def _memory(run: RunDir, spec: TeacherSpec, batch: int) -> int:
    info = run.dataset
    return teacher_memory(spec, channels=info.channels, num_classes=info.num_classes,
                          im_size=tuple(info.im_size)).bytes(batch)


_LOADED: dict[tuple[str, str], nn.Module] = {}  # this process's teacher: shard tasks of a worker share it


def loaded_teacher(run: RunDir, device: torch.device) -> nn.Module:
    """RDED's teacher on ``device``, loaded once per worker process (and per teacher identity:
    the weights' hash, so a changed teacher is never served from the cache)."""
    teacher = condense_teacher(run.config)
    if teacher is None:
        raise ValueError(f"condense.method {run.config.condense.method} has no teacher; only rded does")
    key = (teacher_identity(run, teacher), str(device))
    if key not in _LOADED:
        _LOADED.clear()  # one teacher at a time: a worker never holds two
        info = run.dataset
        _LOADED[key] = load_teacher(spec_of(run, teacher), channels=info.channels, num_classes=info.num_classes,
                                    im_size=tuple(info.im_size), device=device)
    return _LOADED[key]
