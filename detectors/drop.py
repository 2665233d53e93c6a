"""The performance drop test: is a window's metric worse than the baseline's by more than a margin?"""

from __future__ import annotations

import numbers

from scipy.special import bdtr, ndtr

__all__ = ["HIGHER_IS_BETTER", "PROPORTIONS", "performance_drop_test"]

PROPORTIONS = frozenset({"accuracy", "precision", "recall"})
HIGHER_IS_BETTER = {
    "accuracy": True, "precision": True, "recall": True, "f1": True, "roc_auc": True, "r2": True,
    "log_loss": False, "ece": False, "mae": False, "rmse": False, "mape": False,
}  # fmt: skip


def performance_drop_test(
    metric, baseline_value, window_value, n, margin=0.0, *, std_err=None, alpha=0.05, higher_is_better=None
):
    """One-sided test that a window's metric is worse than baseline by more than ``margin``.

    For a metric where higher is better the hypotheses are
    H0: true window value >= baseline - margin, H1: it is below; for error
    metrics (log_loss, ece, mae, rmse, mape) they are mirrored around
    baseline + margin. ``drop`` is ``p_value <= alpha``. The baseline is taken
    as a known constant (it comes from a large labelled set); with a small
    baseline set, widen ``margin``.

    * accuracy, precision, recall (proportions; binary precision/recall
      only): exact one-sided binomial test (the lower tail P(X <= k), as
      ``scipy.stats.binomtest(..., alternative="less")``, computed with
      ``scipy.special.bdtr`` so the daemon need not import scipy.stats) of k = round(value * n) successes out of
      ``n``, against p0 = baseline - margin. ``n`` must be the metric's
      denominator: rows for accuracy, predicted positives for precision,
      actual positives for recall. ``test = "binomial_exact"``.
    * any other metric: normal approximation, z = (value - threshold) /
      ``std_err`` (sign mirrored for error metrics), p = Phi(z). The standard
      error is the caller's; :meth:`ClassificationAccumulator.std_errors` and
      :meth:`RegressionAccumulator.std_errors` give documented ones (delta
      method for F1 and RMSE, Hanley-McNeil for ROC AUC, sample std / sqrt(n)
      for means). ``test = "normal"``.

    Parameters
    ----------
    metric : str
        Metric name; unknown names need ``higher_is_better``.
    baseline_value, window_value : float or None
        None (an undefined window metric) gives ``p_value=None``, ``drop=False``.
    n : int
        Rows behind the window value (see above); 0 gives ``p_value=None``.
    margin : float
        Tolerated worsening, >= 0, in the metric's units.
    std_err : float or None
        Needed for non-proportion metrics.
    alpha : float
        Significance level in (0, 1).
    higher_is_better : bool or None
        Overrides the built-in direction of ``metric``.

    Returns
    -------
    dict
        ``{metric, baseline, value, margin, threshold, n, p_value, alpha,
        drop, test}``; ``threshold`` is baseline -/+ margin.

    Examples
    --------
    >>> r = performance_drop_test("accuracy", 0.90, 0.85, n=1000, margin=0.02)
    >>> r["test"], round(r["p_value"], 5), r["drop"]
    ('binomial_exact', 0.00263, True)
    >>> r = performance_drop_test("roc_auc", 0.80, 0.78, n=2000, margin=0.0, std_err=0.01)
    >>> r["test"], round(r["p_value"], 4), r["drop"]
    ('normal', 0.0228, True)
    """
    if higher_is_better is None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {metric!r}: pass higher_is_better")
        higher_is_better = HIGHER_IS_BETTER[metric]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(margin, numbers.Real) and 0 <= margin < float("inf")):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if baseline_value is None:
        raise ValueError("baseline_value is required")
    proportion = metric in PROPORTIONS
    threshold = baseline_value - margin if higher_is_better else baseline_value + margin
    out = {
        "metric": metric,
        "baseline": float(baseline_value),
        "value": None if window_value is None else float(window_value),
        "margin": float(margin),
        "threshold": float(threshold),
        "n": int(n),
        "p_value": None,
        "alpha": float(alpha),
        "drop": False,
        "test": "binomial_exact" if proportion else "normal",
    }
    if window_value is None or n == 0:
        return out
    if proportion:
        if not 0 <= window_value <= 1 or not 0 <= baseline_value <= 1:
            raise ValueError(f"{metric} values must be in [0, 1]")
        k = int(round(window_value * n))
        # p0 <= 0: the metric cannot fall below the threshold, nothing to detect.
        p_value = 1.0 if threshold <= 0 else float(min(1.0, bdtr(k, int(n), min(threshold, 1.0))))
    else:
        if std_err is None or not std_err > 0:
            raise ValueError(f"{metric} needs a positive std_err for the normal test, got {std_err!r}")
        z = (window_value - threshold) / std_err if higher_is_better else (threshold - window_value) / std_err
        p_value = float(ndtr(z))
    out["p_value"] = p_value
    out["drop"] = bool(p_value <= alpha)
    return out
