"""The results table: the paper's Table 1 figure beside each method it reports, the fair-score
columns only where some score is known."""

from __future__ import annotations

from orchestrator.artifacts.scores import Score
from orchestrator.config import load_config
from orchestrator.report import markdown_table, results_table

from .test_run_integrity import REPO


def _score(method: str, model: str = "ConvNet", accuracy: float = 0.25, **fair: float) -> Score:
    return Score(method, model, 0, accuracy, 1, 1.0, "cpu", "key", "data", **fair)


def test_every_coreset_of_table_1_gets_its_paper_figure_and_nothing_else_does():
    cfg = load_config(str(REPO / "configs" / "cifar10-ipc1.yaml"), [])
    rows = results_table([_score("dm"), _score("dm@200"), _score("forgetting"), _score("herding"),
                          _score("random"), _score("k_center"), _score("dm", "AlexNet")], cfg, "cifar10")
    paper = {(r.label, r.model): r.paper for r in rows}
    assert paper == {("dm", "ConvNet"): 26.0, ("dm@200", "ConvNet"): None, ("forgetting", "ConvNet"): 13.5,
                     ("herding", "ConvNet"): 21.5, ("random", "ConvNet"): 14.4, ("k_center", "ConvNet"): None,
                     ("dm", "AlexNet"): None}


def test_a_recipes_set_gets_its_own_papers_cifar10_figure_only_as_shipped():
    ncfm = load_config(str(REPO / "configs" / "cifar10-ipc10-ncfm.yaml"), [])
    rows = results_table([_score("dm"), _score("dm@200"), _score("random")], ncfm, "cifar10")
    assert {r.label: r.paper for r in rows} == {"ncfm": 71.8, "ncfm@200": None, "random": 26.0}
    idm = load_config(str(REPO / "configs" / "cifar10-ipc10-idm.yaml"), ["condense.ipc=1"])
    assert [r.paper for r in results_table([_score("dm")], idm, "cifar10")] == [45.6]
    assert [r.paper for r in results_table([_score("dm")], ncfm, "cifar100")] == [None]  # its figure is CIFAR-10's
    changed = load_config(str(REPO / "configs" / "cifar10-ipc10-ncfm.yaml"), ["condense.cfd_sampler=true"])
    assert [(r.label, r.paper) for r in results_table([_score("dm")], changed, "cifar10")] == [("ncfm [sampler]", None)]


def test_fair_columns_appear_with_the_first_known_score():
    cfg = load_config(str(REPO / "configs" / "cifar10-ipc1.yaml"), [])
    plain = markdown_table(results_table([_score("dm"), _score("random")], cfg, "cifar10"))
    assert "IOR" not in plain
    fair = markdown_table(results_table([_score("dm", ars=0.3), _score("random", ars=0.27)], cfg, "cifar10"))
    assert "| IOR | HLR | LRS | ARS |" in fair and "| - | - | - | 30.00 |" in fair


def test_the_paper_column_stays_empty_under_another_protocol():
    for change in (["evaluate.labels=soft"], ["evaluate.augment=false"]):
        cfg = load_config(str(REPO / "configs" / "cifar10-ipc1.yaml"), change)
        assert [r.paper for r in results_table([_score("dm"), _score("random")], cfg, "cifar10")] == [None, None]


def test_a_recipe_set_is_named_with_the_pieces_it_sets_apart_from_its_recipe():
    from orchestrator.report import synthetic_label

    ncfm = load_config(REPO / "configs" / "cifar10-ipc10-ncfm.yaml")
    assert synthetic_label(ncfm) == "ncfm"
    with_sampler = ncfm.model_copy(update={"condense": ncfm.condense.model_copy(update={"cfd_sampler": True})})
    assert synthetic_label(with_sampler) == "ncfm [sampler]"


def test_a_recipe_names_where_it_departs_from_its_paper_and_dm_names_nothing():
    from orchestrator.report import departures

    ncfm = load_config(REPO / "configs" / "cifar10-ipc10-ncfm.yaml")
    assert departures(ncfm).startswith("Where the ncfm recipe departs from its paper: ") and "Adam" in departures(ncfm)
    assert "standard Gaussian" in departures(ncfm)
    with_sampler = ncfm.model_copy(update={"condense": ncfm.condense.model_copy(update={"cfd_sampler": True})})
    assert "Adam" in departures(with_sampler) and "standard Gaussian" not in departures(with_sampler)
    assert "bandwidths" in departures(load_config(REPO / "configs" / "cifar10-ipc10-m3d.yaml"))
    assert departures(load_config(REPO / "configs" / "cifar10-ipc10.yaml")) == ""
    assert departures(load_config(REPO / "configs" / "cifar10-ipc10-rded.yaml")) == ""


def test_the_recipes_paper_figures_are_the_ones_their_configs_state():
    from orchestrator.report import RECIPE_PAPERS

    for recipe, figures in RECIPE_PAPERS.items():
        text = (REPO / "configs" / f"cifar10-ipc10-{recipe}.yaml").read_text()
        stated = " / ".join(f"{figures[ipc]:.1f}" for ipc in (1, 10, 50))
        assert f"CIFAR-10 at 1/10/50 images per class): {stated};" in text, recipe
