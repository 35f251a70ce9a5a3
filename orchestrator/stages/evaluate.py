"""The evaluate stage: every method's set scored by networks trained from scratch on the
evaluation actor pool (``orchestrator.components.eval_pool``, an actor stage), only those not
scored yet under the run's evaluation settings; the results table written to eval/results.parquet."""

from __future__ import annotations

from rich.console import Console

from orchestrator.artifacts.fair_scoring import with_fair_scores
from orchestrator.artifacts.scores import Score, result_order, stored_scores, write_results
from orchestrator.artifacts.shards import snapshot_iteration
from orchestrator.artifacts.training_sets import training_set
from orchestrator.components.eval_pool import EvalActor, actor_pool, make_jobs, read_test_split
from orchestrator.config import RunConfig
from orchestrator.evaluation_plan import EvaluationPlan, asked_methods, settings_key
from orchestrator.run_dir import RunDir
from orchestrator.stage_runner import ActorStage, Unit, run_units

STAGE = "evaluate"


def evaluate(run: RunDir, console: Console, methods: list[str] | None = None,
             test_classes: list[int] | None = None) -> list[Score]:
    """Score ``methods`` (default: dm and the baselines asked for) with the run's evaluation
    settings, on the test images of ``test_classes`` (None: all), training only networks not
    scored yet under them; writes eval/results.parquet and returns its rows. Raises
    StageFailed naming failed jobs (the others' scores are kept)."""
    cfg, plan, teacher = run.config, run.resolved.evaluation, run.resolved.teacher
    sets = [training_set(run, m) for m in (methods or asked_methods(cfg))]
    key = plan.settings_key if test_classes is None else \
        settings_key(cfg, test_classes, teacher.score_identity if teacher else None)
    planned = plan.networks_of([ts.method for ts in sets])
    keys = {**plan.data_keys, **{ts.method: ts.data_key for ts in sets}}
    done = {s.network for s in stored_scores(run, key, keys)} & planned
    actors = actor_pool(cfg)
    jobs = make_jobs(plan.seeds, sets, actors.count, key, done, test_classes)
    if done and jobs:
        console.print(f"evaluate: {len(done)} of {len(planned)} networks were scored by an earlier attempt; "
                      f"training the other {len(planned) - len(done)}", highlight=False)
    # The test split goes with every call, not to the constructor: Ray maps it from the node's
    # object store each time (no copy), and a restarted actor never needs it again.
    stage = ActorStage(STAGE, "networks", EvalActor, (run, actors.use_gpu), "score", actors,
                       shared_task=(read_test_split, (run,)))
    units = [Unit(j.label, (j,), len(j.seeds), failure=run.job_failure(STAGE, j.label)) for j in jobs]
    run_units(stage, units, console, done_units=len(done))
    results = with_fair_scores(run, sorted(_asked(cfg, plan, stored_scores(run, key, keys)), key=result_order),
                               test_classes)
    write_results(run, results)
    return results


def _asked(cfg: RunConfig, plan: EvaluationPlan, scores: list[Score]) -> list[Score]:
    """The scores the config asks for, and those of every kept checkpoint scored under the same
    settings (an iteration sweep stays in the results); the others stay in the score store."""
    methods = set(asked_methods(cfg))
    networks = {(model, s) for model, seeds in plan.seeds.items() for s in seeds}
    return [s for s in scores if (s.model, s.seed) in networks
            and (s.method in methods or snapshot_iteration(s.method) is not None)]
