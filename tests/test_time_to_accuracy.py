"""benchmarks/time_to_accuracy.py: the time axis from two timing runs, the sweep files, the verdict."""
from pathlib import Path

import pytest

from benchmarks.time_to_accuracy import Point, Timing, csv_points, curve, first_reaching, fit, run_pair


def test_two_runs_give_seconds_per_iteration_and_the_fixed_cost():
    t = fit((10, 19.0), (40, 79.0), pool_s=700.0)
    assert t.s_per_it == pytest.approx(2.0)
    assert t.setup_s == pytest.approx(-1.0)
    assert t.seconds(100) == pytest.approx(700.0 - 1.0 + 200.0)  # the pool is charged to every point


def test_timing_runs_in_the_wrong_order_are_refused():
    with pytest.raises(SystemExit, match="shorter run first"):
        fit((40, 79.0), (10, 19.0))


def test_the_first_point_at_or_above_the_target_is_the_time_to_accuracy():
    points = [Point(100, 45.0, 0.3), Point(200, 49.0, 0.2), Point(300, 48.0, 0.4), Point(400, 50.0, 0.1)]
    t = Timing(s_per_it=3.0, setup_s=10.0, pool_s=0.0)
    assert first_reaching(points, t, 48.9) == pytest.approx(610.0)
    assert first_reaching(points, t, 51.0) is None


def test_a_sweep_file_skips_comments_and_sorts_by_iteration(tmp_path):
    f = tmp_path / "sweep.csv"
    f.write_text("# where these came from\niteration,mean,std\n400,46.17,0.30\n200,44.79,0.47\n")
    assert csv_points(str(f)) == [Point(200, 44.79, 0.47), Point(400, 46.17, 0.30)]


def test_a_sweep_file_without_its_columns_names_them(tmp_path):
    f = tmp_path / "sweep.csv"
    f.write_text("iteration,accuracy\n200,44.79\n")
    with pytest.raises(SystemExit, match="missing mean, std"):
        csv_points(str(f))


def test_the_shipped_dm_sweep_reads():
    points = csv_points(str(Path(__file__).parents[1] / "docs/data/cifar10-ipc10-dm-sweep.csv"))
    assert [p.iteration for p in points] == [200, 400, 600, 800, 1000]


def test_a_curve_joins_its_sources_in_iteration_order(tmp_path):
    start, sweep = tmp_path / "start.csv", tmp_path / "sweep.csv"
    start.write_text("iteration,mean,std\n0,40.0,0.5\n")
    sweep.write_text("iteration,mean,std\n200,46.0,0.3\n100,45.0,0.2\n")
    assert [p.iteration for p in curve(f"{sweep},{start}")] == [0, 100, 200]


def test_a_timing_without_its_second_run_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="SHORT_RUN,LONG_RUN"):
        run_pair("DM", "t-dm10")
    assert run_pair("DM", "a,b") == ("a", "b")
