"""A run as a sequence of stages over one run directory: making or reopening the run record,
then condense -> baselines -> evaluate -> report, each computing only what is missing; and the
applications, which sequence the same stages their own way (class-incremental learning over
a growing run, the NAS proxy on a finished one)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.console import Console

from orchestrator import commands, commits, storage
from orchestrator.artifacts.continual_results import StepScore, write_results
from orchestrator.artifacts.nas_results import NasScore, ProxyQuality
from orchestrator.artifacts.shards import STAGE, ShardManifest, device_type
from orchestrator.artifacts.training_sets import training_set
from orchestrator.components.eval_pool import actor_memory
from orchestrator.components.pictures import draw_continual
from orchestrator.config import DatasetConfig, RunConfig, apply_overrides, from_dict, load_config
from orchestrator.plan import PlanError, check_config_against_dataset, estimate_work, make_plan, planned_classes
from orchestrator.report import TableRow, report
from orchestrator.errors import DamagedRecord, RunError
from orchestrator.run_dir import RunDir
from orchestrator.run_opening import checked, resolve
from orchestrator.run_identity import differing_keys, identity, shard_identity, unit_device
from orchestrator.run_record import DataContent, RunKind, RunRecord
from orchestrator.stages import continual as continual_stage
from orchestrator.stages.baselines import baselines
from orchestrator.stages.condense import condense
from orchestrator.stages.evaluate import evaluate
from orchestrator.stages.nas import nas, sampled
from orchestrator.stages.pool import make_pool as make_pool_stage
from workers.data import PREPARED, DatasetInfo, open_dataset, open_source


def new_run(cfg: RunConfig, pool_hint: str = commands.pool("CONFIG"), make_pool: bool = False,
            info: DatasetInfo | None = None, kind: RunKind = "run", download: bool = True) -> RunDir:
    """The run ``cfg`` asks for at ``cfg.output``: the dataset opened once (its info goes into the
    record; pass ``info`` when known), the plan made or grown, everything checked, the pool too
    unless ``make_pool`` (``pool_hint``: the command that makes it); nothing is written, nothing
    is fetched without ``download``."""
    info = info or dataset_info(cfg, download)
    data = DataContent.of(cfg.dataset)
    old = _existing_run(cfg.output)
    try:
        classes = planned_classes(cfg, info)
        check_config_against_dataset(cfg, info, classes)
        existing = ()
        if old is not None:
            old.refuse_other_kind(kind)
            if not _edited_keys(old)[1]:  # an edited record is not trusted: its shards' identities are checked below
                _refuse_other_images(old.config, cfg, cfg.output, allow_growth=True)
            moved = [f"dataset.root={cfg.dataset.root}"] if cfg.dataset.root != old.config.dataset.root else []
            changed = _changed_classes(old.record, cfg, data, cfg.output)
            if changed:
                problem = _recompute_problem(old.record, cfg, data, changed)
                raise _data_changed(old.record, cfg, changed, cfg.output, moved, problem)
            existing = old.shards
        plan = make_plan(classes, cfg.plan.classes_per_shard, cfg.seed, existing)
    except PlanError as exc:
        raise RunError(str(exc)) from None
    record = RunRecord.build(cfg, plan, info, kind, data)
    return checked(RunDir(cfg.output, record if old is None else record.carried(old.record)), pool_hint, make_pool)


def _existing_run(uri: str) -> RunDir | None:
    """The run already at ``uri``; None when there is none, or when its record is damaged: the new
    record replaces it, and the units there are adopted only if their identities match."""
    if not RunDir.exists(uri):
        return None
    try:
        return RunDir.load(uri)
    except DamagedRecord:
        return None


def dataset_info(cfg: RunConfig, download: bool = True) -> DatasetInfo:
    """The dataset's info, found once in the driver (a statistics pass for raw sources); fetched
    first where ``dataset.download`` allows it and ``download`` does."""
    d = cfg.dataset
    return open_dataset(d.name, d.root, resolution=d.resolution, download=d.download and download).info


def reopened_run(uri: str, overrides: list[str], config_path: str | None = None, make_pool: bool = False,
                 recompute_changed: bool = False, kind: RunKind | None = None) -> RunDir:
    """The run at ``uri`` under ``overrides`` that do not change its images (resources,
    evaluation, output); refuses, naming the keys, any that would. Its pool is checked unless
    ``make_pool``. Images changed under the run are refused, naming the classes, unless
    ``recompute_changed``: their shards are then condensed again (``run_stages``). ``kind``:
    the kind of run the command takes (None: either)."""
    run = RunDir.load(uri)
    if kind == "run" and run.record.kind == "continual":
        raise RunError(f"{uri} holds a continual run: `{commands.continual('CONFIG', uri)}`, with the config it was "
                       "started with, goes on from where it stopped and scores every step")
    cfg = from_dict(apply_overrides(run.config.model_dump(mode="json"), [*overrides, f"output={uri}"]))
    recorded = _restored_config(run, cfg, overrides)
    if config_path:
        asked = load_config(config_path, overrides)
        _refuse_other_images(recorded, asked, uri, allow_growth=False, advice="start a new run with --out instead")
    _refuse_other_images(recorded, cfg, uri, allow_growth=False)
    data = DataContent.of(cfg.dataset)
    record = run.record.model_copy(update={"config": cfg, "data": data})
    changed = _changed_classes(run.record, cfg, data, uri)
    if changed:
        problem = _recompute_problem(run.record, cfg, data, changed)
        if problem is not None or not recompute_changed:
            raise _data_changed(run.record, cfg, changed, uri, overrides, problem, asked=recompute_changed)
        record = run.record.model_copy(update={"config": cfg}).recomputing(changed, data)
    # the pool's advice keeps this command's settings (the pool's among them)
    return checked(RunDir(uri, record), commands.recompute_changed(uri, overrides) + " --make-pool" if changed
                   else commands.pool(uri, overrides), make_pool)


def _refuse_other_images(old: RunConfig, new: RunConfig, uri: str, *, allow_growth: bool,
                         advice: str = f"resume it with its own config (`{commands.resume('RUN')}`) or start a new "
                                       "run with --out") -> None:
    a, b = identity(old, unit_device(new)), identity(new)  # both as the device that computes next sees them
    if allow_growth:  # a plan may grow: checked by make_plan
        a["plan"].pop("classes", None)
        b["plan"].pop("classes", None)
    keys = differing_keys(a, b)
    if keys:
        raise RunError(f"{uri} was started with another configuration (differing keys: {', '.join(keys)}), "
                       f"which would change its images; {advice}")


# ------------------------------------------------------------------ a hand-edited run.json
def _edited_keys(run: RunDir) -> tuple[str, dict[str, Any]]:
    """Where run.json's config disagrees with what its committed shards were made with (the record
    was edited by hand): the device of the shard compared and each such key with the shards'
    value; no key when none is committed."""
    for spec in run.shards:
        made = commits.read_state(run, run.manifest(spec), ShardManifest, deep=False).manifest
        if made is None or made.identity is None:
            continue
        shards = {k: v for k, v in made.identity.items() if k != "teacher"}  # RDED's teacher: not a config key
        keys = differing_keys(shards, shard_identity(run.config, device_type(made)))
        return device_type(made), {k: _value_at(shards, k) for k in keys if _value_at(shards, k) is not _ABSENT}
    return "", {}


def _restored_config(run: RunDir, cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """The config ``run``'s units were made with: its record's, unless run.json was edited; then
    ``cfg`` (the record under ``overrides``) must set the edited keys back, or this refuses with
    the one command that does."""
    device, edited = _edited_keys(run)
    if not edited:
        return run.config
    back = [commands.setting(k, v) for k, v in edited.items()]
    if any(_value_at(shard_identity(cfg, device), k) != v for k, v in edited.items()):
        kept = [o for o in overrides if o.partition("=")[0].strip() not in edited]
        recorded = shard_identity(run.config, device)
        shown = ", ".join(f"{k} {_value_at(recorded, k)!r} where its shards have {v!r}" for k, v in edited.items())
        raise RunError(f"{run.path('run.json')} does not hold the configuration its committed shards were made with "
                       f"({shown}): it was edited; `{commands.resume(run.uri, [*kept, *back])}` sets it back and "
                       "goes on")
    return from_dict(apply_overrides(run.config.model_dump(mode="json"), back))


_ABSENT = object()


def _value_at(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _ABSENT
        data = data[part]
    return data


# ------------------------------------------------------------------ images changed under a run
def _changed_classes(old: RunRecord, new: RunConfig, now: DataContent, uri: str) -> list[int]:
    """The run's classes whose images are not the ones its units were computed from, wherever the
    dataset lives now (a moved dataset resumes); a run recorded without its dataset's content
    resumes from its own dataset.root only."""
    if old.data is None:
        if new.dataset.root != old.config.dataset.root:
            raise RunError(f"{uri} was recorded without its dataset's content, so it resumes only from its own "
                           f"dataset.root ({old.config.dataset.root}), not {new.dataset.root}; or start a new run "
                           "with --out")
        return []
    return old.data.changed(now, old.classes)


def _recompute_problem(old: RunRecord, cfg: RunConfig, now: DataContent, changed: list[int]) -> str | None:
    """Why the changed classes' shards cannot be condensed again in this run (None: they can)."""
    names = _class_names(cfg.dataset)
    if names != old.dataset.class_names:
        gone = [n for n in old.dataset.class_names if n not in names][:3]
        return (f"its classes are not the run's any more ({len(names)} where the run has "
                f"{old.dataset.num_classes}{'; gone: ' + ', '.join(gone) if gone else ''}), so the class ids would "
                "name other classes")
    try:
        check_config_against_dataset(cfg, old.recomputing(changed, now).dataset, changed)
    except PlanError as exc:
        return str(exc)
    return None


def _class_names(d: DatasetConfig) -> list[str]:
    """The dataset's class names as they are now (no statistics pass)."""
    if d.name == PREPARED:
        return open_dataset(d.name, d.root, resolution=d.resolution).info.class_names
    return list(open_source(d.name, d.root, resolution=d.resolution).class_names)


def _data_changed(old: RunRecord, cfg: RunConfig, changed: list[int], uri: str, sets: list[str],
                  problem: str | None, asked: bool = False) -> RunError:
    """The refusal of images changed under a run, naming the classes, with the way forward: the
    command that condenses their shards again, or, where that cannot be (``problem``), a new run."""
    names = ", ".join(f"{c} ({old.dataset.class_names[c]})" for c in changed[:10])
    what = (f"the dataset at {cfg.dataset.root or 'the default root'} is not the one {uri} was planned from: "
            f"{len(changed)} of its {len(old.classes)} classes changed ({names}{' ...' if len(changed) > 10 else ''})")
    if problem is None:
        return RunError(f"{what}; `{commands.recompute_changed(uri, sets)}` condenses their shards again from the "
                        "images there now (or put their images back as they were)")
    why = "they cannot be condensed again in this run" if asked else "this run cannot condense them again"
    return RunError(f"{what}; {why} ({problem}): put their images back as they were, or start a new run with --out")


def _drop_stale_units(run: RunDir, console: Console) -> RunDir:
    """Under the lease, before any stage: the units made from images that changed since (resume
    --recompute-changed) are dropped, so that their shards and selections are computed again; the
    record then holds no stale class. The new content key already keeps every score of the
    earlier data from being reused."""
    stale = set(run.record.stale)
    if not stale:
        return run
    specs = [spec for spec in run.shards if stale & set(spec.class_ids)]
    methods = storage.list_names(run.path("baselines"))
    for spec in specs:
        storage.remove(run.manifest(spec))  # the commit goes first: the files after it are then unclaimed
        for method in methods:
            storage.remove(run.baseline_manifest(method, spec))
        for path in (run.shard_file(spec), run.progress(spec), run.failure(STAGE, spec)):
            storage.remove(path)
        for folder in (run.path("checkpoints", spec.name), run.snapshot_dir(spec)):
            storage.remove(folder, recursive=True)
    names = ", ".join(f"{c} ({run.dataset.class_names[c]})" for c in sorted(stale)[:10])
    console.print(f"recompute: the images of {len(stale)} classes changed ({names}{' ...' if len(stale) > 10 else ''}"
                  f"): {len(specs)} shards are condensed again from them, with their baseline selections, and every "
                  "set is scored again; the dataset's mean and std stay as recorded, which the other shards were "
                  "normalised with", highlight=False)
    run = replace(run, record=run.record.model_copy(update={"stale": ()}))
    run.save()
    return run


def started(run: RunDir, console: Console, *, make_pool: bool = False) -> RunDir:
    """Under the lease, before any stage: the record saved, the units of images changed since
    dropped, and with ``make_pool`` the pool the run needs trained (a shard never trains one)
    and the run resolved again with its teachers; returns the run the stages take."""
    run.save()
    run = _drop_stale_units(run, console)
    if make_pool and run.resolved.pool is not None:
        make_pool_stage(run.resolved.pool, run.config, console)
        run = checked(run, commands.pool(run.uri))  # its teachers and plan, now that the pool is there
    return run


def run_stages(run: RunDir, console: Console, *, condensing: bool = True,
               methods: list[str] | None = None) -> list[TableRow]:
    """The stages of a started run (``started``), each doing only what the run directory lacks;
    returns the results table. ``methods``: evaluate only these (e.g. kept checkpoints), keeping
    earlier results."""
    cfg = run.config
    if condensing:
        condense(run, console)
    if methods is None and cfg.evaluate.baselines:
        baselines(run, cfg.evaluate.baselines, console)
    scores = evaluate(run, console, methods) if cfg.evaluate.num_models > 0 else []
    return report(run, scores)


def run_continual(cfg: RunConfig, info: DatasetInfo, console: Console) -> list[StepScore]:
    """Class-incremental learning: per step, the run grown by the step's classes, condensed, its
    coreset memories selected, networks trained on the memory of the classes seen; returns every
    network's score, step by step (also in RUN/continual/, with the curves' table and picture)."""
    steps, methods = continual_stage.check_continual(cfg, info), cfg.continual.methods
    scores: list[StepScore] = []
    seen: list[int] = []
    run = None
    for number, new in enumerate(steps, start=1):
        seen = sorted(seen + new)
        run = resolve(continual_stage.step_run(continual_stage.step_config(cfg, seen), info, lambda c: _grow(c, info)))
        console.print(f"continual: step {number} of {len(steps)}, {len(seen)} classes seen ({len(new)} new)",
                      highlight=False)
        if "dm" in methods:
            condense(run, console)
        if run.config.evaluate.baselines:
            baselines(run, run.config.evaluate.baselines, console)
        scores += [StepScore(number, len(seen), s.method, s.model, s.seed, s.accuracy)
                   for s in evaluate(run, console, list(methods), test_classes=seen)]
    write_results(run, scores)
    draw_continual(run, scores)
    return scores


def _grow(cfg: RunConfig, info: DatasetInfo) -> RunDir:
    run = new_run(cfg, info=info, kind="continual")
    run.save()
    return run


def check_nas(run: RunDir) -> None:
    """Before any task starts: every architecture builds, the synthetic set is committed."""
    info = run.dataset
    sampled(run.config, (info.channels, *info.im_size), info.num_classes)
    training_set(run, "dm")


def run_nas(run: RunDir, console: Console) -> tuple[list[NasScore], list[ProxyQuality]]:
    """The NAS proxy on a finished run: the random proxy's selection where asked, then every
    architecture trained on every proxy and on the whole set."""
    if "random" in run.config.nas.proxies:
        baselines(run, ["random"], console)
    return nas(run, console)


def describe_plan(run: RunDir, console: Console) -> None:
    cfg = run.config
    work = estimate_work(run.shards, cfg.condense.iterations, cfg.condense.batch_real, cfg.condense.ipc)
    r = cfg.resources
    console.print(f"[bold]{cfg.name}[/]: {work['classes']} classes of {run.dataset.name} "
                  f"in {work['shards']} shards, ipc {cfg.condense.ipc}, {cfg.condense.iterations} iterations, "
                  f"model {cfg.condense.model}")
    console.print(f"resources per shard: {r.cpus_per_shard:g} CPU, {r.gpus_per_shard:g} GPU; "
                  f"retries: {r.max_retries} on worker death{' or exceptions' if r.retry_exceptions else ''}")
    console.print(f"estimated work: {work['real_images_embedded']:,} real images embedded, "
                  f"{work['synthetic_forward_backward']:,} synthetic forward+backward")
    if cfg.evaluate.num_models > 0:
        mem = actor_memory(run)
        console.print(f"evaluation actors: about {mem.per_actor / 2**20:,.0f} MiB each (the training set "
                      f"{mem.training_set / 2**20:,.1f} MiB, a training step {mem.step / 2**20:,.0f} MiB, an upper "
                      f"estimate{f', the teacher {mem.teacher / 2**20:,.0f} MiB' if mem.teacher else ''}), and the "
                      f"test split {mem.test_split / 2**20:,.1f} MiB once per node (object store)",
                      highlight=False)
    for spec in run.shards[:20]:
        console.print(f"  {spec.name}  seed {spec.seed:>20}  classes {','.join(map(str, spec.class_ids))}")
    if len(run.shards) > 20:
        console.print(f"  ... {len(run.shards) - 20} more shards")
