"""One source per name list, and test tiers by rule (tests/conftest.py)."""

from __future__ import annotations

import typing

import pytest

from orchestrator.config import RECIPES, CondenseConfig, NasSpace
from workers.matching import CharacteristicFunctions, KernelMMD, MeanLoss, matching_loss
from workers.networks import CONVNET_WORDS, NETWORK_NAMES, parse_convnet


def test_network_names_and_the_nas_vocabulary_come_from_the_grammar():
    for field, words in CONVNET_WORDS.items():
        for word, value in words.items():
            assert getattr(parse_convnet(f"ConvNet{word}"), field) == value
            assert f"ConvNet{word}" in NETWORK_NAMES  # every word has its example
    for field, name in (("act", "activations"), ("norm", "norms"), ("pool", "pools")):
        allowed = typing.get_args(typing.get_args(NasSpace.model_fields[name].annotation)[0])
        assert set(allowed) == set(CONVNET_WORDS[field].values())
    recipe = typing.get_args(CondenseConfig.model_fields["recipe"].annotation)[0]
    assert set(typing.get_args(recipe)) == set(RECIPES)


def test_the_matching_losses_sit_behind_one_interface():
    assert isinstance(matching_loss("mean", "linear"), MeanLoss)
    assert isinstance(matching_loss("mmd", "linear"), MeanLoss)  # the same loss: the means' distance
    assert matching_loss("mmd", "rbf") == KernelMMD("rbf") and not KernelMMD.means_only
    assert isinstance(matching_loss("cfd", "linear"), CharacteristicFunctions)


def test_tests_that_start_ray_or_a_process_are_in_the_slow_tier_by_rule(request):
    marked = {item.nodeid: item.get_closest_marker("ray") is not None for item in request.session.items}
    if len(marked) < 100:
        pytest.skip("checked when the whole suite is collected")
    slow = ["tests/test_local_ray.py::test_local_ray_started_by_the_program_listens_on_loopback_only",  # subprocess
            "tests/test_cuda.py::test_a_shard_end_to_end_and_a_resume_on_the_gpu"]  # the CLI, which starts Ray
    assert all(marked[n] for n in slow if n in marked)  # (a fast-tier run has deselected them)
    assert not marked["tests/test_plan_config.py::test_hash_covers_what_changes_the_images_only"]
    fast = next(i for i in request.session.items if i.nodeid.endswith("test_hash_covers_what_changes_the_images_only"))
    assert fast.get_closest_marker("timeout").args == (60,)


# ------------------------------------------------------------------ one place resolves the run
RESOLVERS = {"for_run", "pool_of", "best_network", "uses_pool", "condense_teacher_config", "pool_dir",
             "baseline_identity", "real_accuracy", "rded_task_memory", "teacher_memory", "final_accuracies"}
OPENING = "orchestrator/run_opening.py"


def _calls(path) -> set[str]:  # noqa: ANN001
    """The names (or attributes) every call in ``path`` calls."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            found.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return found


def test_only_the_run_opening_resolves_the_pool_and_the_teachers():
    from .conftest import REPO

    offenders = {}
    for path in sorted([*(REPO / "orchestrator").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]):
        relative = str(path.relative_to(REPO))
        called = _calls(path) & RESOLVERS
        if relative == "orchestrator/cli.py":  # the pool command names the pool of a config, through the opening
            called -= {"pool_dir"}
        if called and relative != OPENING:
            offenders[relative] = sorted(called)
    assert not offenders, f"resolved outside {OPENING} (take it from RunDir.resolved): {offenders}"
    assert {"for_run", "best_network", "baseline_identity"} <= _calls(REPO / OPENING)  # it sees what it looks for


def test_only_the_stage_runner_makes_ray_options():
    """A stage says what a unit needs (stage_runner.Needs, Actors); the runner makes Ray's options once."""
    from .conftest import REPO

    makers = {"task_options", "actor_options"}
    offenders = {str(p.relative_to(REPO)): sorted(_calls(p) & makers) for p in sorted((REPO / "orchestrator").rglob("*.py"))
                 if _calls(p) & makers and p.name != "stage_runner.py"}
    assert not offenders, f"Ray options made outside orchestrator/stage_runner.py: {offenders}"
    assert makers <= _calls(REPO / "orchestrator" / "stage_runner.py")


def test_the_resolved_handle_pickles_for_tasks_and_actors(tmp_path):
    import pickle

    from orchestrator.config import load_config
    from orchestrator.pipeline import new_run

    from .conftest import REPO

    run = new_run(load_config(REPO / "configs" / "digits.yaml", [f"output={tmp_path / 'run'}",
                                                                 "evaluate.baselines=[random, herding]"]))
    again = pickle.loads(pickle.dumps(run))
    assert again.resolved == run.resolved and again.resolved.ready
    assert set(again.resolved.evaluation.data_keys) == {"dm", "random", "herding"}
    assert len(again.resolved.evaluation.planned) == 3 * run.config.evaluate.num_models
