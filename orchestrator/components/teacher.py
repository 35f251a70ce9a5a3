"""The run's teachers as workers load them: soft-label evaluation's and RDED's, which scores
its crops at condense time. Which network each is, and its identity, is resolved once where
the run is opened (``RunDir.resolved``: ``orchestrator.run_opening``); here are their specs
(what actors and tasks load), their memory (part of an actor's or a task's estimate) and the
check, before any work, that each loads and fits the dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from orchestrator.artifacts.pool_networks import read_states
from orchestrator.errors import RunError
from orchestrator.resolved import Teacher
from orchestrator.run_dir import RunDir
from orchestrator.components.settings import rded_settings
from orchestrator.config import RunConfig
from orchestrator.plan import ShardSpec
from workers.data.types import DatasetInfo
from workers.rded import class_bytes
from workers.teachers import NetworkTeacher, TeacherMemory, TeacherSpec, TorchvisionTeacher, load_teacher


def teacher_spec(run: RunDir) -> TeacherSpec | None:
    """Soft labels' teacher (None under hard labels): the pool network's final state or the
    torchvision network."""
    teacher = run.resolved.teacher
    return None if teacher is None else spec_of(run, teacher)


def spec_of(run: RunDir, teacher: Teacher) -> TeacherSpec:
    if teacher.network is None:
        return TorchvisionTeacher(teacher.config.arch, teacher.config.weights)  # type: ignore[arg-type]
    pool = teacher.pool  # set for every pool teacher: the run's pool or the one teacher.pool names
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
    teacher = run.resolved.teacher
    return 0 if teacher is None or teacher.memory is None else teacher.memory.bytes(batch)


def rded_task_memory(cfg: RunConfig, info: DatasetInfo, shards: Sequence[ShardSpec], teacher: TeacherMemory) -> int:
    """What the largest RDED shard task holds (bytes, Ray's memory reservation): its classes'
    training images (uint8), one class's drawn images and crops, and the teacher with a batch
    of condense.rded.batch crops."""
    settings = rded_settings(cfg)
    image = info.channels * info.im_size[0] * info.im_size[1]
    real = max(sum(info.train_counts[k] for k in spec.class_ids) for spec in shards) * image
    return real + class_bytes(settings, info.channels, tuple(info.im_size)) + teacher.bytes(settings.batch)


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
