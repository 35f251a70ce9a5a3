"""Where a run is opened: the one place that resolves what every stage needs (its pool, its
teachers with their identities, its evaluation plan) and puts it on the handle
(``RunDir.resolved``); stages, tasks, actors and readers take it from there.

A reader opens a run with ``opened``; a command that computes checks it with ``checked``
(the pool there and verified, each teacher loading, no shard of another configuration).
"""

from __future__ import annotations

import functools
from dataclasses import replace

from orchestrator import storage
from orchestrator.artifacts.pool_networks import (
    best_network, check_pool_ready, final_accuracies, network_state, real_accuracy,
)
from orchestrator.artifacts.selections import baseline_identity
from orchestrator.artifacts.shards import refuse_foreign_shards
from orchestrator.artifacts.training_sets import data_key
from orchestrator.components.teacher import check_teacher, rded_task_memory
from orchestrator.config import RunConfig, TeacherConfig
from orchestrator.errors import RunError
from orchestrator.evaluation_plan import EvaluationPlan, asked_methods, seeds_by_model, settings_key
from orchestrator.pool_dir import PoolDir, pool_key, pool_root, pools_at
from orchestrator.resolved import Resolved, Teacher
from orchestrator.run_dir import RunDir
from orchestrator.run_identity import DEVICES, shard_identity
from workers.coreset import METHODS as CORESET_METHODS
from workers.data.types import DatasetInfo
from workers.teachers import NetworkTeacher, TeacherMemory, TorchvisionTeacher, teacher_memory


def opened(uri: str) -> RunDir:
    """The run at ``uri`` as a reader sees it (report, status, export), resolved."""
    return resolve(RunDir.load(uri))


def checked(run: RunDir, pool_hint: str, make_pool: bool = False) -> RunDir:
    """``run`` resolved for a command that computes, before any work: the pool it reads exists
    and verifies (unless ``make_pool``: ``pool_hint`` is the command that makes it), each
    teacher loads and fits the dataset, and no committed shard is another configuration's."""
    run = resolve(run)
    pool = run.resolved.pool
    if pool is not None and not make_pool:
        _check_pool(run, pool, pool_hint)
    if run.resolved.ready:
        check_teacher(run)
        refuse_foreign_shards(run)  # say its run.json was deleted or edited
    return run


def resolve(run: RunDir) -> RunDir:
    """``run`` with its pool, teachers and evaluation plan resolved; a teacher of a pool not
    trained yet leaves it not ready (``Resolved.ready``) until it is resolved again."""
    cfg, info = run.config, run.dataset
    pool = pool_dir(cfg, info)
    uses = uses_pool(cfg)
    e, condense = cfg.evaluate, condense_teacher_config(cfg)
    baselines = {method: baseline_identity(cfg, method, pool) for method in CORESET_METHODS}
    finals = final_accuracies(pool)  # each network's manifest read once: trained?, the best, the real accuracy
    real = real_accuracy(finals)
    if any(_of_run_pool(t) for t in (_soft(cfg), condense)) and None in finals:
        return replace(run, resolution=Resolved(pool, uses, None, None, None, None,
                                                None if condense else _identities(cfg), baselines, real))
    teacher = _teacher("evaluate.teacher", e.teacher, pool, finals, info) if _soft(cfg) else None
    own = cfg.condense.teacher is not None  # RDED's own teacher, else the evaluation's
    rded = None if condense is None else _teacher(
        "condense.teacher" if own else "evaluate.teacher", condense, pool, finals, info,
        where=None if own else "evaluate.teacher (RDED's teacher while condense.teacher is null)")
    memory = None if rded is None or rded.memory is None else rded_task_memory(cfg, info, run.shards, rded.memory)
    partial = replace(run, resolution=Resolved(pool, uses, teacher, rded, None, memory, _identities(cfg, rded),
                                               baselines, real))
    keys = {m: data_key(partial, m) for m in asked_methods(cfg)}
    plan = EvaluationPlan(settings_key(cfg, None, teacher.score_identity if teacher else None), keys,
                          seeds_by_model(cfg))
    return replace(partial, resolution=replace(partial.resolved, plan=plan))


def _identities(cfg: RunConfig, rded: Teacher | None = None) -> dict[str, dict]:
    """What a shard computed on each device type must have been made under: the config's shard
    identity and, for RDED, the teacher that chose its crops (its weights' identity)."""
    identities = {device: shard_identity(cfg, device) for device in DEVICES}
    if rded is not None:
        for data in identities.values():
            data["teacher"] = rded.identity
    return identities


def pool_dir(cfg: RunConfig, info: DatasetInfo) -> PoolDir:
    """The pool ``cfg`` names for data of ``info`` (made or not)."""
    return PoolDir.for_run(cfg, info)


def uses_pool(cfg: RunConfig) -> bool:
    """Whether a run's shards, baselines or teachers (soft labels', RDED's) read its pool."""
    e, c = cfg.evaluate, cfg.condense
    teachers = [t for t in (_soft(cfg), condense_teacher_config(cfg)) if t is not None]
    return c.networks in ("pool", "blend") or "forgetting" in e.baselines or any(_of_run_pool(t) for t in teachers)


def _of_run_pool(config: TeacherConfig | None) -> bool:
    """Whether a teacher is a network of the run's own pool (not of a pool named by teacher.pool)."""
    return config is not None and config.source == "pool" and config.pool is None


def condense_teacher_config(cfg: RunConfig) -> TeacherConfig | None:
    """The teacher RDED scores its crops with (condense.teacher, else evaluate.teacher); None for
    the other methods."""
    if cfg.condense.method != "rded":
        return None
    return cfg.condense.teacher or cfg.evaluate.teacher


def _soft(cfg: RunConfig) -> TeacherConfig | None:
    e = cfg.evaluate
    return e.teacher if e.protocol_labels == "soft" else None


def _teacher(key: str, config: TeacherConfig, pool: PoolDir, finals: list[float | None],
             info: DatasetInfo, where: str | None = None) -> Teacher:
    """The pool network with the best final state (``finals``: the pool's final accuracies; its
    states' sha256 in its identity), or the torchvision architecture with its weights' sha256.
    ``key``: its config key; ``where``: how a failure names it (default: the key)."""
    where = where or key
    if config.source == "pool":
        if config.pool is not None:
            pool, finals = _named_pool(f"{key}.pool", config.pool, info)
        index = best_network(finals)
        states = network_state(pool, index, deep=False).manifest.files["states"]  # type: ignore[union-attr]
        named = f"pool {pool.record.key} net {index}"
        memory = teacher_memory(NetworkTeacher(pool.record.settings.model, {}), channels=info.channels,  # no weights
                                num_classes=info.num_classes, im_size=tuple(info.im_size))  # are read
        return Teacher(where, config, f"{named} {states.sha256[:16]}", named, memory, index, pool)
    weights = config.weights or ""
    try:
        named = f"{config.arch} {_weights_digest(weights, storage.mtime_ns(weights))}"
    except RunError as exc:
        raise RunError(f"{where}: {exc}") from None
    return Teacher(where, config, named, named,
                   _torchvision_memory(config.arch or "", info.channels, info.num_classes, tuple(info.im_size)))


def _named_pool(key: str, uri: str, info: DatasetInfo) -> tuple[PoolDir, list[float | None]]:
    """The pool a teacher names (``key``: teacher.pool) and its networks' final accuracies: made
    on the run's dataset, with a committed network."""
    try:
        pool = PoolDir.at(uri)
    except RunError as exc:
        raise RunError(f"{key}: {exc}") from None
    made_on = pool.record.info
    if pool_key(info, pool.record.settings) != pool.record.key:  # the key hashes all the data that shapes a pool
        raise RunError(f"{key}: the pool at {pool.uri} was trained on {_data_words(made_on)}, not on this run's "
                       f"{_data_words(info)}; name a pool made from this run's dataset")
    finals = final_accuracies(pool)
    if all(a is None for a in finals):
        raise RunError(f"{key}: the pool at {pool.uri} has no trained network yet; the `dmcondense pool` "
                       "command that made it trains its networks when run again")
    return pool, finals


def _data_words(info: DatasetInfo) -> str:
    return (f"{info.name} ({len(info.class_names)} classes, {sum(info.train_counts)} images of "
            f"{info.channels}x{info.im_size[0]}x{info.im_size[1]})")


@functools.lru_cache(maxsize=8)
def _torchvision_memory(arch: str, channels: int, num_classes: int, im_size: tuple[int, int]) -> TeacherMemory | None:
    """Sized once per architecture and image shape (one forward): a driver resolves a run more than
    once. None where the architecture is unknown or cannot take these images: the check of the
    teacher (``checked``, before any work) names the problem, after the weights' own."""
    try:
        return teacher_memory(TorchvisionTeacher(arch, ""), channels=channels, num_classes=num_classes,
                              im_size=im_size)
    except (ValueError, RuntimeError):  # torch raises RuntimeError for a forward of the wrong shape
        return None


@functools.lru_cache(maxsize=8)
def _weights_digest(uri: str, mtime_ns: int | None) -> str:
    """Hashed once per version of the file: a driver resolves a run more than once."""
    if mtime_ns is None:
        raise RunError(f"teacher weights {uri}: no such file; give the path or URI of a saved state dict")
    return storage.sha256_of(uri)[:16]


def _check_pool(run: RunDir, pool: PoolDir, hint: str) -> None:
    """The pool the run reads exists, verifies and has its group; naming the pools its root holds
    when they were made from other data or settings."""
    c = run.config.condense
    try:
        check_pool_ready(pool, c.pool_group if c.networks == "pool" else None, hint)
    except RunError as exc:
        others = [r.describe() for r in pools_at(pool_root(run.config)) if r.key != pool.record.key]
        seen = f" (the pools there were made from other data or settings: {'; '.join(others)})" if others else ""
        raise RunError(f"{exc}{seen}") from None
