"""Two-sample statistics on binned counts.

Every function takes count vectors: ``p`` holds the baseline counts and ``q``
the window counts, bin for bin, both of the same length. Counts, not
proportions, because the tests need the sample sizes. Nothing here keeps
state; the accumulators in :mod:`detectors.accumulate` produce the counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import chdtrc, chndtr, kolmogorov, ndtr, rel_entr

#: The effect sizes a drift decision can test, by feature type: the one definition (the config's
#: ``effect_method``, :class:`detectors.FeaturePolicy` and the effect intervals read it).
EFFECT_METHODS = {
    "numeric": ("wasserstein", "ks", "psi", "jensen_shannon"),
    "categorical": ("jensen_shannon", "psi"),
}

__all__ = [
    "MaterialTest",
    "binned_statistics",
    "chi2_homogeneity",
    "holm",
    "js_distance",
    "ks_binned",
    "material_divergence",
    "material_ks",
    "material_wasserstein",
    "material_wasserstein_batch",
    "material_wasserstein_many",
    "psi",
    "wasserstein_binned",
    "wasserstein_error_bound",
]

#: Two-sided 95% normal quantile, for the confidence intervals reported with every effect.
_Z95 = 1.959963984540054


def _pair(p, q):
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"p and q must be 1-D of the same length, got shapes {p.shape} and {q.shape}")
    if p.size == 0:
        raise ValueError("p and q must not be empty")
    # Four reductions (this runs several times per feature and window): a NaN fails the minimum's
    # comparison, an infinity makes the total infinite.
    total_p, total_q = p.sum(), q.sum()
    if not (p.min() >= 0 and q.min() >= 0 and total_p < np.inf and total_q < np.inf):
        raise ValueError("counts must be finite and non-negative")
    if total_p <= 0 or total_q <= 0:
        raise ValueError("both samples must have a positive total count")
    return p, q


def _rows(p, q):
    """``(rows, bins)`` count arrays, every row checked as :func:`_pair` checks a pair."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.ndim != 2 or p.shape != q.shape:
        raise ValueError(f"p and q must be (rows, bins) of the same shape, got shapes {p.shape} and {q.shape}")
    if p.shape[1] == 0:
        raise ValueError("p and q must not be empty")
    if p.shape[0] == 0:
        return p, q
    total_p, total_q = p.sum(axis=1), q.sum(axis=1)
    if not (p.min() >= 0 and q.min() >= 0 and total_p.max() < np.inf and total_q.max() < np.inf):
        raise ValueError("counts must be finite and non-negative")
    if total_p.min() <= 0 or total_q.min() <= 0:
        raise ValueError("both samples must have a positive total count")
    return p, q


def _boundary_rows(edges, lo, hi):
    """Bin boundaries of several features: ``edges`` (rows, bins - 1), ``lo`` and ``hi`` one value per row."""
    edges = np.asarray(edges, dtype=float)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    if edges.ndim != 2 or lo.shape != (edges.shape[0],) or hi.shape != lo.shape:
        raise ValueError("edges must be (rows, edges) with one lo and hi per row")
    if edges.shape[1]:
        # The open tails end at the extreme observed values; clamping only
        # matters for callers who pass a lo/hi that does not cover the edges.
        lo, hi = np.minimum(lo, edges[:, 0]), np.maximum(hi, edges[:, -1])
    elif (hi < lo).any():
        raise ValueError(f"hi ({hi.tolist()}) must be >= lo ({lo.tolist()})")
    return np.column_stack((lo, edges, hi))


def _psi_rows(p, q, eps):
    a = np.maximum(p / p.sum(axis=1, keepdims=True), eps)
    b = np.maximum(q / q.sum(axis=1, keepdims=True), eps)
    return np.sum((b - a) * np.log(b / a), axis=1)


def _js_rows(p, q):
    a = p / p.sum(axis=1, keepdims=True)
    b = q / q.sum(axis=1, keepdims=True)
    m = (a + b) / 2.0
    js = (rel_entr(a, m).sum(axis=1) + rel_entr(b, m).sum(axis=1)) / (2.0 * np.log(2.0))
    # Rounding can leave a tiny negative divergence for identical inputs.
    return np.sqrt(np.clip(js, 0.0, 1.0))


def _ks_rows(p, q):
    n_p, n_q = p.sum(axis=1), q.sum(axis=1)
    a, b = p / n_p[:, None], q / n_q[:, None]
    d = np.max(np.abs(np.cumsum(a - b, axis=1)[:, :-1]), axis=1, initial=0.0)
    n_eff = n_p * n_q / (n_p + n_q)
    p_value = np.clip(kolmogorov(d * np.sqrt(n_eff)), 0.0, 1.0)
    return d, p_value, np.max(np.minimum(a, b), axis=1)


def _signed_rows(b, p, q, p_sums, q_sums):
    """Per bin, the signed integral of ``F_p - F_q`` (exact from per-bin sums, see :func:`wasserstein_binned`)."""
    n_p, n_q = p.sum(axis=1), q.sum(axis=1)
    a, c = p / n_p[:, None], q / n_q[:, None]
    d = np.zeros(b.shape)  # d[:, i] = F_p - F_q at boundary i; both CDFs are 0 at lo and 1 at hi
    d[:, 1:] = np.cumsum(a - c, axis=1)
    d[:, -1] = 0.0
    bd = b * d
    return bd[:, 1:] - bd[:, :-1] - (p_sums / n_p[:, None] - q_sums / n_q[:, None])


def binned_statistics(edges, p, q, lo, hi, p_sums, q_sums) -> dict:
    """PSI, Jensen-Shannon distance, Wasserstein-1 (from per-bin sums) and the binned KS test of several
    features at once, each against its own baseline.

    Every argument has one entry per feature (``edges``, ``p``, ``q``, ``p_sums``, ``q_sums``: one row each,
    all with the same number of bins). Returns arrays, one value per feature: ``psi``, ``jensen_shannon``,
    ``wasserstein`` (in the data's units), ``ks``, ``ks_p_value``, ``ks_error_bound``: the numbers of
    :func:`psi`, :func:`js_distance`, :func:`wasserstein_binned` and :func:`ks_binned`, feature by feature.
    """
    p, q = _rows(p, q)
    b = _boundary_rows(edges, lo, hi)
    p_sums, q_sums = np.asarray(p_sums, dtype=float), np.asarray(q_sums, dtype=float)
    if b.shape[1] != p.shape[1] + 1 or p_sums.shape != p.shape or q_sums.shape != q.shape:
        raise ValueError("edges, counts and sums must agree in shape (one edge fewer than bins)")
    ks, ks_p, ks_err = _ks_rows(p, q)
    return {"psi": _psi_rows(p, q, 1e-4), "jensen_shannon": _js_rows(p, q),
            "wasserstein": np.abs(_signed_rows(b, p, q, p_sums, q_sums)).sum(axis=1),
            "ks": ks, "ks_p_value": ks_p, "ks_error_bound": ks_err}


def psi(p, q, eps=1e-4):
    """Population stability index.

    ``sum((b_i - a_i) * ln(b_i / a_i))`` over bins, where ``a`` and ``b`` are the
    baseline and window proportions, each floored at ``eps`` (and not
    renormalized). The floor keeps a bin that is empty on one side finite: it
    then contributes about ``share * ln(share / eps)``, so ``eps`` caps how much
    a brand-new bin can weigh.

    Parameters
    ----------
    p, q : array_like
        Baseline and window counts per bin.
    eps : float
        Floor for the proportions, in (0, 1).

    Returns
    -------
    float
        Natural-log PSI, >= 0.

    Examples
    --------
    >>> round(psi([50, 50], [40, 60]), 6)
    0.040547
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    p, q = _pair(p, q)
    return float(_psi_rows(p[None, :], q[None, :], eps)[0])


def js_distance(p, q):
    """Jensen-Shannon distance in base 2 (0 = identical, 1 = disjoint).

    The square root of the Jensen-Shannon divergence between the two
    normalized count vectors; equals
    ``scipy.spatial.distance.jensenshannon(p / p.sum(), q / q.sum(), base=2)``.

    Examples
    --------
    >>> js_distance([1, 0], [0, 1])
    1.0
    >>> round(js_distance([50, 50], [40, 60]), 6)
    0.085435
    """
    p, q = _pair(p, q)
    return float(_js_rows(p[None, :], q[None, :])[0])


def _boundaries(edges, lo, hi):
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1:
        raise ValueError("edges must be 1-D")
    if edges.size:
        # The open tails end at the extreme observed values; clamping only
        # matters for callers who pass a lo/hi that does not cover the edges.
        lo = min(float(lo), float(edges[0]))
        hi = max(float(hi), float(edges[-1]))
    elif hi < lo:
        raise ValueError(f"hi ({hi}) must be >= lo ({lo})")
    return np.concatenate(([lo], edges, [hi]))


def _wasserstein_setup(edges, p, q, lo, hi, p_sums, q_sums):
    p, q = _pair(p, q)
    b = _boundaries(edges, lo, hi)
    if b.size != p.size + 1:
        raise ValueError(f"{p.size} bins need {p.size - 1} edges, got {b.size - 2}")
    if (p_sums is None) != (q_sums is None):
        raise ValueError("give both p_sums and q_sums or neither")
    if p_sums is not None:
        p_sums = np.asarray(p_sums, dtype=float)
        q_sums = np.asarray(q_sums, dtype=float)
        if p_sums.shape != p.shape or q_sums.shape != q.shape:
            raise ValueError("p_sums and q_sums must have one entry per bin")
    a, c = p / p.sum(), q / q.sum()
    # d[i] = F_p - F_q at boundary i; both CDFs are 0 at lo and 1 at hi.
    d = np.concatenate(([0.0], np.cumsum(a - c)))
    d[-1] = 0.0
    return p, q, a, c, b, d, p_sums, q_sums


def wasserstein_binned(edges, p, q, lo, hi, *, p_sums=None, q_sums=None):
    """Wasserstein-1 distance between two binned samples.

    ``W1 = integral |F_p - F_q| dx``. Bins are ``(-inf, edges[0]], ...,
    (edges[-1], inf)``; the open tails are closed at ``lo`` and ``hi``, the
    smallest and largest value seen in either sample. Both CDFs are known
    exactly at the bin boundaries; what happens inside a bin depends on the
    information given.

    Without sums, mass is spread uniformly inside each bin (both CDFs linear),
    and the integral of the resulting piecewise-linear ``|F_p - F_q|`` is
    exact. Error: at a fraction ``t`` into a bin of width ``w`` holding the
    normalized masses ``a`` and ``b``, each true CDF lies between its values at
    the bin ends, so it is within ``a * max(t, 1 - t)`` (resp. ``b * ...``) of
    its linear stand-in. Integrating over the bin,
    ``|W_binned - W_exact| <= 3/4 * sum_i w_i (a_i + b_i) <= 3/2 * max_i w_i``.
    The tails are usually the widest bins, and uniform mass there
    overstates W1: a 0.1 std shift of a normal sample reads about 0.12.

    With ``p_sums`` and ``q_sums`` (the sum of the values in each bin) the
    signed integral over each bin is exact, by parts:
    ``integral_a^b F = b F(b) - a F(a) - (sum of values in (a, b]) / n``
    (``lo`` and ``hi`` then drop out). Summing the absolute values gives a
    lower bound of W1 that is exact whenever ``F_p - F_q`` keeps its sign
    inside every bin, as for any shift or scale change of one distribution.
    When it changes sign within a bin, the shortfall is at most
    ``2 w_i min(U_i, -L_i)`` with ``[L_i, U_i]`` the range the difference
    can take in the bin; overall at most ``sum_i w_i (a_i + b_i)``.

    Parameters
    ----------
    edges : array_like
        Interior bin edges, increasing, ``len(p) - 1`` of them.
    p, q : array_like
        Baseline and window counts per bin.
    lo, hi : float
        Minimum and maximum over both samples.
    p_sums, q_sums : array_like, optional
        Sum of the values in each bin, for both samples.

    Returns
    -------
    float
        W1 in the units of the data (the caller divides by the baseline std).

    Examples
    --------
    >>> wasserstein_binned([1.0], [10, 0], [0, 10], 0.0, 2.0)
    1.0
    >>> wasserstein_binned([1.0], [10, 0], [0, 10], 0.0, 2.0, p_sums=[5.0, 0.0], q_sums=[0.0, 20.0])
    1.5
    >>> wasserstein_binned([1.0], [10, 0], [0, 10], 0.0, 2.0, p_sums=[8.0, 0.0], q_sums=[0.0, 15.0])
    0.7
    """
    p, q, a, c, b, d, p_sums, q_sums = _wasserstein_setup(edges, p, q, lo, hi, p_sums, q_sums)
    if p_sums is not None:
        return float(np.abs(_signed_rows(b[None, :], p[None, :], q[None, :], p_sums[None, :], q_sums[None, :])).sum())
    left, right = d[:-1], d[1:]
    al, ar = np.abs(left), np.abs(right)
    total = al + ar
    # A linear piece that crosses zero integrates to w * (l^2 + r^2) / (2 (|l| + |r|)).
    crossing = np.divide(left**2 + right**2, 2.0 * total, out=np.zeros_like(total), where=total > 0)
    per_bin = np.diff(b) * np.where(left * right >= 0, total / 2.0, crossing)
    return float(per_bin.sum())


def wasserstein_error_bound(edges, p, q, lo, hi, *, p_sums=None, q_sums=None):
    """Bound on ``|wasserstein_binned(...) - W1 of the raw samples|``.

    Same arguments as :func:`wasserstein_binned`; the derivations are there.
    Without sums: ``3/4 * sum_i w_i (p_i / n_p + q_i / n_q)``. With sums:
    ``sum_i 2 w_i min(U_i, -L_i)`` over bins where the CDF difference can
    change sign.

    Examples
    --------
    >>> wasserstein_error_bound([1.0], [10, 0], [0, 10], 0.0, 2.0)
    1.5
    >>> wasserstein_error_bound([1.0], [10, 0], [0, 10], 0.0, 2.0, p_sums=[5.0, 0.0], q_sums=[0.0, 20.0])
    0.0
    """
    p, q, a, c, b, d, p_sums, q_sums = _wasserstein_setup(edges, p, q, lo, hi, p_sums, q_sums)
    w = np.diff(b)
    if p_sums is None:
        return float(0.75 * np.sum(w * (a + c)))
    # Inside bin i, F_p is in [P_{i-1}, P_i] and F_q in [Q_{i-1}, Q_i], so the
    # difference is at most d[i-1] + a_i and d[i] + c_i, at least d[i-1] - c_i and d[i] - a_i.
    upper = np.minimum(d[:-1] + a, d[1:] + c)
    lower = np.maximum(d[:-1] - c, d[1:] - a)
    return float(np.sum(2.0 * w * np.minimum(np.maximum(upper, 0.0), np.maximum(-lower, 0.0))))


def ks_binned(p, q):
    """Two-sample Kolmogorov-Smirnov test on binned samples.

    The statistic is ``max |F_p - F_q|`` over the bin edges only. Inside bin
    ``i`` the gap can grow by at most ``min(p_i / n_p, q_i / n_q)`` (the gap at
    a point inside is ``F_p`` at one end minus ``F_q`` at the other, and both
    ends are within ``D_binned``), so
    ``D_binned <= D_exact <= D_binned + error_bound``. With one bin per
    distinct value the two are equal.

    The p-value is the asymptotic Kolmogorov tail ``kstwobign.sf(D * sqrt(n_eff))``
    with ``n_eff = n_p * n_q / (n_p + n_q)``. It is conservative twice over:
    ``D_binned <= D_exact``, and for finite samples the limit overstates the tail
    (at ``n_eff`` in the thousands by about 1% relative; ``scipy.stats.kstwo``
    would be tighter but costs milliseconds per call). Ties also make the test
    conservative.

    Returns
    -------
    statistic : float
    p_value : float
    error_bound : float
        ``max_i min(p_i / n_p, q_i / n_q)``.

    Examples
    --------
    >>> d, pv, err = ks_binned([50, 50], [30, 70])
    >>> round(d, 6), round(pv, 4), round(err, 6)
    (0.2, 0.0366, 0.5)
    """
    p, q = _pair(p, q)
    d, p_value, error_bound = _ks_rows(p[None, :], q[None, :])
    return float(d[0]), float(p_value[0]), float(error_bound[0])


def chi2_homogeneity(p, q, min_expected=5.0):
    """Pearson chi-square test that two samples share one categorical distribution.

    A test of homogeneity on the 2 x k table ``[p, q]``: the baseline is a
    sample too, so its noise counts (a goodness-of-fit test against the
    baseline proportions would ignore it and over-alarm). Columns empty in
    both rows are dropped. Columns whose smaller expected count is below
    ``min_expected`` are pooled into one column, because with small expected
    counts the statistic's null distribution is far from chi-square and a few
    stray counts in a rare column would dominate it; pooling keeps their mass
    in the test. If the pooled column is still too small it is merged into the
    smallest remaining column.

    Parameters
    ----------
    p, q : array_like
        Baseline and window counts per category.
    min_expected : float
        Smallest expected count a column may keep on its own.

    Returns
    -------
    statistic : float
    dof : int
        Degrees of freedom, ``columns - 1`` after pooling.
    p_value : float
        1.0 when fewer than two columns remain (nothing to compare).

    Examples
    --------
    >>> stat, dof, pv = chi2_homogeneity([30, 70], [50, 50])
    >>> round(stat, 4), dof, round(pv, 5)
    (8.3333, 1, 0.00389)
    """
    p, q = _pool(*_pair(p, q), min_expected)
    if p.size < 2:
        return 0.0, 0, 1.0
    n_p, n_q = p.sum(), q.sum()
    table = np.vstack([p, q])
    expected = np.outer([n_p, n_q], p + q) / (n_p + n_q)
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = int(p.size - 1)
    return stat, dof, float(chdtrc(dof, stat))


def _pool(p, q, min_expected):
    """Drop columns empty in both samples; pool those with a small expected count (see chi2_homogeneity)."""
    if min_expected < 0:
        raise ValueError(f"min_expected must be >= 0, got {min_expected!r}")
    keep = (p + q) > 0
    p, q = p[keep], q[keep]
    n_p, n_q = p.sum(), q.sum()
    share = min(n_p, n_q) / (n_p + n_q)
    sparse = (p + q) * share < min_expected
    if sparse.any():
        p = np.append(p[~sparse], p[sparse].sum())
        q = np.append(q[~sparse], q[sparse].sum())
        if (p[-1] + q[-1]) * share < min_expected and p.size > 1:
            j = int(np.argmin(p[:-1] + q[:-1]))
            p[j] += p[-1]
            q[j] += q[-1]
            p, q = p[:-1], q[:-1]
    return p, q


def holm(p_values):
    """Holm-Bonferroni adjusted p-values.

    The i-th smallest p-value is multiplied by ``m - i + 1`` (i from 1), then a
    running maximum keeps the order monotone and values are capped at 1.
    Rejecting every hypothesis whose adjusted p-value is ``<= alpha`` keeps
    the family-wise error rate at ``alpha`` under any dependence.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, 0.5]).tolist()
    [0.04, 0.09, 0.09, 0.5]
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError("p_values must be 1-D")
    if p.size and (np.isnan(p).any() or (p < 0).any() or (p > 1).any()):
        raise ValueError("p_values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


# ---- tests of material drift: H0 "effect <= threshold" ------------------------------------------


@dataclass(frozen=True)
class MaterialTest:
    """A test of H0 "effect <= threshold" and the effect estimate behind it.

    Attributes
    ----------
    method : str
        ``"delta_method"`` (Wasserstein), ``"noncentral_chi2"`` (Jensen-Shannon, PSI) or
        ``"ks_bound"`` (Kolmogorov-Smirnov).
    estimate : float
        The effect, bias-corrected where the plug-in estimator is biased.
    plug_in : float
        The plug-in estimate (the value in ``statistics``).
    ci_low, ci_high : float
        A 95% confidence interval for the effect.
    p_value : float
        One-sided p-value of H0 ``effect <= threshold``.
    """

    method: str
    estimate: float
    plug_in: float
    ci_low: float
    ci_high: float
    p_value: float


def material_wasserstein(edges, p, q, lo, hi, p_sums, q_sums, p_std, q_std, threshold, scale=1.0):
    """Delta-method test that the Wasserstein-1 distance exceeds ``threshold``.

    ``W1 = sum_j |s_j|`` over bins, with ``s_j`` the signed integral of
    ``F_p - F_q`` over bin ``j`` (exact from per-bin sums, see
    :func:`wasserstein_binned`). With the signs held fixed W1 is a difference of
    two means, ``mean_p h - mean_q h`` with ``h(x) = integral_x^hi sign(F_p - F_q)``
    (its influence function), so its variance is ``Var_p h / n_p + Var_q h / n_q``.
    Within bin ``j``, ``h(x) = const_j - sign_j x``: the between-bin part of the
    variance comes from the bin counts and means, the within-bin part is the same
    for every sign pattern and equals the total variance (``p_std``, ``q_std``)
    minus the variance of the bin means, so the variance is exact up to the
    linearization.

    Folding ``|s_j|`` biases the plug-in upward where ``s_j`` is near 0 next to
    its noise (tails, small windows): each bin's bias, ``E|N(s, sd^2)| - |s|``
    with ``s_j`` and its standard deviation plugged in, is subtracted (an analytic
    bootstrap bias estimate; within-bin variances for it are allotted in proportion
    to each bin's largest possible variance, matching the known total).

    The p-value is ``1 - Phi((estimate - threshold) / se)``; the interval is
    ``estimate +- 1.96 se``. Both are in the units of the data divided by ``scale``
    (the baseline std for driftmon's normalized distance).

    Examples
    --------
    >>> t = material_wasserstein([0.0], [500, 500], [300, 700], -3.0, 3.0, [-400.0, 400.0], [-240.0, 560.0],
    ...                          1.0, 1.0, threshold=0.1)
    >>> round(t.plug_in, 3), round(t.estimate, 3), round(t.p_value, 6)
    (0.32, 0.32, 0.0)
    """
    p, q, a, c, b, d, p_sums, q_sums = _wasserstein_setup(edges, p, q, lo, hi, p_sums, q_sums)
    if p_sums is None:
        raise ValueError("material_wasserstein needs p_sums and q_sums")
    return _material_wasserstein_tests(b[None, :], p[None, :], q[None, :], p_sums[None, :], q_sums[None, :],
                                       p_std, q_std, threshold, scale)[0]


def material_wasserstein_many(edges, p, q, lo, hi, p_sums, q_sums, p_std, q_std, threshold, scale=1.0):
    """:func:`material_wasserstein` of several windows against one baseline at once (a list of tests).

    ``q``, ``q_sums`` are (windows, bins); ``lo``, ``hi`` and ``q_std`` one value per window. The same
    numbers as one call per window, at about the cost of one call (the per-segment drift of every segment
    value of a field).
    """
    q = np.asarray(q, dtype=float)
    if q.ndim != 2:
        raise ValueError("q must be (windows, bins)")
    g = q.shape[0]
    return material_wasserstein_batch([edges] * g, [p] * g, q, lo, hi, [p_sums] * g, q_sums, [p_std] * g, q_std,
                                      [threshold] * g, [scale] * g)


def material_wasserstein_batch(edges, p, q, lo, hi, p_sums, q_sums, p_std, q_std, threshold, scale):
    """:func:`material_wasserstein` of several features at once, each against its own baseline.

    Every argument has one entry per feature (``edges``, ``p``, ``q``, ``p_sums``, ``q_sums``: one row
    each, all with the same number of bins). The same numbers as one call per feature, at about the cost
    of one (the numeric features of a window).
    """
    if not len(q):
        return []
    if any(x is None for x in p_sums) or any(x is None for x in q_sums):
        raise ValueError("material_wasserstein needs p_sums and q_sums")
    p, q = _rows(p, q)
    b = _boundary_rows(edges, lo, hi)
    p_sums, q_sums = np.asarray(p_sums, dtype=float), np.asarray(q_sums, dtype=float)
    if b.shape[1] != p.shape[1] + 1:
        raise ValueError(f"{p.shape[1]} bins need {p.shape[1] - 1} edges, got {b.shape[1] - 2}")
    if p_sums.shape != p.shape or q_sums.shape != q.shape:
        raise ValueError("p_sums and q_sums must have one entry per bin")
    return _material_wasserstein_tests(b, p, q, p_sums, q_sums, np.asarray(p_std, dtype=float),
                                       np.asarray(q_std, dtype=float), np.asarray(threshold, dtype=float),
                                       np.asarray(scale, dtype=float))


def _material_wasserstein_tests(b, p, q, p_sums, q_sums, p_std, q_std, threshold, scale) -> list:
    """The delta-method tests of G rows: ``b`` (G, K+1) boundaries, ``p``/``q``/``p_sums``/``q_sums`` (G, K),
    ``p_std``, ``q_std``, ``threshold`` and ``scale`` (G,) or scalars."""
    g = q.shape[0]
    p, p_sums = np.broadcast_to(p, q.shape), np.broadcast_to(p_sums, q.shape)
    scale = np.broadcast_to(np.asarray(scale, dtype=float), (g,))
    if not (scale > 0).all():
        raise ValueError(f"scale must be > 0, got {scale.tolist()!r}")
    n_p, n_q = p.sum(axis=1), q.sum(axis=1)
    a, c = p / n_p[:, None], q / n_q[:, None]
    signed = _signed_rows(b, p, q, p_sums, q_sums)
    plug_in = np.abs(signed).sum(axis=1)
    sign = np.sign(signed)
    w = np.diff(b, axis=1)
    lower, upper = b[:, None, :-1], b[:, None, 1:]
    sw = sign * w
    tail = np.cumsum(sw[:, ::-1], axis=1)[:, ::-1] - sw  # integral of the signs above each bin
    # both samples of every row at once: axis 1 is (baseline, window)
    counts = np.stack((p, q), axis=1)
    sums = np.stack((p_sums, q_sums), axis=1)
    share = np.stack((a, c), axis=1)
    n = np.stack((n_p, n_q), axis=1)
    variance = np.stack((np.broadcast_to(np.asarray(p_std, dtype=float) ** 2, (g,)),
                         np.broadcast_to(np.asarray(q_std, dtype=float) ** 2, (g,))), axis=1)
    mid = np.broadcast_to((lower + upper) / 2.0, counts.shape)
    means = np.clip(np.divide(sums, counts, out=mid.copy(), where=counts > 0), lower, upper)
    centred = means - np.sum(share * means, axis=2, keepdims=True)
    within = np.maximum(variance - np.sum(share * centred**2, axis=2), 0.0)
    # each bin's within variance, allotted in proportion to its largest possible one (Bhatia-Davis)
    room = np.maximum((means - lower) * (upper - means), 0.0)
    total_room = np.sum(share * room, axis=2)
    fill = np.divide(within, total_room, out=np.zeros_like(within), where=total_room > 0)
    v = room * np.minimum(fill, 1.0)[:, :, None]
    inside = upper - means
    h = tail[:, None, :] + sign[:, None, :] * inside
    h_centred = h - np.sum(share * h, axis=2, keepdims=True)
    var_total = np.sum((np.sum(share * h_centred**2, axis=2) + within) / n, axis=1)
    # the signed integral of bin j alone: h_j = w_j below it, b_{j+1} - x inside it, 0 above it
    below = np.cumsum(share, axis=2) - share
    first = w[:, None, :] * below + share * inside
    second = w[:, None, :] ** 2 * below + share * (inside**2 + v)
    var_bins = np.sum(np.maximum(second - first**2, 0.0) / n[:, :, None], axis=1)
    sd = np.sqrt(var_bins)
    ratio = np.divide(np.abs(signed), sd, out=np.zeros_like(sd), where=sd > 0)
    bias = np.sum(2.0 * sd * (_phi(ratio) - ratio * ndtr(-ratio)), axis=1)  # 0 where sd is 0
    estimate = np.maximum(plug_in - bias, 0.0) / scale
    se = np.sqrt(var_total) / scale
    tau = np.broadcast_to(np.asarray(threshold, dtype=float), (g,))
    z = np.divide(-(estimate - tau), se, out=np.zeros(g), where=se > 0)
    p_values = np.where(se > 0, ndtr(z), (estimate <= tau).astype(float))
    plug = plug_in / scale
    return [MaterialTest("delta_method", e, pl, max(e - _Z95 * s, 0.0), e + _Z95 * s, pv)
            for e, pl, s, pv in zip(estimate.tolist(), plug.tolist(), se.tolist(), p_values.tolist())]


def _phi(x):
    return np.exp(-0.5 * np.square(x)) / np.sqrt(2.0 * np.pi)


def material_divergence(p, q, method, threshold, min_expected=10.0, eps=1e-4):
    """Noncentral chi-square test that a Jensen-Shannon distance or a PSI exceeds ``threshold``.

    Both are smooth, symmetric divergences whose second-order expansion is
    Pearson's: ``8 n_eff ln2 JS^2`` (JS distance in bits) and ``n_eff PSI``, with
    ``n_eff = n_p n_q / (n_p + n_q)``, are asymptotically noncentral chi-square
    with ``k - 1`` degrees of freedom and noncentrality that same expression of
    the true distributions (the cubic terms vanish by symmetry). So the statistic
    ``X`` is compared with the noncentral chi-square at the threshold's
    noncentrality, ``p = P(chi2(k - 1, lambda_threshold) >= X)``; the k - 1 is
    the plug-in's bias (about ``(k - 1) / (8 n_eff ln2)`` of squared JS
    distance, which at 500 events and 30 categories is four times a 0.05
    threshold's square): the estimate is ``(X - (k - 1))`` turned back into the
    effect's units, floored at 0, and its 95% interval uses
    ``Var X = 2 (k - 1 + 2 lambda)``.

    Columns are pooled first as in :func:`chi2_homogeneity` (expected count below
    ``min_expected`` in the smaller sample), because the chi-square limit needs
    expected counts; pooling can only lower either divergence (data processing),
    so the test stays valid for the unpooled effect, and conservative.

    Examples
    --------
    >>> t = material_divergence([4000, 6000], [350, 650], "jensen_shannon", 0.05)
    >>> round(t.plug_in, 4), round(t.estimate, 4), round(t.p_value, 4)
    (0.0439, 0.0415, 0.6683)
    """
    if method not in ("jensen_shannon", "psi"):
        raise ValueError(f"method must be 'jensen_shannon' or 'psi', got {method!r}")
    p, q = _pool(*_pair(p, q), min_expected)
    n_p, n_q = p.sum(), q.sum()
    n_eff = n_p * n_q / (n_p + n_q)
    df = p.size - 1
    if method == "jensen_shannon":
        plug_in = js_distance(p, q) if p.size else 0.0
        scale = 8.0 * np.log(2.0) * n_eff
        stat, lam0 = scale * plug_in**2, scale * float(threshold) ** 2
        back = lambda lam: float(np.sqrt(lam / scale))  # noqa: E731
    else:
        plug_in = psi(p, q, eps) if p.size else 0.0
        scale = n_eff
        stat, lam0 = scale * plug_in, scale * float(threshold)
        back = lambda lam: float(lam / scale)  # noqa: E731
    if df < 1:
        return MaterialTest("noncentral_chi2", 0.0, plug_in, 0.0, 0.0, 1.0)
    p_value = float(min(max(1.0 - chndtr(stat, df, lam0), 0.0), 1.0))
    lam = max(stat - df, 0.0)
    half = _Z95 * np.sqrt(2.0 * (df + 2.0 * lam))
    return MaterialTest("noncentral_chi2", back(lam), plug_in, back(max(lam - half, 0.0)), back(lam + half), p_value)


def material_ks(p, q, threshold):
    """Test that the (binned) Kolmogorov-Smirnov distance exceeds ``threshold``, by a distribution-free bound.

    ``|D_hat - D| <= sup |(F_p_hat - F_p) - (F_q_hat - F_q)|``, whose tail is the
    two-sample KS null distribution whatever the data, so
    ``p = kolmogorov(sqrt(n_eff) (D_hat - threshold))`` is valid (conservative)
    for every distribution; the same bound gives the 95% interval
    ``D_hat +- 1.358 / sqrt(n_eff)``. The estimate is the plug-in: the bound has
    no use for a bias correction.

    Examples
    --------
    >>> t = material_ks([500, 500], [300, 700], 0.05)
    >>> round(t.estimate, 3), round(t.p_value, 6)
    (0.2, 0.0)
    """
    d, _, _ = ks_binned(p, q)
    p, q = _pair(p, q)
    n_eff = p.sum() * q.sum() / (p.sum() + q.sum())
    root = np.sqrt(n_eff)
    excess = d - float(threshold)
    p_value = float(min(max(kolmogorov(excess * root), 0.0), 1.0)) if excess > 0 else 1.0
    half = 1.3580986393225505 / root  # the KS distribution's 95% point
    return MaterialTest("ks_bound", d, d, max(d - half, 0.0), min(d + half, 1.0), p_value)
