"""Helpers shared by the performance modules: label arrays, safe division, argument checks, moments."""

from __future__ import annotations

import numbers

import numpy as np

MAX_CLASSES = 100
OVERFLOW = "__overflow__"
LOG_LOSS_EPS = 1e-15


def _labels(values):
    """Labels as a str array plus a mask of missing ones (None, float NaN)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "USiub":
        x = values.ravel()
        return x.astype(str), np.zeros(x.size, dtype=bool)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        x = values.ravel()
        return x.astype(str), np.isnan(x)
    values = values.ravel().tolist() if isinstance(values, np.ndarray) else list(values)
    missing = np.fromiter((v is None or v != v for v in values), dtype=bool, count=len(values))
    return np.array([str(v) for v in values], dtype=str).reshape(len(values)), missing


def _div(a, b):
    return None if b == 0 else float(a / b)


def _positive_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _scores(score, size):
    s = np.asarray(score, dtype=float).ravel()
    if s.size != size:
        raise ValueError(f"score has {s.size} values for {size} rows")
    finite = np.isfinite(s)
    if ((s[finite] < 0) | (s[finite] > 1)).any():
        raise ValueError("scores must be probabilities in [0, 1] (NaN = no score)")
    return s, finite


def _bin(s, bins):
    """Equal-width bin of each score in [0, 1]: floor(s * bins), 1.0 in the last bin."""
    return np.minimum((s * bins).astype(np.int64), bins - 1)


class _Moments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.).

    Raw power sums lose all precision when the mean is large next to the
    spread; this form does not.
    """

    __slots__ = ("n", "mean", "m2")

    def __init__(self, n=0, mean=0.0, m2=0.0):
        self.n, self.mean, self.m2 = int(n), float(mean), float(m2)

    def add(self, x):
        if x.size == 0:
            return
        n_b, mean_b = x.size, float(x.mean())
        dev = x - mean_b
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += float(dev @ dev) + delta * delta * self.n * n_b / n
        self.mean += delta * n_b / n
        self.n = n

    def merge(self, other):
        """Add another set of moments (Chan et al.'s pairwise formula). Returns self."""
        if other.n == 0:
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n
        return self

    def sample_var(self):
        return max(self.m2, 0.0) / (self.n - 1) if self.n > 1 else None

    def std_err(self):
        """Standard error of the mean, None with fewer than 2 values."""
        v = self.sample_var()
        return None if v is None else float(np.sqrt(v / self.n))

    def to_list(self):
        return [self.n, self.mean, self.m2]


def _f1(tp, fp, fn):
    """2TP / (2TP + FP + FN): the harmonic mean of precision and recall, defined whenever the denominator is."""
    return _div(2 * tp, 2 * tp + fp + fn)
