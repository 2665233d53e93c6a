"""The false-alarm budget in time (alerts.false_pages_per_week): the derivation, and simulated weeks through
the real alert engine."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from detectors import decide
from monitor.alerting import AlertEngine
from monitor.budget import AlphaBudget, alpha_for_budget, pages_per_window_bound
from monitor.config import ConfigError, parse_config
from tests.material_sim import categorical_pvalues, numeric_pvalues

WINDOW_SECONDS = 300.0  # a window every 5 minutes: 2,016 a week
WEEK = int(7 * 86400 / WINDOW_SECONDS)
FEATURES = ["x0", "x1", "x2"]
DRIFT_KINDS = {"feature_drift", "prediction_drift", "label_drift", "retrain_recommended"}


def make_config(budget=1.0, window=None, **alerts):
    return parse_config({
        "model": "m", "baseline": "baseline.json", "window": window or {"size": 5000},
        "schema": {"features": [{"name": n, "type": "numeric"} for n in FEATURES],
                   "prediction": {"name": "y_pred", "type": "categorical"}},
        "alerts": {"false_pages_per_week": budget, **alerts}})


def test_the_derived_level_meets_the_budget_exactly():
    alpha = alpha_for_budget(2.0, [(2016.0, 2.0)], 2, 20, 4, 3)
    assert 2016.0 * pages_per_window_bound(alpha, 2, 20, 4, 3, 2.0) == pytest.approx(2.0, rel=1e-9)
    # one more window a week, or one more family, costs level; a stricter hysteresis buys level
    assert alpha_for_budget(2.0, [(4032.0, 2.0)], 2, 20, 4, 3) < alpha
    assert alpha_for_budget(2.0, [(2016.0, 3.0)], 2, 20, 4, 3) < alpha
    assert alpha_for_budget(2.0, [(2016.0, 2.0)], 3, 20, 4, 3) > alpha
    # fire_after 1: every flagged window pages, so alpha is about budget / (rate * families)
    assert alpha_for_budget(1.0, [(1000.0, 1.0)], 1, 20, 4, 3) == pytest.approx(1e-3, rel=0.01)
    with pytest.raises(ValueError):
        alpha_for_budget(0.0, [(1.0, 1.0)], 2, 20, 4, 3)


def test_config_key_is_validated():
    assert make_config(budget=0.5).alerts.false_pages_per_week == 0.5
    assert parse_config({"model": "m", "baseline": "b.json", "window": {"size": 10},
                         "schema": {"features": [{"name": "x", "type": "numeric"}]}}).alerts.false_pages_per_week is None
    with pytest.raises(ConfigError):
        make_config(budget=-1.0)


def test_the_budget_reads_the_window_rate_from_event_time():
    config = make_config(budget=1.0)
    budget = AlphaBudget(config)
    assert budget.alpha() == config.drift.alpha  # no rate yet
    for i in range(50):
        budget.observe("drift", i * WINDOW_SECONDS, (i + 1) * WINDOW_SECONDS)
    assert budget.windows_per_week("drift") == pytest.approx(WEEK)
    # features and outputs (the prediction): two paging families
    assert budget.alpha() == pytest.approx(alpha_for_budget(1.0, [(WEEK, 2.0)], 2, 20, 4, 3))
    restored = AlphaBudget(config).load_state_dict(budget.state_dict())
    assert restored.alpha() == budget.alpha()
    timed = AlphaBudget(make_config(budget=1.0, window={"duration": "10m"}))
    assert timed.windows_per_week("drift") == pytest.approx(1008.0)


def test_the_pipeline_decides_at_the_derived_level(tmp_path):
    from monitor.pipeline import Pipeline
    from monitor.synth import car_loan
    from tests.helpers import write_setup

    synth = car_loan(seed=1)
    _path, config = write_setup(tmp_path, synth, window={"size": 1000},
                                alerts={"false_pages_per_week": 1.0})
    from monitor.baseline import Baseline

    pipeline = Pipeline(config, Baseline.load(config.baseline))
    results = pipeline.process(synth.messages(3000))[0]
    alphas = [r["features"]["car_value"]["test"]["alpha"] for r in results]
    rate = pipeline.budget.windows_per_week("drift")
    assert rate and all(a < config.drift.alpha for a in alphas)
    assert alphas[-1] == pytest.approx(pipeline.budget.alpha())
    assert results[-1]["prediction"]["test"]["alpha"] == alphas[-1]


# ---------------------------------------------------------------- a drift-free week, many times


@pytest.fixture(scope="module")
def boundary_pvalues():
    """Real material-test p-values of features sitting exactly at their threshold (the least favourable null).

    Over many baselines: the budget, like the calibration, is an average over baselines (for one baseline the
    level moves with the baseline's own noise, a tenth of the variance at 50,000 rows and 5,000 events).
    """
    numeric = numeric_pvalues("normal", [0.1], 5000, 1200, baselines=150, seed=7)[0]
    categorical = categorical_pvalues("5 categories", [0.05], 5000, 1200, baselines=300, seed=7)[0]
    return numeric, categorical


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _feature(p_value, threshold, method):
    return {"type": "numeric", "drift": False, "status": "ok", "events": 5000, "missing_ratio": 0.0,
            "out_of_range_ratio": 0.0, "effect": {"method": method, "value": threshold, "threshold": threshold},
            "test": {"method": "delta_method", "p_value": float(p_value), "p_value_adjusted": None, "alpha": None}}


def simulate_week(config, numeric, categorical, seed) -> int:
    """False drift pages in one week: x0 and the prediction at their thresholds, x1 and x2 not moved."""
    rng = np.random.default_rng(seed)
    budget = AlphaBudget(config)
    engine = AlertEngine(config, "sha256:sim")
    p_x0 = rng.choice(numeric, WEEK)
    p_pred = rng.choice(categorical, WEEK)
    pages = 0
    start = 1.7e9
    for i in range(WEEK):
        begin, end = start + i * WINDOW_SECONDS, start + (i + 1) * WINDOW_SECONDS
        budget.observe("drift", begin, end)
        alpha = budget.alpha()
        features = decide({"x0": _feature(p_x0[i], 0.1, "wasserstein"), "x1": _feature(1.0, 0.1, "wasserstein"),
                           "x2": _feature(1.0, 0.1, "wasserstein")}, alpha=alpha)
        prediction = decide({"y_pred": _feature(p_pred[i], 0.05, "jensen_shannon")}, alpha=alpha)["y_pred"]
        result = {"model": "m", "baseline_fingerprint": "sha256:sim",
                  "window": {"index": i, "start": _iso(begin), "end": _iso(end), "events": 5000, "invalid": 0,
                             "status": "ok"},
                  "drifted": [n for n, r in features.items() if r["drift"]], "features": features,
                  "prediction": prediction}
        for note in engine.observe(result):
            if note["status"] == "firing" and note["alert"] in DRIFT_KINDS and note["notification_id"].endswith(".1"):
                pages += 1
    return pages


@pytest.mark.parametrize("budget", [1.0, 0.25])
def test_a_drift_free_week_pages_within_the_budget(boundary_pvalues, budget):
    """50 weeks of 5-minute windows (2,016 a week) in which x0 and the prediction sit at their thresholds."""
    numeric, categorical = boundary_pvalues
    # the material tests are calibrated at the threshold: these p-values are about uniform
    assert np.mean(numeric <= 0.05) == pytest.approx(0.05, abs=0.03)
    config = make_config(budget=budget)
    weeks = [simulate_week(config, numeric, categorical, seed) for seed in range(50)]
    mean = float(np.mean(weeks))
    print(f"budget {budget}: alpha {AlphaBudget(config).observe('drift', 0, WINDOW_SECONDS).alpha():.5f}, "
          f"mean false pages a week {mean:.3f} over {len(weeks)} weeks")
    se = float(np.std(weeks, ddof=1) / math.sqrt(len(weeks))) if mean > 0 else 0.0
    assert mean <= budget + 3 * se + 0.05, (mean, weeks)
    # the bound is not vacuous: with two subjects at their thresholds the pages come within a small factor of it
    # (measured: 0.37 a week for a budget of 1, 0.10 for 0.25; Holm over x0's three features costs most of it)
    if budget == 1.0:
        assert mean >= 0.15, (mean, weeks)
