"""The protocol chart reads docs/fidelity.md's table, and each of its bars is the row it claims."""
from __future__ import annotations

import pytest

from benchmarks.fidelity_chart import FIDELITY, PANELS, Bar, Panel, draw, read_table
from orchestrator.figures import png

SMALL = """# Fidelity

## Every cell measured

| # | data set | method | images per class | ours (%) | paper (%) | labels |
| --- | --- | --- | --- | --- | --- | --- |
| 7 | CIFAR-10 | RDED | 10 | 54.64 ± 0.63 | 50.2 | soft, RDED's protocol |
| 8 | CIFAR-10 | random | 1 | 17.19 ± 0.03 | - | hard |
| 9 | MNIST | continual | 10 | see notes | - | hard |
| 11 | CIFAR-10 | DM | 10 | 47.00 ± 0.10 | 65.2 at 50 | hard |

## Reproducing a row

| 10 | not | the | table | 1.00 ± 0.00 | - | hard |
"""


def test_read_table_takes_figures_by_row_number_and_nothing_past_the_table():
    table = read_table(SMALL)
    assert set(table) == {7, 8, 11}
    assert (table[7].mean, table[7].std, table[7].paper, table[7].ipc) == (54.64, 0.63, 50.2, 10)
    assert table[8].paper is None and table[8].method == "random" and table[8].labels == "hard"
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


def test_the_chart_draws_a_pair_of_bars_per_set_and_skips_unscored_ones():
    table = read_table(SMALL)
    panel = Panel(10, (Bar("RDED", 7, None), Bar("absent", None, 99)))
    fig = draw(table, (panel,))
    bars = [p for p in fig.axes[0].patches]
    assert [round(b.get_width(), 2) for b in bars] == [54.64]
    assert png(fig).startswith(b"\x89PNG")
