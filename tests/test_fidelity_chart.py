"""The protocol chart reads docs/fidelity.md's table, and each of its bars is the row it claims."""
from __future__ import annotations

import pytest

from benchmarks.fidelity_chart import FIDELITY, PANELS, Bar, Panel, draw, read_table
from orchestrator.figures import png

SMALL = """# Fidelity

## Every cell measured

| # | data set | method | images per class | ours (%) | paper (%) | networks x epochs | labels |
| --- | --- | --- | --- | --- | --- | --- | --- |
| 7 | CIFAR-10 | RDED | 10 | 54.64 ± 0.63 | 50.2 | 2 x 300 | soft, RDED's protocol |
| 8 | CIFAR-10 | random | 1 | 17.19 ± 0.03 | - | 3 x 500 | hard |
| 9 | MNIST | continual | 10 | see notes | - | 2 x 300 | hard |
| 11 | CIFAR-10 | DM | 10 | 47.00 ± 0.10 | 65.2 at 50 | 2 x 300 | hard |

## Reproducing a row

| 10 | not | the | table | 1.00 ± 0.00 | - | 2 x 300 | hard |
"""


def test_read_table_takes_figures_by_row_number_and_nothing_past_the_table():
    table = read_table(SMALL)
    assert set(table) == {7, 8, 11}
    assert (table[7].mean, table[7].std, table[7].paper, table[7].ipc) == (54.64, 0.63, 50.2, 10)
    assert table[8].paper is None and table[8].method == "random" and table[8].labels == "hard"
    assert table[8].evaluation == "3 x 500"
    assert table[11].paper is None  # another setting's figure is not this row's


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: f"ipc{p.ipc}")
def test_every_bar_is_its_set_setting_and_protocol_in_the_table(panel: Panel):
    table = read_table(FIDELITY.read_text())
    for bar in panel.bars:
        for number, labels in ((bar.rded_row, "soft, RDED's protocol"), (bar.paper_row, "hard")):
            if number is None:  # not scored under this protocol
                continue
            row = table[number]
            assert row.dataset == "CIFAR-10" and row.ipc == panel.ipc, (bar, row)
            assert row.method.split(" (")[0] == bar.name and row.labels == labels, (bar, row)
            assert row.evaluation == "2 x 300", (bar, row)  # the chart's axis says so


def test_the_chart_draws_a_bar_per_scored_protocol_and_marks_the_others():
    fig = draw(read_table(SMALL), (Panel(10, (Bar("RDED", 7, None), Bar("DM", None, 11))),))
    assert [round(b.get_width(), 2) for b in fig.axes[0].patches] == [54.64, 47.0]
    assert sum(t.get_text() == "not scored" for t in fig.axes[0].texts) == 2
    assert png(fig).startswith(b"\x89PNG")


def test_a_row_the_table_lacks_is_an_error_not_an_empty_bar():
    with pytest.raises(KeyError):
        draw(read_table(SMALL), (Panel(10, (Bar("RDED", 7, 99),)),))
