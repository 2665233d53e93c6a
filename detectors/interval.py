"""Confidence intervals for drift effects, by a parametric bootstrap on the binned counts.

A window result says how far a feature moved (its effect) and whether that is
significant; an incident review also wants to know how sure that figure is.
Both samples are noisy (the baseline is a sample too), so both are redrawn:
each side's bin counts from a multinomial with its own observed shares, the
per-bin sums scaled with the counts (so a bin keeps its mean), and the effect
recomputed. The percentile interval of the redraws is reported.

A distance is never negative, so near zero its sampling distribution is
skewed upwards and the interval need not contain 0 when nothing moved: read
the lower end against the threshold, not against zero.
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from .stats import EFFECT_METHODS, wasserstein_binned

__all__ = ["effect_interval"]

EFFECTS = EFFECT_METHODS["numeric"]


def _effects(method, p, q, edges, lo, hi, std, p_mean, q_mean):
    """The effect of every row pair of the count matrices ``p`` and ``q`` (one redraw per row).

    The same formulas as :func:`detectors.js_distance`, :func:`detectors.psi`, :func:`detectors.ks_binned`
    and :func:`detectors.wasserstein_binned`, over all redraws at once (a test holds them equal).
    """
    a = p / p.sum(axis=1, keepdims=True)
    c = q / q.sum(axis=1, keepdims=True)
    if method == "jensen_shannon":
        m = (a + c) / 2.0
        js = (rel_entr(a, m).sum(axis=1) + rel_entr(c, m).sum(axis=1)) / (2.0 * np.log(2.0))
        return np.sqrt(np.clip(js, 0.0, 1.0))
    if method == "psi":
        a, c = np.maximum(a, 1e-4), np.maximum(c, 1e-4)
        return np.sum((c - a) * np.log(c / a), axis=1)
    if method == "ks":
        return np.max(np.abs(np.cumsum(a - c, axis=1)[:, :-1]), axis=1, initial=0.0)
    if p_mean is None:
        return np.array([wasserstein_binned(edges, x, y, lo, hi) for x, y in zip(p, q)]) / std
    # wasserstein_binned with sums, by parts: per bin, b_i d_i - b_(i-1) d_(i-1) minus the difference of
    # the bin's mean-weighted shares (the tails' lo and hi cancel out)
    bounds = np.concatenate(([lo], edges, [hi])) if len(edges) else np.array([lo, hi], dtype=float)
    d = np.concatenate((np.zeros((len(p), 1)), np.cumsum(a - c, axis=1)), axis=1)
    d[:, -1] = 0.0
    bd = bounds * d
    signed = bd[:, 1:] - bd[:, :-1] - (a * p_mean - c * q_mean)
    return np.abs(signed).sum(axis=1) / std


def effect_interval(method, p, q, *, edges=None, lo=None, hi=None, std=None, p_sums=None, q_sums=None,
                    level=0.9, draws=200, seed=0):
    """Bootstrap interval of a drift effect between baseline counts ``p`` and window counts ``q``.

    Parameters
    ----------
    method : str
        ``"wasserstein"`` (needs ``edges``, ``lo``, ``hi`` and ``std``, the baseline's), ``"ks"``,
        ``"psi"`` or ``"jensen_shannon"``.
    p, q : array_like
        Counts per bin (or per category) of the baseline and the window.
    p_sums, q_sums : array_like, optional
        Per-bin sums of the values, for the Wasserstein distance (see :func:`detectors.wasserstein_binned`).
    level : float
        Coverage of the interval, in (0, 1).
    draws : int
        Bootstrap redraws.
    seed : int

    Returns
    -------
    (low, high) : tuple of float, or None
        None when either side is empty or the effect is undefined (a constant baseline's Wasserstein).

    Examples
    --------
    >>> low, high = effect_interval("jensen_shannon", [500, 500], [400, 600])
    >>> round(low, 3), round(high, 3)
    (0.052, 0.117)
    """
    if method not in EFFECTS:
        raise ValueError(f"method must be one of {EFFECTS}, got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if int(draws) < 10:
        raise ValueError(f"draws must be at least 10, got {draws!r}")
    p = np.asarray(p, dtype=np.int64)
    q = np.asarray(q, dtype=np.int64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"p and q must be 1-D of the same length, got {p.shape} and {q.shape}")
    n_p, n_q = int(p.sum()), int(q.sum())
    if n_p <= 0 or n_q <= 0:
        return None
    if method == "wasserstein":
        if edges is None or lo is None or hi is None:
            raise ValueError("wasserstein needs edges, lo and hi")
        if not std or std <= 0:
            return None
    rng = np.random.default_rng(seed)
    p_mean = q_mean = None
    if p_sums is not None and q_sums is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            p_mean = np.where(p > 0, np.asarray(p_sums, dtype=float) / np.maximum(p, 1), 0.0)
            q_mean = np.where(q > 0, np.asarray(q_sums, dtype=float) / np.maximum(q, 1), 0.0)
    p_draws = rng.multinomial(n_p, p / n_p, size=int(draws)).astype(float)
    q_draws = rng.multinomial(n_q, q / n_q, size=int(draws)).astype(float)
    edges = None if edges is None else np.asarray(edges, dtype=float)
    values = _effects(method, p_draws, q_draws, edges, lo, hi, std, p_mean, q_mean)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)
