"""Bootstrap intervals of drift effects: coverage on seeded simulations, and the edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import NumericHistogram, NumericProfile, js_distance, psi
from detectors.interval import effect_interval


def coverage(draw_effect_and_interval, reps: int) -> float:
    hits = 0
    for rep in range(reps):
        truth, (low, high) = draw_effect_and_interval(rep)
        hits += low <= truth <= high
    return hits / reps


def test_wasserstein_interval_covers_the_true_shift_about_90_percent_of_the_time():
    # Baseline N(0, 1); windows N(0.3, 1): the normalized W1 of the populations is 0.3 std.
    def one(rep):
        rng = np.random.default_rng(rep)
        profile = NumericProfile.fit(rng.normal(0, 1, 5000), bins=20)
        hist = NumericHistogram(profile.edges, profile.min, profile.max).update(rng.normal(0.3, 1, 2000))
        lo, hi = min(profile.min, hist.min), max(profile.max, hist.max)
        interval = effect_interval("wasserstein", profile.counts, hist.counts, edges=profile.edges, lo=lo, hi=hi,
                                   std=profile.std, p_sums=profile.sums, q_sums=hist.sums, seed=rep)
        return 0.3, interval

    assert 0.8 <= coverage(one, 150) <= 0.98


def test_jensen_shannon_interval_covers_the_population_distance():
    base = np.array([0.4, 0.3, 0.2, 0.1])
    moved = np.array([0.25, 0.35, 0.25, 0.15])
    truth = js_distance(base, moved)

    def one(rep):
        rng = np.random.default_rng(1000 + rep)
        p = rng.multinomial(20_000, base)
        q = rng.multinomial(3_000, moved)
        return truth, effect_interval("jensen_shannon", p, q, seed=rep)

    assert 0.8 <= coverage(one, 200) <= 0.98


def test_interval_brackets_the_estimate_when_the_effect_is_large_and_narrows_with_more_data():
    rng = np.random.default_rng(7)
    p = rng.multinomial(50_000, [0.5, 0.3, 0.2])
    widths = []
    for n in (1_000, 16_000):
        q = rng.multinomial(n, [0.3, 0.3, 0.4])
        low, high = effect_interval("psi", p, q)
        assert low <= psi(p, q) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) as wide


def test_interval_edge_cases():
    assert effect_interval("jensen_shannon", [5, 5], [0, 0]) is None
    assert effect_interval("wasserstein", [5, 5], [3, 3], edges=[1.0], lo=0.0, hi=2.0, std=0.0) is None
    with pytest.raises(ValueError, match="method"):
        effect_interval("chi2", [1, 2], [2, 1])
    with pytest.raises(ValueError, match="level"):
        effect_interval("psi", [1, 2], [2, 1], level=1.5)
    with pytest.raises(ValueError, match="same length"):
        effect_interval("psi", [1, 2], [2, 1, 3])
    # seeded: the same seed gives the same interval
    assert effect_interval("ks", [50, 30, 20], [30, 30, 40], seed=3) == effect_interval("ks", [50, 30, 20],
                                                                                         [30, 30, 40], seed=3)


def test_redraws_use_the_detectors_own_formulas():
    from detectors import ks_binned, wasserstein_binned
    from detectors.interval import _effects

    rng = np.random.default_rng(11)
    p = rng.integers(0, 50, size=(6, 9)).astype(float)
    q = rng.integers(0, 50, size=(6, 9)).astype(float)
    p[:, 0] += 1
    q[:, 0] += 1
    edges = np.sort(rng.normal(size=8))
    p_mean = np.concatenate(([edges[0] - 0.5], (edges[1:] + edges[:-1]) / 2, [edges[-1] + 0.7]))
    q_mean = p_mean + 0.05
    lo, hi, std = edges[0] - 1.0, edges[-1] + 1.0, 1.3
    expected = {
        "jensen_shannon": [js_distance(a, b) for a, b in zip(p, q)],
        "psi": [psi(a, b) for a, b in zip(p, q)],
        "ks": [ks_binned(a, b)[0] for a, b in zip(p, q)],
        "wasserstein": [wasserstein_binned(edges, a, b, lo, hi, p_sums=a * p_mean, q_sums=b * q_mean) / std
                        for a, b in zip(p, q)],
    }
    for method, values in expected.items():
        got = _effects(method, p, q, edges, lo, hi, std, p_mean, q_mean)
        np.testing.assert_allclose(got, values, rtol=1e-10, atol=1e-12, err_msg=method)
    no_sums = _effects("wasserstein", p, q, edges, lo, hi, std, None, None)
    np.testing.assert_allclose(no_sums, [wasserstein_binned(edges, a, b, lo, hi) / std for a, b in zip(p, q)])
