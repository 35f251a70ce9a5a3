"""The run's teachers as workers load them: soft-label evaluation's and RDED's, which scores
its crops at condense time. Which network each is, and its identity, is resolved once where
the run is opened (``RunDir.resolved``: ``orchestrator.run_opening``); here are their specs
(what actors and tasks load), their memory (part of an actor's or a task's estimate) and the
check, before any work, that each loads and fits the dataset."""

from __future__ import annotations

import torch
from torch import nn

from orchestrator.artifacts.pool_networks import read_states
from orchestrator.errors import RunError
from orchestrator.resolved import Teacher
from orchestrator.run_dir import RunDir
from workers.teachers import NetworkTeacher, TeacherSpec, TorchvisionTeacher, load_teacher, teacher_memory


def teacher_spec(run: RunDir) -> TeacherSpec | None:
    """Soft labels' teacher (None under hard labels): the pool network's final state or the
    torchvision network."""
    teacher = run.resolved.teacher
    return None if teacher is None else spec_of(run, teacher)


def spec_of(run: RunDir, teacher: Teacher) -> TeacherSpec:
    if teacher.network is None:
        return TorchvisionTeacher(teacher.config.arch, teacher.config.weights)  # type: ignore[arg-type]
    pool = run.resolved.pool_dir
    return NetworkTeacher(pool.record.settings.model, read_states(pool, teacher.network)["states"][-1])


def check_teacher(run: RunDir) -> None:
    """Before any work: each teacher the run needs loads and fits the dataset (classes, image size)."""
    info = run.dataset
    for teacher in (run.resolved.teacher, run.resolved.condense_teacher):
        if teacher is None:
            continue
        try:
            load_teacher(spec_of(run, teacher), channels=info.channels, num_classes=info.num_classes,
                         im_size=tuple(info.im_size))
        except ValueError as exc:
            raise RunError(f"{teacher.where}: {exc}") from None


def teacher_bytes(run: RunDir, batch: int) -> int:
    """The teacher's memory in an actor that labels ``batch`` images at once (0 under hard labels)."""
    spec = teacher_spec(run)
    return 0 if spec is None else _memory(run, spec, batch)


def condense_teacher_bytes(run: RunDir) -> int:
    """RDED's teacher in a shard task: its weights and a forward of condense.rded.batch crops."""
    teacher = run.resolved.condense_teacher
    return 0 if teacher is None else _memory(run, spec_of(run, teacher), run.config.condense.effective_rded.batch)


def _memory(run: RunDir, spec: TeacherSpec, batch: int) -> int:
    info = run.dataset
    return teacher_memory(spec, channels=info.channels, num_classes=info.num_classes,
                          im_size=tuple(info.im_size)).bytes(batch)


_LOADED: dict[tuple[str, str], nn.Module] = {}  # this process's teacher: shard tasks of a worker share it


def loaded_teacher(run: RunDir, device: torch.device) -> nn.Module:
    """RDED's teacher on ``device``, loaded once per worker process (and per teacher identity:
    the weights' hash, so a changed teacher is never served from the cache)."""
    teacher = run.resolved.condense_teacher
    if teacher is None:
        raise ValueError(f"condense.method {run.config.condense.method} has no teacher; only rded does")
    key = (teacher.identity, str(device))
    if key not in _LOADED:
        _LOADED.clear()  # one teacher at a time: a worker never holds two
        info = run.dataset
        _LOADED[key] = load_teacher(spec_of(run, teacher), channels=info.channels, num_classes=info.num_classes,
                                    im_size=tuple(info.im_size), device=device)
    return _LOADED[key]
