"""The statistics in detectors.stats against scipy or closed forms, on fixed seeded data."""

import math

import numpy as np
import pytest
from scipy import stats as ss
from scipy.spatial.distance import jensenshannon

from detectors import chi2_homogeneity, holm, js_distance, ks_binned, psi, wasserstein_binned, wasserstein_error_bound


def _bin(edges, x):
    return np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)


def _bin_sums(edges, x):
    return np.bincount(np.searchsorted(edges, x, side="left"), weights=x, minlength=len(edges) + 1)


SAMPLES = {
    "normal": lambda r: (r.normal(0, 1, 3000), r.normal(0.2, 1.1, 1700)),
    "lognormal": lambda r: (r.lognormal(0, 1, 2500), r.lognormal(0.1, 1, 900)),
    "discrete": lambda r: (r.poisson(3, 2000).astype(float), r.poisson(3.4, 1500).astype(float)),
    "mixture": lambda r: (r.normal(0, 1, 2000), np.concatenate([r.normal(-2, 0.3, 500), r.normal(2, 0.3, 500)])),
    "same": lambda r: (r.exponential(1, 4000), r.exponential(1, 4000)),
}


@pytest.fixture(params=sorted(SAMPLES))
def samples(request):
    rng = np.random.default_rng(sorted(SAMPLES).index(request.param))
    return SAMPLES[request.param](rng)


def _coarse_edges(a, bins=10):
    return np.unique(np.quantile(a, np.arange(1, bins) / bins, method="inverted_cdf"))


# ---------------------------------------------------------------- JS distance


def test_js_distance_matches_scipy():
    rng = np.random.default_rng(0)
    for k in (2, 5, 20, 60):
        p = rng.integers(0, 100, k).astype(float)
        q = rng.integers(0, 100, k).astype(float)
        p[0], q[-1] = 0, 0  # zeros on either side
        expected = jensenshannon(p / p.sum(), q / q.sum(), base=2)
        assert js_distance(p, q) == pytest.approx(expected, abs=1e-12)


def test_js_distance_extremes():
    assert js_distance([3, 0, 0], [0, 0, 7]) == pytest.approx(1.0)
    assert js_distance([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- PSI


def test_psi_matches_closed_form():
    rng = np.random.default_rng(1)
    p = rng.integers(1, 500, 12).astype(float)
    q = rng.integers(1, 500, 12).astype(float)
    a, b = p / p.sum(), q / q.sum()
    expected = sum((bi - ai) * math.log(bi / ai) for ai, bi in zip(a, b))
    assert psi(p, q) == pytest.approx(expected, rel=1e-12)


def test_psi_floors_empty_bins_at_eps():
    # Window mass 0.5 in a bin the baseline never saw: contributes (0.5 - eps) * ln(0.5 / eps).
    eps = 1e-3
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - eps) * math.log(0.5 / eps)
    assert psi([10, 0], [5, 5], eps=eps) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- chi-square


@pytest.mark.parametrize("k", [2, 3, 7, 15])
def test_chi2_homogeneity_matches_chi2_contingency(k):
    rng = np.random.default_rng(k)
    probs = rng.dirichlet(np.ones(k) * 5)
    p = rng.multinomial(20_000, probs)
    q = rng.multinomial(3_000, np.roll(probs, 1) * 0.1 + probs * 0.9)
    table = np.vstack([p, q])
    ref = ss.chi2_contingency(table, correction=False)
    assert ref.expected_freq.min() >= 5  # unpooled, so both must agree exactly
    stat, dof, p_value = chi2_homogeneity(p, q)
    assert stat == pytest.approx(ref.statistic, rel=1e-10)
    assert dof == ref.dof
    assert p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


def test_chi2_homogeneity_pools_sparse_and_drops_empty_columns():
    p = np.array([500, 300, 150, 20, 15, 0, 10])
    q = np.array([40, 50, 20, 3, 2, 0, 4])
    # Columns 3, 4, 6 expect fewer than 5 in the window row (about 2.5, 1.8, 1.5);
    # pooled they expect 5.8. Column 5 is empty in both.
    pooled = np.array([[500, 300, 150, 45], [40, 50, 20, 9]])
    ref = ss.chi2_contingency(pooled, correction=False)
    stat, dof, p_value = chi2_homogeneity(p, q)
    assert (stat, dof) == (pytest.approx(ref.statistic, rel=1e-10), 3)
    assert p_value == pytest.approx(ref.pvalue, rel=1e-10)


def test_chi2_homogeneity_folds_a_still_small_pool_into_the_smallest_column():
    p = np.array([500, 300, 2])
    q = np.array([50, 30, 1])
    # The lone sparse column (3 in total) is still too small, so it joins the 330 column.
    ref = ss.chi2_contingency(np.array([[500, 302], [50, 31]]), correction=False)
    stat, dof, _ = chi2_homogeneity(p, q)
    assert stat == pytest.approx(ref.statistic, rel=1e-10) and dof == 1


def test_chi2_homogeneity_single_column_has_nothing_to_test():
    assert chi2_homogeneity([100, 0], [30, 0]) == (0.0, 0, 1.0)


def test_chi2_homogeneity_is_calibrated_under_the_null():
    # Fresh samples each time, sparse categories included: rejection rate near the level.
    rng = np.random.default_rng(3)
    probs = 1.0 / np.arange(1, 31) ** 2.0
    probs /= probs.sum()
    base = rng.multinomial(3_000, probs, size=3000)
    win = rng.multinomial(400, probs, size=3000)
    p_values = np.array([chi2_homogeneity(b, w)[2] for b, w in zip(base, win)])
    assert 0.035 <= np.mean(p_values <= 0.05) <= 0.065
    assert np.mean(p_values <= 0.01) <= 0.02


# ---------------------------------------------------------------- KS


def _kolmogorov_sf(x):
    # Closed form of the limiting Kolmogorov distribution's tail.
    if x <= 0:
        return 1.0
    return min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 200)))


def test_ks_binned_with_one_bin_per_value_is_exact(samples):
    a, b = samples
    edges = np.unique(np.concatenate([a, b]))[:-1]
    d, p_value, error_bound = ks_binned(_bin(edges, a), _bin(edges, b))
    ref = ss.ks_2samp(a, b)
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    n_eff = a.size * b.size / (a.size + b.size)
    assert p_value == pytest.approx(_kolmogorov_sf(d * math.sqrt(n_eff)), rel=1e-9, abs=1e-300)
    # Conservative next to scipy's finite-n asymptotic p-value, and close to it.
    asymp = ss.ks_2samp(a, b, method="asymp").pvalue
    assert p_value >= asymp * (1 - 1e-9)
    assert p_value - asymp <= 0.02
    if edges.size + 1 == a.size + b.size:  # no ties: one value per bin
        assert error_bound <= max(1 / a.size, 1 / b.size) + 1e-12


def test_ks_binned_on_coarse_bins_is_within_its_error_bound(samples):
    a, b = samples
    exact = ss.ks_2samp(a, b).statistic
    for bins in (3, 10, 20):
        edges = _coarse_edges(a, bins)
        d, _, error_bound = ks_binned(_bin(edges, a), _bin(edges, b))
        assert d <= exact + 1e-12
        assert exact - d <= error_bound + 1e-12


def test_ks_binned_p_value_is_conservative_under_the_null():
    rng = np.random.default_rng(4)
    edges = np.linspace(-2, 2, 19)
    p_values = np.array(
        [ks_binned(_bin(edges, rng.normal(size=2000)), _bin(edges, rng.normal(size=500)))[1] for _ in range(1000)]
    )
    assert np.mean(p_values <= 0.05) <= 0.06
    assert np.mean(p_values <= 0.5) >= 0.2  # not degenerate at 1


# ---------------------------------------------------------------- Wasserstein


def test_wasserstein_binned_within_stated_error_bound(samples):
    a, b = samples
    exact = ss.wasserstein_distance(a, b)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    for bins in (4, 10, 20, 50):
        edges = _coarse_edges(a, bins)
        p, q = _bin(edges, a), _bin(edges, b)
        approx = wasserstein_binned(edges, p, q, lo, hi)
        bound = wasserstein_error_bound(edges, p, q, lo, hi)
        assert abs(approx - exact) <= bound + 1e-12
        assert bound <= 1.5 * np.diff(np.concatenate([[lo], edges, [hi]])).max() + 1e-12

        sums = dict(p_sums=_bin_sums(edges, a), q_sums=_bin_sums(edges, b))
        refined = wasserstein_binned(edges, p, q, lo, hi, **sums)
        refined_bound = wasserstein_error_bound(edges, p, q, lo, hi, **sums)
        assert refined <= exact + 1e-9  # a lower bound
        assert exact - refined <= refined_bound + 1e-9
        assert refined_bound <= 2 * bound / 1.5 + 1e-12  # at most sum w (a + b)


def test_wasserstein_binned_with_sums_is_exact_for_a_shift():
    rng = np.random.default_rng(5)
    a = rng.lognormal(0, 1, 20_000)
    b = a + 0.3  # F_b <= F_a everywhere, so the CDF difference never changes sign
    edges = _coarse_edges(a, 20)
    lo, hi = a.min(), b.max()
    p, q = _bin(edges, a), _bin(edges, b)
    sums = dict(p_sums=_bin_sums(edges, a), q_sums=_bin_sums(edges, b))
    assert ss.wasserstein_distance(a, b) == pytest.approx(0.3, rel=1e-9)
    assert wasserstein_binned(edges, p, q, lo, hi, **sums) == pytest.approx(0.3, rel=1e-9)
    # Uniform mass in the long right tail is far off.
    assert abs(wasserstein_binned(edges, p, q, lo, hi) - 0.3) > 0.03


def test_wasserstein_binned_of_point_masses():
    # All mass at 0 against all mass at 3: W1 = 3. Spread uniformly over its
    # bin (1, 3], the window's mass sits at 2 on average, hence 2.
    assert wasserstein_binned([0.0, 1.0], [5, 0, 0], [0, 0, 5], 0.0, 3.0) == pytest.approx(2.0)
    exact = wasserstein_binned([0.0, 1.0], [5, 0, 0], [0, 0, 5], 0.0, 3.0, p_sums=[0, 0, 0], q_sums=[0, 0, 15])
    assert exact == pytest.approx(3.0)


# ---------------------------------------------------------------- Holm


def _holm_textbook(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order, start=1):
        running = max(running, (m - rank + 1) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def test_holm_matches_textbook_formula():
    rng = np.random.default_rng(6)
    for m in (1, 2, 5, 25, 100):
        p = rng.random(m) ** 3
        if m > 2:
            p[1] = p[2]  # ties
        assert holm(p) == pytest.approx(_holm_textbook(list(p)), abs=1e-15)


def test_holm_known_values():
    # By hand: sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(0.04, 3*0.03), max(0.09, 2*0.04), max(.., 0.5).
    assert holm([0.01, 0.04, 0.03, 0.5]).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.6, 0.9]).tolist() == [1.0, 1.0]
    assert holm([]).size == 0


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "call",
    [
        lambda: psi([1, 2], [1, 2, 3]),
        lambda: js_distance([0, 0], [1, 1]),
        lambda: ks_binned([1, -1], [1, 1]),
        lambda: chi2_homogeneity([], []),
        lambda: wasserstein_binned([0.0], [1, 1, 1], [1, 1, 1], 0, 1),
        lambda: holm([0.5, 1.5]),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
