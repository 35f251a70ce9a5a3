"""The condense stage: one task per shard of the plan without a valid commit.

Failures cost only their shard: Ray runs a task again when its worker dies
(``resources.max_retries``) or when it raised (``resources.retry_exceptions``); a
shard that still fails is recorded in RUN/failed/condense/ while the others finish,
and a re-run (``dmcondense resume``) computes only what is missing, from each
shard's last checkpoint.
"""

from __future__ import annotations

from rich.console import Console

from orchestrator import commits, ray_work, storage
from orchestrator.commits import UnitState
from orchestrator.plan import ShardSpec
from orchestrator.run_dir import RunDir
from orchestrator.stages import StageFailed
from orchestrator.stages.worker_setup import check_gpus_usable
from orchestrator.stages.condense_shard import ShardManifest, condense_shard

STAGE = "condense"


def shard_state(run: RunDir, spec: ShardSpec, *, deep: bool = True) -> UnitState[ShardManifest]:
    """committed, corrupt (files or manifest no longer match), failed, in_progress or pending."""
    st = commits.read_state(run, run.manifest(spec), ShardManifest, deep=deep)
    if st.manifest is not None and (st.manifest.classes != list(spec.class_ids) or st.manifest.seed != spec.seed):
        return UnitState("corrupt", "manifest does not match the plan (classes or seed differ)", st.manifest)
    if st.state != "pending":
        return st
    error = commits.failure_of(run.failure(STAGE, spec))
    if error is not None:
        return UnitState("failed", error)
    if storage.exists(run.progress(spec)):
        iteration = storage.read_json(run.progress(spec)).get("checkpoint_iteration", 0)
        return UnitState("in_progress", f"checkpoint at iteration {iteration}")
    return st


def condense(run: RunDir, console: Console) -> None:
    """Compute every shard of the plan that has no valid commit; raises StageFailed naming the
    shards that failed after their retries (the others are committed)."""
    todo: list[ShardSpec] = []
    for spec in run.shards:
        st = shard_state(run, spec)
        if st.state == "committed":
            continue
        if st.state == "corrupt":  # the manifest no longer vouches for the files: recompute
            storage.remove(run.manifest(spec))
        storage.remove(run.failure(STAGE, spec))
        todo.append(spec)
    done = len(run.shards) - len(todo)
    if done:
        console.print(f"condense: {done} shards already committed; {len(todo)} to compute", highlight=False)
    if not todo:
        return
    resources, iterations = run.config.resources, run.config.condense.iterations
    ray_work.check_fits(resources.cpus_per_shard, resources.gpus_per_shard, "a shard")
    check_gpus_usable(run.config.resources, resources.gpus_per_shard, "shards (resources.gpus_per_shard)")
    outcome = ray_work.run_tasks(
        condense_shard, [ray_work.Work(spec.name, (spec,), units=iterations) for spec in todo], shared=(run,),
        options=ray_work.task_options(run.config), label=STAGE, unit="it", console=console,
        limit=resources.max_concurrent_shards, with_context=True, done_units=done * iterations,
    )
    by_name = {spec.name: spec for spec in todo}
    for name, error in outcome.failed.items():
        commits.record_failure(run.failure(STAGE, by_name[name]), error)
    if outcome.failed:
        raise StageFailed(STAGE, outcome.failed, again=f"dmcondense resume {run.uri}")
