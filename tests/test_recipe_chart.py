"""The recipe chart reads docs/fidelity.md's table, and each of its bars is the row it claims."""
from __future__ import annotations

import pytest

from benchmarks.fidelity_chart import FIDELITY, read_table, table_cells
from benchmarks.recipe_chart import RECIPES, START, draw
from orchestrator.figures import png

SMALL = """# Fidelity

## Every cell measured

| # | data set | method | images per class | ours (%) | paper (%) | networks x epochs | labels |
| --- | --- | --- | --- | --- | --- | --- | --- |
| 1 | CIFAR-10 | NCFM | 10 | 58.36 ± 0.22 | 71.8 | 2 x 300 | hard |
| 2 | CIFAR-10 | the factor-2 start | 10 | 44.00 ± 0.32 | - | 2 x 300 | hard |
| 3 | CIFAR-10 | DM | 10 | 46.17 ± 0.36 | - | 2 x 300 | hard |
"""


def _iterations() -> dict[int, str]:
    header, rows = table_cells(FIDELITY.read_text())
    return {int(r[0]): r[header.index("iterations")] for r in rows}


@pytest.mark.parametrize("name, number", RECIPES)
def test_every_bar_is_its_recipe_at_400_iterations_under_dms_protocol(name, number):
    row = read_table(FIDELITY.read_text())[number]
    assert (row.dataset, row.ipc, row.labels, row.evaluation) == ("CIFAR-10", 10, "hard", "2 x 300"), row
    assert row.method.split(" (")[0] == name and _iterations()[number] == "400", row


def test_the_start_line_is_the_factor_2_start_under_the_same_protocol():
    row = read_table(FIDELITY.read_text())[START]
    assert row.method.startswith("the factor-2 start") and _iterations()[START] == "0"
    assert (row.ipc, row.labels, row.evaluation) == (10, "hard", "2 x 300")


def test_the_chart_draws_a_bar_per_recipe_its_papers_mark_and_the_start():
    fig = draw(read_table(SMALL), (("NCFM", 1), ("DM", 3)), start=2)
    ax = fig.axes[0]
    assert [round(b.get_width(), 2) for b in ax.patches] == [58.36, 46.17]
    drawn = {gid: [tuple(line.get_xdata()) for line in ax.lines if line.get_gid() == gid] for gid in ("paper", "start")}
    assert drawn == {"paper": [(71.8,)], "start": [(44.0, 44.0)]}  # DM's row has no paper figure
    assert png(fig).startswith(b"\x89PNG")


def test_a_row_the_table_lacks_is_an_error_not_an_empty_bar():
    with pytest.raises(KeyError):
        draw(read_table(SMALL), (("NCFM", 1), ("IDM", 99)), start=2)
