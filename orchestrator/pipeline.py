"""A run as a sequence of stages over one run directory: making or reopening the run record,
then condense -> baselines -> evaluate -> report, each computing only what is missing."""

from __future__ import annotations

from rich.console import Console

from orchestrator.config import RunConfig, apply_overrides, differing_keys, from_dict, identity, load_config
from orchestrator.plan import PlanError, check_config_against_dataset, estimate_work, make_plan, planned_classes
from orchestrator.run_dir import RunDir, RunError
from orchestrator.run_record import RunRecord
from orchestrator.stages.baselines import baselines
from orchestrator.stages.condense import condense
from orchestrator.stages.evaluate import actor_memory, evaluate
from orchestrator.stages.report import TableRow, report
from workers.data import open_dataset


def new_run(cfg: RunConfig) -> RunDir:
    """The run ``cfg`` asks for at ``cfg.output``: the dataset opened once (its info goes into the
    record), the plan made or grown, everything checked; nothing is written."""
    d = cfg.dataset
    info = open_dataset(d.name, d.root, resolution=d.resolution, download=d.download).info
    try:
        classes = planned_classes(cfg, info)
        check_config_against_dataset(cfg, info, classes)
        existing = ()
        if RunDir.exists(cfg.output):
            old = RunDir.load(cfg.output)
            _refuse_other_images(old.config, cfg, cfg.output, allow_growth=True)
            existing = old.shards
        plan = make_plan(classes, cfg.plan.classes_per_shard, cfg.seed, existing)
    except PlanError as exc:
        raise RunError(str(exc)) from None
    return RunDir(cfg.output, RunRecord.build(cfg, plan, info))


def reopened_run(uri: str, overrides: list[str], config_path: str | None = None) -> RunDir:
    """The run at ``uri`` under ``overrides`` that do not change its images (resources,
    evaluation, output); refuses, naming the keys, any that would."""
    run = RunDir.load(uri)
    if config_path:
        asked = load_config(config_path, overrides)
        _refuse_other_images(run.config, asked, uri, allow_growth=False, advice="start a new run with --out instead")
    cfg = from_dict(apply_overrides(run.config.model_dump(mode="json"), [*overrides, f"output={uri}"]))
    _refuse_other_images(run.config, cfg, uri, allow_growth=False)
    return run.with_config(cfg)


def _refuse_other_images(old: RunConfig, new: RunConfig, uri: str, *, allow_growth: bool,
                         advice: str = "resume it with its own config (`dmcondense resume RUN`) or start a new "
                                       "run with --out") -> None:
    a, b = identity(old), identity(new)
    if allow_growth:  # a plan may grow: checked by make_plan
        a["plan"].pop("classes", None)
        b["plan"].pop("classes", None)
    keys = differing_keys(a, b)
    if keys:
        raise RunError(f"{uri} was started with another configuration (differing keys: {', '.join(keys)}), "
                       f"which would change its images; {advice}")


def run_stages(run: RunDir, console: Console, *, condensing: bool = True,
               methods: list[str] | None = None) -> list[TableRow]:
    """The stages of a run, each doing only what the run directory lacks; returns the results
    table. ``methods``: evaluate only these (e.g. kept checkpoints), keeping earlier results."""
    cfg = run.config
    if condensing:
        condense(run, console)
    if methods is None and cfg.evaluate.baselines:
        baselines(run, cfg.evaluate.baselines, console)
    scores = evaluate(run, console, methods) if cfg.evaluate.num_models > 0 else []
    return report(run, scores)


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
                      f"estimate), and the test split {mem.test_split / 2**20:,.1f} MiB once per node (object store)",
                      highlight=False)
    for spec in run.shards[:20]:
        console.print(f"  {spec.name}  seed {spec.seed:>20}  classes {','.join(map(str, spec.class_ids))}")
    if len(run.shards) > 20:
        console.print(f"  ... {len(run.shards) - 20} more shards")
