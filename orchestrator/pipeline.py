"""A run as a sequence of stages over one run directory: making or reopening the run record,
then condense -> baselines -> evaluate -> report, each computing only what is missing; and the
applications, which sequence the same stages their own way (class-incremental learning over
a growing run, the NAS proxy on a finished one)."""

from __future__ import annotations

from rich.console import Console

from orchestrator import commands
from orchestrator.artifacts.continual_results import StepScore, write_results
from orchestrator.artifacts.nas_results import NasScore, ProxyQuality
from orchestrator.artifacts.pool_networks import check_pool_ready
from orchestrator.artifacts.training_sets import training_set
from orchestrator.components.eval_pool import actor_memory
from orchestrator.components.teacher import check_teacher
from orchestrator.config import RunConfig, apply_overrides, from_dict, load_config
from orchestrator.plan import PlanError, check_config_against_dataset, estimate_work, make_plan, planned_classes
from orchestrator.pool_dir import pool_of, pool_root, pools_at
from orchestrator.report import TableRow, report
from orchestrator.run_dir import DamagedRecord, RunDir, RunError
from orchestrator.run_identity import differing_keys, identity, unit_device
from orchestrator.run_record import DataContent, RunKind, RunRecord
from orchestrator.stages import continual as continual_stage
from orchestrator.stages.baselines import baselines
from orchestrator.stages.condense import condense, refuse_foreign_shards
from orchestrator.stages.evaluate import evaluate
from orchestrator.stages.nas import nas, sampled
from orchestrator.stages.pool import make_pool as make_pool_stage
from workers.data import DatasetInfo, open_dataset


def new_run(cfg: RunConfig, pool_hint: str = commands.pool("CONFIG"), make_pool: bool = False,
            info: DatasetInfo | None = None, kind: RunKind = "run", download: bool = True) -> RunDir:
    """The run ``cfg`` asks for at ``cfg.output``: the dataset opened once (its info goes into the
    record; pass ``info`` when known), the plan made or grown, everything checked, the pool too
    unless ``make_pool`` (``pool_hint``: the command that makes it); nothing is written, nothing
    is fetched without ``download``."""
    info = info or dataset_info(cfg, download)
    data = DataContent.of(cfg.dataset)
    try:
        classes = planned_classes(cfg, info)
        check_config_against_dataset(cfg, info, classes)
        existing = ()
        old = _existing_run(cfg.output)
        if old is not None:
            old.refuse_other_kind(kind)
            _refuse_other_images(old.config, cfg, cfg.output, allow_growth=True)
            _refuse_other_data(old.record, cfg, data, cfg.output)
            existing = old.shards
        plan = make_plan(classes, cfg.plan.classes_per_shard, cfg.seed, existing)
    except PlanError as exc:
        raise RunError(str(exc)) from None
    run = RunDir(cfg.output, RunRecord.build(cfg, plan, info, kind, data))
    refuse_foreign_shards(run)  # shards left by another configuration (say its run.json was deleted)
    if not make_pool:
        check_pool(run, pool_hint)
    return run


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


def check_pool(run: RunDir, hint: str) -> None:
    """Before any shard starts: the pool the run needs exists, verifies and has its group; the
    teacher of soft labels loads and fits the dataset."""
    pool = pool_of(run.config, run.dataset)
    if pool is None:
        check_teacher(run)
        return
    others = [r.describe() for r in pools_at(pool_root(run.config)) if r.key != pool.record.key]
    try:
        check_pool_ready(pool, run.config.condense.pool_group if run.config.condense.networks == "pool" else None,
                         hint)
    except RunError as exc:
        seen = f" (the pools there were made from other data or settings: {'; '.join(others)})" if others else ""
        raise RunError(f"{exc}{seen}") from None
    check_teacher(run)


def reopened_run(uri: str, overrides: list[str], config_path: str | None = None, make_pool: bool = False) -> RunDir:
    """The run at ``uri`` under ``overrides`` that do not change its images (resources,
    evaluation, output); refuses, naming the keys, any that would. Its pool is checked
    unless ``make_pool``."""
    run = RunDir.load(uri)
    if config_path:
        asked = load_config(config_path, overrides)
        _refuse_other_images(run.config, asked, uri, allow_growth=False, advice="start a new run with --out instead")
    cfg = from_dict(apply_overrides(run.config.model_dump(mode="json"), [*overrides, f"output={uri}"]))
    _refuse_other_images(run.config, cfg, uri, allow_growth=False)
    data = DataContent.of(cfg.dataset)
    _refuse_other_data(run.record, cfg, data, uri)
    run = RunDir(uri, run.record.model_copy(update={"config": cfg, "data": data}))
    if not make_pool:
        check_pool(run, commands.pool(uri))
    return run


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


def _refuse_other_data(old: RunRecord, new: RunConfig, now: DataContent, uri: str) -> None:
    """The dataset ``new`` reads holds, class by class, what the run's units were computed from,
    wherever it lives now (a moved dataset resumes); a run recorded without its dataset's content
    resumes from its own dataset.root only."""
    root = new.dataset.root
    if old.data is None:
        if root != old.config.dataset.root:
            raise RunError(f"{uri} was recorded without its dataset's content, so it resumes only from its own "
                           f"dataset.root ({old.config.dataset.root}), not {root}; or start a new run with --out")
        return
    changed = old.data.changed(now, old.classes)
    if changed:
        names = ", ".join(f"{c} ({old.dataset.class_names[c]})" for c in changed[:10])
        raise RunError(f"the dataset at {root or 'the default root'} is not the one {uri} was planned from: "
                       f"{len(changed)} of its {len(old.classes)} classes changed ({names}"
                       f"{' ...' if len(changed) > 10 else ''}); put their images back as they were, or start "
                       "a new run with --out")


def run_stages(run: RunDir, console: Console, *, condensing: bool = True, methods: list[str] | None = None,
               make_pool: bool = False) -> list[TableRow]:
    """The stages of a run, each doing only what the run directory lacks; returns the results
    table. ``methods``: evaluate only these (e.g. kept checkpoints), keeping earlier results.
    ``make_pool``: train the pool the run needs first (a shard never trains one)."""
    cfg = run.config
    pool = pool_of(run.config, run.dataset)
    if make_pool and pool is not None:
        make_pool_stage(pool, cfg, console)
        check_pool(run, commands.pool(run.uri))
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
        run = continual_stage.step_run(continual_stage.step_config(cfg, seen), info, lambda c: _grow(c, info))
        console.print(f"continual: step {number} of {len(steps)}, {len(seen)} classes seen ({len(new)} new)",
                      highlight=False)
        if "dm" in methods:
            condense(run, console)
        if run.config.evaluate.baselines:
            baselines(run, run.config.evaluate.baselines, console)
        scores += [StepScore(number, len(seen), s.method, s.model, s.seed, s.accuracy)
                   for s in evaluate(run, console, list(methods), test_classes=seen)]
    write_results(run, scores)
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
