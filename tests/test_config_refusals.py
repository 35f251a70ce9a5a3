"""A config that cannot run is refused when it is read, naming the key and the fix: it is never
saved in a run's record to fail every later command."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, load_config

from .conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")


@pytest.mark.parametrize("assignment, named", [
    ("evaluate.baselines=[random, random]", "evaluate.baselines: lists random more than once; name each once: [random]"),
    ("evaluate.baselines=[random, herding, random]", "name each once: [random, herding]"),
    ("evaluate.models=[ConvNet, ConvNet]", "evaluate.models: lists ConvNet more than once"),
    ("continual.methods=[dm, random, dm]", "continual.methods: lists dm more than once"),
    ("nas.proxies=[synthetic, synthetic]", "nas.proxies: lists synthetic more than once"),
    ("nas.space.depths=[1, 2, 1]", "nas.space.depths: lists 1 more than once"),
    ("nas.space.norms=[none, none]", "nas.space.norms: lists none more than once"),
    ("plan.classes=[3, 3]", "plan.classes: lists 3 more than once"),
])
def test_a_list_entry_given_twice_is_refused_naming_it(assignment, named):
    with pytest.raises(ConfigError) as refused:
        load_config(DIGITS, [assignment])
    assert named in str(refused.value)


@pytest.mark.parametrize("assignment, named", [
    ("continual.methods=[]", "continual.methods: is empty; name at least one of dm, random, herding"),
    ("nas.proxies=[]", "nas.proxies: is empty; name at least one of"),
    ("nas.space.widths=[]", "nas.space.widths: is empty"),
    ("nas.space.widths=[0, 32]", "nas.space.widths: depths and widths are positive integers"),
    ("plan.classes=[]", "plan.classes: is empty; null plans every class"),
    ("condense.dsa_strategy=color_crop_blur", "condense.dsa_strategy: unknown DSA op(s) ['blur']"),
])
def test_a_value_that_a_later_command_would_fail_on_is_refused_when_read(assignment, named):
    with pytest.raises(ConfigError) as refused:
        load_config(DIGITS, [assignment])
    assert named in str(refused.value)


def test_the_yaml_file_is_held_to_the_same_rules(tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text("evaluate:\n  baselines: [herding, k_center, herding]\n")
    with pytest.raises(ConfigError, match=r"evaluate.baselines: lists herding more than once; name each once: "
                                          r"\[herding, k_center\]"):
        load_config(config)


def test_lists_that_may_be_empty_or_distinct_still_load():
    cfg = load_config(DIGITS, ["evaluate.baselines=[]", "evaluate.models=[ConvNet, ConvNetBN]", "plan.classes=[0, 2]"])
    assert cfg.evaluate.baselines == [] and cfg.evaluate.models == ["ConvNet", "ConvNetBN"]
