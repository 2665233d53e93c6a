"""Seeded simulations: false-alarm and detection rates with the default policies.

A 50 000-row baseline per feature and 5 000-event windows drawn from the same
generator (no drift) or from a shifted one. Each feature's windows are drawn
in one vectorized call; only accumulation and comparison run per window.
"""

import numpy as np
import pytest

from detectors import (
    CategoricalProfile,
    CategoryCounter,
    FeaturePolicy,
    NumericHistogram,
    NumericProfile,
    compare_categorical,
    compare_numeric,
    decide,
    holm,
)

N_BASELINE = 50_000
WINDOW = 5_000
ALPHA = 0.01


def _with_missing(x, rng, share):
    x = x.astype(float)
    x[rng.random(x.shape) < share] = np.nan
    return x


# name -> generator(rng, shape) of float arrays; NaN = missing.
NUMERIC = {
    "normal": lambda r, s: r.normal(0.0, 1.0, s),
    "normal_large_mean": lambda r, s: r.normal(1000.0, 15.0, s),
    "lognormal": lambda r, s: r.lognormal(0.0, 1.0, s),
    "lognormal_narrow": lambda r, s: r.lognormal(3.0, 0.5, s),
    "exponential": lambda r, s: r.exponential(1.0, s),
    "exponential_missing": lambda r, s: _with_missing(r.exponential(10.0, s), r, 0.03),
    "uniform": lambda r, s: r.uniform(0.0, 1.0, s),
    "uniform_wide": lambda r, s: r.uniform(-5.0, 5.0, s),
    "poisson": lambda r, s: r.poisson(3.0, s).astype(float),
    "binomial": lambda r, s: r.binomial(10, 0.3, s).astype(float),
    "dice": lambda r, s: r.integers(0, 5, s).astype(float),
    "geometric": lambda r, s: r.geometric(0.2, s).astype(float),
    "rounded_normal": lambda r, s: np.round(r.normal(50.0, 10.0, s), 1),
    "gamma": lambda r, s: r.gamma(2.0, 2.0, s),
    "beta": lambda r, s: r.beta(2.0, 5.0, s),
    "student_t": lambda r, s: r.standard_t(5.0, s),
    "bimodal": lambda r, s: np.where(r.random(s) < 0.3, r.normal(-2.0, 0.5, s), r.normal(2.0, 1.0, s)),
    "zero_inflated": lambda r, s: np.where(r.random(s) < 0.7, 0.0, r.lognormal(1.0, 0.8, s)),
}


def _zipf(k, s):
    w = 1.0 / np.arange(1, k + 1) ** s
    return w / w.sum()


# name -> (category values, probabilities, missing share)
CATEGORICAL = {
    "flag": (np.array([True, False], dtype=object), np.array([0.8, 0.2]), 0.0),
    "grade": (np.array(["a", "b", "c"], dtype=object), np.array([0.6, 0.3, 0.1]), 0.0),
    "code": (np.arange(5).astype(object), _zipf(5, 1.0), 0.0),
    "plan": (np.array(["basic", "plus", "pro", "team", "edu", "trial"], dtype=object),
             np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04]), 0.0),
    "region": (np.array([f"r{i:02d}" for i in range(12)], dtype=object), _zipf(12, 1.0), 0.01),
    "device": (np.array([f"d{i:02d}" for i in range(20)], dtype=object), _zipf(20, 1.5), 0.0),
    "merchant": (np.array([f"m{i:02d}" for i in range(30)], dtype=object), _zipf(30, 2.0), 0.0),
}
assert len(NUMERIC) == 18 and len(CATEGORICAL) == 7


def _categorical_draw(rng, values, probs, missing, shape):
    idx = np.searchsorted(np.cumsum(probs)[:-1], rng.random(shape), side="right")
    out = values[idx]
    if missing:
        out[rng.random(shape) < missing] = None
    return out


def simulate(n_windows, seed, numeric_shift=None, categorical_probs=None):
    """Evaluate ``n_windows`` windows; returns the decided results, one dict per window.

    ``numeric_shift`` maps a numeric feature to a shift (in baseline std) added to
    its window values; ``categorical_probs`` maps a categorical feature to the
    window's category probabilities.
    """
    numeric_shift = numeric_shift or {}
    categorical_probs = categorical_probs or {}
    policy = FeaturePolicy()
    windows = [{} for _ in range(n_windows)]
    for i, (name, gen) in enumerate(NUMERIC.items()):
        base_rng = np.random.default_rng([seed, i, 0])
        win_rng = np.random.default_rng([seed, i, 1])
        profile = NumericProfile.fit(gen(base_rng, N_BASELINE))
        data = gen(win_rng, (n_windows, WINDOW))
        if name in numeric_shift:
            data = data + numeric_shift[name] * profile.std
        for w in range(n_windows):
            hist = NumericHistogram(profile.edges, profile.min, profile.max).update(data[w])
            windows[w][name] = compare_numeric(profile, hist, policy)
    for i, (name, (values, probs, missing)) in enumerate(CATEGORICAL.items()):
        base_rng = np.random.default_rng([seed, 100 + i, 0])
        win_rng = np.random.default_rng([seed, 100 + i, 1])
        profile = CategoricalProfile.fit(_categorical_draw(base_rng, values, probs, missing, N_BASELINE))
        data = _categorical_draw(win_rng, values, categorical_probs.get(name, probs), missing, (n_windows, WINDOW))
        for w in range(n_windows):
            counter = CategoryCounter(profile.categories, profile.other_categories).update(data[w].tolist())
            windows[w][name] = compare_categorical(profile, counter, policy)
    for results in windows:
        decide(results, alpha=ALPHA)
    return windows


def flag_rate(windows, feature=None):
    if feature is None:
        return np.mean([any(r["drift"] for r in w.values()) for w in windows])
    return np.mean([w[feature]["drift"] for w in windows])


@pytest.fixture(scope="module")
def null_windows():
    return simulate(400, seed=1)


def test_no_drift_false_alarm_rate(null_windows):
    assert len(null_windows[0]) == 25
    assert all(r["status"] == "ok" for w in null_windows for r in w.values())
    assert flag_rate(null_windows) <= 0.01


def test_no_drift_difference_tests_are_calibrated(null_windows):
    # The reported tests of "no difference at all", Holm-corrected, hold the family-wise rate near alpha.
    significant = np.mean(
        [(holm([r["difference_test"]["p_value"] for r in w.values()]) <= ALPHA).any() for w in null_windows]
    )
    assert significant <= 0.02
    # ... and the raw p-values must not be piled up near zero (a broken test would be).
    raw = np.array([r["difference_test"]["p_value"] for w in null_windows for r in w.values()])
    assert np.mean(raw <= 0.05) <= 0.07
    # the material tests' p-values sit near 1 when nothing moved
    material = np.array([r["test"]["p_value"] for w in null_windows for r in w.values()])
    assert np.median(material) > 0.99


def test_no_drift_effects_stay_below_thresholds(null_windows):
    for name in list(NUMERIC) + list(CATEGORICAL):
        values = np.array([w[name]["effect"]["value"] for w in null_windows])
        threshold = null_windows[0][name]["effect"]["threshold"]
        assert np.mean(values >= threshold) <= 0.05, name


@pytest.mark.parametrize("feature", ["normal", "lognormal"])
def test_quarter_std_mean_shift_is_detected(feature):
    windows = simulate(200, seed=2, numeric_shift={feature: 0.25})
    assert flag_rate(windows, feature) >= 0.95
    # The shift reads as about 0.25 std.
    effects = np.array([w[feature]["effect"]["value"] for w in windows])
    assert 0.2 <= np.median(effects) <= 0.3
    others = [name for name in windows[0] if name != feature]
    assert max(flag_rate(windows, name) for name in others) <= 0.02


def test_ten_point_category_share_shift_is_detected():
    shifted = np.array([0.30, 0.35, 0.15, 0.10, 0.06, 0.04])
    windows = simulate(200, seed=3, categorical_probs={"plan": shifted})
    assert flag_rate(windows, "plan") >= 0.95
    others = [name for name in windows[0] if name != "plan"]
    assert max(flag_rate(windows, name) for name in others) <= 0.02
