"""The continual results' arithmetic: the curves as mean +- std per method and step."""

from __future__ import annotations

from orchestrator.artifacts.continual_results import StepScore, curve_table


def test_curve_table_is_mean_and_std_per_method_and_step():
    scores = [StepScore(step, seen, method, "ConvNet", seed, acc) for step, seen, method, seed, acc in [
        (1, 2, "dm", 0, 1.0), (1, 2, "dm", 1, 0.9), (2, 4, "dm", 0, 0.8), (2, 4, "dm", 1, 0.6),
        (1, 2, "random", 0, 0.5), (1, 2, "random", 1, 0.5), (2, 4, "random", 0, 0.4), (2, 4, "random", 1, 0.2)]]
    header, rows = curve_table(scores)
    assert header == ["method", "2 classes", "4 classes"]
    assert rows == [["dm", "95.00 ± 5.00", "70.00 ± 10.00"], ["random", "50.00 ± 0.00", "30.00 ± 10.00"]]
