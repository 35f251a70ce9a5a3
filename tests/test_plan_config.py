"""Planning and configuration: stable shard ids, strict keys, overrides, hashes."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.evaluation_plan import seeds_by_model
from orchestrator.run_identity import config_hash, differing_keys, identity
from orchestrator.plan import PlanError, make_plan, shard_seed

from .conftest import REPO


def test_shards_and_seeds_do_not_depend_on_the_class_count():
    first = make_plan(range(20), 8, run_seed=0)
    assert [s.class_ids for s in first] == [tuple(range(8)), tuple(range(8, 16)), tuple(range(16, 20))]
    grown = make_plan(range(35), 8, run_seed=0, existing=first)
    assert grown[:3] == first  # committed shards keep their ids, classes and seeds
    assert [s.shard_id for s in grown] == [0, 1, 2, 3, 4]
    assert grown[3].class_ids == tuple(range(20, 28)) and grown[4].class_ids == tuple(range(28, 35))
    assert grown[3].seed == shard_seed(0, 3) != shard_seed(1, 3)
    with pytest.raises(PlanError, match="can only grow"):
        make_plan(range(10), 8, run_seed=0, existing=first)
    # classes_per_shard is an upper bound: fewer classes make a smaller shard (a continual step)
    assert [s.class_ids for s in make_plan(range(5), 8, run_seed=0)] == [tuple(range(5))]


def test_unknown_keys_name_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"plan.clases_per_shard: unknown key; did you mean 'classes_per_shard'"):
        load_config(None, ["plan.clases_per_shard=4"])
    with pytest.raises(ConfigError, match=r"condense.ipc: Input should be greater than 0"):
        load_config(None, ["condense.ipc=0"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["condense.ipc"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match=r"resources.worker_env: .*not environment variable names: \['1X'\]"):
        load_config(None, ["resources.worker_env={1X: '1'}"])


def test_worker_env_adds_to_the_allocator_settings_which_reuse_memory_switches():
    from orchestrator.worker_env import ALLOCATOR_ENV, runtime_env

    assert runtime_env(load_config(None).resources) == {"env_vars": ALLOCATOR_ENV}
    assert runtime_env(load_config(None, ["resources.worker_env.OMP_PROC_BIND=close"]).resources) == {
        "env_vars": {**ALLOCATOR_ENV, "OMP_PROC_BIND": "close"}}
    cleared = load_config(None, ["resources.reuse_memory=false"]).resources
    assert runtime_env(cleared) == {}
    assert runtime_env(cleared, EXTRA="1") == {"env_vars": {"EXTRA": "1"}}


def test_allocator_environ_sets_or_removes_only_the_allocator_settings():
    from orchestrator.worker_env import ALLOCATOR_ENV, allocator_environ

    shell = {"PATH": "/bin", "MALLOC_TOP_PAD_": "1"}
    assert allocator_environ(shell, reuse_memory=True) == {"PATH": "/bin", **ALLOCATOR_ENV}
    assert allocator_environ(shell, reuse_memory=False) == {"PATH": "/bin"}


def test_overrides_are_read_as_yaml_and_defaults_follow_the_paper():
    cfg = load_config(REPO / "configs" / "digits.yaml", ["evaluate.models=[ConvNet,AlexNet]"])
    assert cfg.evaluate.models == ["ConvNet", "AlexNet"]
    assert load_config(None, ["condense.ipc=100"]).condense.effective_lr_img == 10.0  # lr 10 above 50 ipc
    assert load_config(None).condense.effective_lr_img == 1.0
    d = load_config(None)
    assert (d.condense.iterations, d.condense.batch_real, d.condense.momentum) == (20000, 256, 0.5)
    assert (d.evaluate.protocol_epochs, d.evaluate.protocol_lr, d.evaluate.batch) == (1000, 0.01, 256)


def test_hash_covers_what_changes_the_images_only():
    a = load_config(None)
    b = load_config(None, ["evaluate.num_models=3", "resources.max_retries=1", "output=elsewhere", "name=other",
                           "condense.checkpoint_every=7", "condense.keep_checkpoints=true", "dataset.download=true"])
    c = load_config(None, ["condense.ipc=3"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert differing_keys(identity(a), identity(c)) == ["condense.ipc"]


def test_cuda_numerics_are_identity_only_where_the_units_compute_on_cuda():
    on_gpu, tf32_off = load_config(None), load_config(None, ["precision.tf32=false"])  # a GPU per shard
    assert differing_keys(identity(on_gpu), identity(tf32_off)) == ["precision.tf32"]
    cpu = ["resources.gpus_per_shard=0"]
    assert identity(load_config(None, cpu)) == identity(load_config(None, [*cpu, "precision.tf32=false"]))
    assert identity(load_config(None, ["resources.device=cpu"])) == identity(load_config(None, cpu))


def test_every_shipped_config_validates():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_compile_auto_pays_off_only_on_long_runs():
    import orchestrator.config as config

    long = load_config(None, [f"condense.iterations={config.COMPILE_FROM_ITERATIONS}"]).condense
    short = load_config(None, [f"condense.iterations={config.COMPILE_FROM_ITERATIONS - 1}"]).condense
    assert long.compile == "auto" and long.effective_compile and not short.effective_compile
    assert load_config(None, ["condense.iterations=10", "condense.compile=true"]).condense.effective_compile
    with pytest.raises(ConfigError, match="compile"):
        load_config(None, ["condense.compile=sometimes"])


def _sets(methods: list[str]) -> list:
    from orchestrator.artifacts.training_sets import TrainingSet

    return [TrainingSet(m, f"key-{m}") for m in methods]


@pytest.mark.parametrize("models,methods,actors", [(3, 3, 2), (20, 3, 4), (5, 1, 8)])
def test_evaluation_jobs_cover_every_seed_once_and_keep_actors_busy(models, methods, actors):
    from orchestrator.components.eval_pool import make_jobs

    baselines = ["random", "herding"][: methods - 1]
    cfg = load_config(None, [f"evaluate.num_models={models}", f"evaluate.baselines={baselines}"])
    jobs = make_jobs(seeds_by_model(cfg), _sets(["dm", *baselines]), n_actors=actors, key="k")
    per_method: dict[str, list[int]] = {}
    for job in jobs:
        per_method.setdefault(job.data.method, []).extend(job.seeds)
    assert sorted(per_method) == sorted(["dm", *baselines])
    seeds = per_method["dm"]
    assert len(seeds) == len(set(seeds)) == models
    assert all(sorted(v) == sorted(seeds) for v in per_method.values())  # paired across methods
    # the largest job is a small share of the work: no actor waits on one long straggler
    assert max(len(j.seeds) for j in jobs) <= max(1, models * methods // (2 * actors))


def test_evaluation_jobs_leave_out_the_networks_already_scored():
    from orchestrator.evaluation_plan import planned_networks
    from orchestrator.components.eval_pool import make_jobs

    cfg = load_config(None, ["evaluate.num_models=4", "evaluate.baselines=[random]"])
    sets = _sets(["dm", "random"])
    every = {(j.data.method, j.model, s) for j in make_jobs(seeds_by_model(cfg), sets, n_actors=2, key="k") for s in j.seeds}
    assert every == planned_networks(cfg, ["dm", "random"]) and len(every) == 8
    done = set(sorted(every)[:3])
    left = {(j.data.method, j.model, s) for j in make_jobs(seeds_by_model(cfg), sets, n_actors=2, key="k", done=done) for s in j.seeds}
    assert left == every - done


def test_scores_are_kept_apart_by_the_settings_that_shape_a_score():
    from orchestrator.evaluation_plan import settings_key

    base = settings_key(load_config(None, []))
    # how the work is spread does not change a score; how a network is trained does
    assert settings_key(load_config(None, ["evaluate.num_actors=1", "evaluate.num_models=3"])) == base
    for changed in ("evaluate.epochs=7", "evaluate.lr=0.1", "evaluate.batch=64", "evaluate.vectorized=true",
                    "condense.dsa_strategy=color_crop"):
        assert settings_key(load_config(None, [changed])) != base, changed


@pytest.mark.parametrize("resources,num_actors,expected", [
    ({"CPU": 3, "GPU": 2}, None, (3, True)),  # 8 GPU slots, but each actor takes a CPU too
    ({"CPU": 16, "GPU": 2}, None, (8, True)),  # 4 actors per GPU
    ({"CPU": 2}, None, (2, False)),
    ({"CPU": 16}, None, (4, False)),
    ({"CPU": 2}, 6, (2, False)),
])
def test_evaluation_pool_never_exceeds_what_the_cluster_hosts(resources, num_actors, expected):
    from orchestrator.components.eval_pool import pool_capacity

    sets = [f"evaluate.num_actors={num_actors}"] if num_actors else []
    assert pool_capacity(load_config(None, sets), resources) == expected


def test_evaluation_job_labels_are_unique_and_name_their_networks():
    from orchestrator.components.eval_pool import make_jobs

    cfg = load_config(None, ["evaluate.num_models=5", "evaluate.baselines=[random]"])
    labels = [j.label for j in make_jobs(seeds_by_model(cfg), _sets(["dm", "random"]), n_actors=2, key="k")]
    assert len(labels) == len(set(labels)) > 2
    assert "dm / ConvNet, networks 1-2" in labels


def test_herdings_feature_training_takes_the_evaluations_settings_and_precision():
    from orchestrator.artifacts.selections import baseline_identity
    from orchestrator.components.settings import train_settings
    from orchestrator.pool_dir import PoolDir
    from workers.data import open_dataset

    cfg = load_config(None, ["evaluate.coreset_feature_epochs=3", "evaluate.lr=0.05", "evaluate.batch=64",
                             "precision.tf32=false", "precision.deterministic=true"])
    got = train_settings(cfg, "coreset_features")
    assert (got.epochs, got.lr, got.batch) == (3, 0.05, 64)  # before: TrainSettings(epochs=3)'s defaults
    assert (got.precision.tf32, got.precision.deterministic) == (False, True)
    assert got.labels == "hard"  # herding's features learn the real labels, whatever the evaluation's labels

    def identity(*sets: str) -> str:
        c = load_config(None, ["evaluate.coreset_feature_epochs=3", *sets])
        return baseline_identity(c, "herding", PoolDir.for_run(c, open_dataset("digits").info))

    assert identity("evaluate.lr=0.05") != identity("evaluate.lr=0.01")  # a selection of other features is redone
