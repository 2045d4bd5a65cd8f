"""Budget curves of tuning studies (lmaps_plugin.bench.tune.curve): counted trials, running best, plateau, table
and figure, on hand-made trial lists."""
import math

import pytest

from lmaps_plugin.bench.tune.curve import (TrialRecord, counted_values, format_table, mean_curve, plateau_trial,
                                           plot_curves, running_best, summarize, value_at)


def R(number, state, value=None):
    return TrialRecord(number, state, value)


def test_counted_values_skip_failed_and_running_and_mark_pruned_as_none():
    records = [R(3, "PRUNED"), R(0, "COMPLETE", 28.0), R(1, "FAIL"), R(2, "COMPLETE", 29.5), R(4, "RUNNING"),
               R(5, "COMPLETE", 27.0), R(6, "COMPLETE", float("nan"))]
    # trial order, failed/running trials left out, pruned -> None, a non-finite value -> None
    assert counted_values(records) == [28.0, 29.5, None, 27.0, None]
    assert counted_values(records, budget=2) == [28.0, 29.5]


def test_running_best_keeps_the_best_through_pruned_trials():
    values = [None, 28.0, None, 27.5, 29.0, None, 28.9]
    assert running_best(values) == [None, 28.0, 28.0, 28.0, 29.0, 29.0, 29.0]
    assert running_best([3.0, 2.0, None, 4.0, 1.0], "minimize") == [3.0, 2.0, 2.0, 2.0, 1.0]
    with pytest.raises(ValueError):
        running_best([1.0], "max")


def test_plateau_is_the_first_trial_within_tol_of_the_final_best():
    best = running_best([28.0, None, 29.0, 29.05, 29.5, 29.55, None, 29.58])
    # final 29.58: 29.5 (trial 5) is within 0.1, 29.05 (trial 4) is not
    assert plateau_trial(best, tol=0.1) == 5
    assert plateau_trial(best, tol=0.6) == 3
    assert plateau_trial(best, tol=0.01) == 8
    # a horizon shorter than the curve looks only up to it: best after 4 trials is 29.05
    assert plateau_trial(best, tol=0.1, horizon=4) == 3
    # no value at the horizon, or a curve shorter than the horizon: no plateau
    assert plateau_trial([None, None], tol=0.1) is None
    assert plateau_trial(best, tol=0.1, horizon=9) is None
    # a flat curve plateaus at its first value
    assert plateau_trial([None, 30.0, 30.0], tol=0.1) == 2


def test_summary_mean_spread_and_plateaus_over_seeds():
    a = running_best([28.0, 29.0, None, 29.0, 30.0, 30.0])
    b = running_best([28.0, None, 30.0, 30.0, 30.0, 30.0])
    assert value_at(a, 3) == 29.0 and value_at(a, 7) is None
    assert mean_curve([a, b]) == [28.0, 28.5, 29.5, 29.5, 30.0, 30.0]
    s = summarize("m", [a, b], points=(3, 6), tol=0.1, horizon=6)
    mean3, spread3 = s.points[3]
    assert mean3 == pytest.approx(29.5)
    assert spread3 == pytest.approx(math.sqrt(0.5))   # sample std of 29 and 30
    assert s.points[6] == (pytest.approx(30.0), pytest.approx(0.0))
    assert s.plateau == 5 and s.seed_plateaus == [5, 3]
    assert s.reaches_plateau_by(6) is True and s.reaches_plateau_by(4) is False
    table = format_table([s], {"m": "Method"})
    assert "| Method | 29.50 ± 0.71 | 30.00 ± 0.00 | 5 | 5, 3 |" in table
    # a seed whose curve is too short gives no mean at that point
    short = summarize("m", [a, a[:2]], points=(3,), horizon=6)
    assert short.points[3] == (None, None) and short.seed_plateaus[1] is None


def test_plot_curves_writes_a_png(tmp_path):
    s = summarize("m", [running_best([None, 1.0, 2.0]), running_best([1.5, None, 1.6])], points=(2,), horizon=3)
    path = plot_curves([s], tmp_path / "sub" / "curve.png", title="t", mark=2)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
