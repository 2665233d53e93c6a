"""Baseline profiles: what a feature looked like in the training data.

A profile is fitted once, saved with :meth:`to_dict` (plain JSON types) and
loaded with :meth:`from_dict`. Windows are compared against it through the
accumulators in :mod:`detectors.accumulate`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["CategoricalProfile", "NumericProfile", "count_categories"]

_QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p95": 0.95, "p99": 0.99}
MAX_OTHER_CATEGORIES = 10_000


def _float_or_none(x):
    return None if x is None else float(x)


def _frozen(a, dtype):
    a = np.array(a, dtype=dtype)
    a.setflags(write=False)
    return a


def _ratio(part, whole):
    return None if whole == 0 else part / whole


def count_categories(values):
    """Count category names in ``values``.

    Keys are ``str(value)``; ``None`` and float NaN are missing.

    Returns
    -------
    counts : dict[str, int]
    missing : int

    Examples
    --------
    >>> count_categories(["a", None, "a", True, 1])
    ({'a': 2, 'True': 1, '1': 1}, 1)
    """
    if isinstance(values, np.ndarray):
        values = values.tolist()
    raw = Counter(values)
    missing = raw.pop(None, 0)
    if all(type(k) is str for k in raw):
        return dict(raw), missing
    if all(type(k) is str or type(k) is int for k in raw):
        # Integers (a class label) equal only integers of the same value, so the counts are right;
        # 1 and "1" share a name.
        counts = {}
        for k, c in raw.items():
            name = k if type(k) is str else str(k)
            counts[name] = counts.get(name, 0) + c
        return counts, missing
    # Counter merges keys that compare equal (1 == 1.0 == True), which would
    # file True under "1"; for non-string data count the names instead.
    nan = sum(c for k, c in raw.items() if k != k)
    counts = Counter(map(str, values))
    for name, c in (("None", missing), ("nan", nan)):
        if c:
            counts[name] -= c
            if not counts[name]:
                del counts[name]
    return dict(counts), missing + nan


class NumericProfile:
    """Baseline summary of a numeric feature.

    Parameters
    ----------
    edges : array_like
        Interior bin edges, strictly increasing. Bin ``i`` is
        ``(edges[i-1], edges[i]]``, with open tails, so there are
        ``len(edges) + 1`` bins.
    counts : array_like
        Baseline count per bin.
    sums : array_like
        Sum of the values in each bin; makes the binned Wasserstein
        distance exact in the tails (see :func:`detectors.stats.wasserstein_binned`).
    missing : int
        Missing (non-finite) values.
    min, max, mean, std : float or None
        Of the non-missing values; ``std`` is the population std (ddof=0).
        None when there were none.
    quantiles : dict
        ``p01, p05, p25, p50, p75, p95, p99`` (linear interpolation, as
        ``np.quantile``), None when there were no values.
    reservoir : array_like
        A uniform random sample of the values, for plots and exact tests.

    Examples
    --------
    >>> x = np.arange(1.0, 11.0)
    >>> prof = NumericProfile.fit(x, bins=5)
    >>> prof.edges.tolist(), prof.counts.tolist(), prof.n
    ([2.0, 4.0, 6.0, 8.0], [2, 2, 2, 2, 2], 10)
    """

    def __init__(self, edges, counts, sums, missing, min, max, mean, std, quantiles, reservoir):
        self.edges = _frozen(edges, float)
        self.counts = _frozen(counts, np.int64)
        if self.edges.ndim != 1 or self.counts.shape != (self.edges.size + 1,):
            raise ValueError(f"{self.edges.size} edges need {self.edges.size + 1} counts, got {self.counts.shape}")
        self.sums = _frozen(sums, float)
        if self.sums.shape != self.counts.shape or not np.isfinite(self.sums).all():
            raise ValueError("sums must be finite, one per bin")
        if not np.isfinite(self.edges).all() or (np.diff(self.edges) <= 0).any():
            raise ValueError("edges must be finite and strictly increasing")
        if (self.counts < 0).any() or int(missing) < 0:
            raise ValueError("counts and missing must be non-negative")
        self.missing = int(missing)
        self.min = _float_or_none(min)
        self.max = _float_or_none(max)
        self.mean = _float_or_none(mean)
        self.std = _float_or_none(std)
        self.quantiles = {k: _float_or_none(quantiles.get(k)) for k in _QUANTILES}
        self.reservoir = _frozen(reservoir, float)

    @classmethod
    def fit(cls, values, bins=20, reservoir_size=1000, seed=0):
        """Profile ``values`` (a float array; NaN and +-inf count as missing).

        Edges are the baseline quantiles at ``1/bins, ..., (bins-1)/bins``
        (inverted-CDF, so each edge is an observed value), deduplicated: a
        discrete feature gets one bin per frequent value instead of empty
        bins.
        """
        if int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins!r}")
        if int(reservoir_size) < 0:
            raise ValueError(f"reservoir_size must be >= 0, got {reservoir_size!r}")
        x = np.asarray(values, dtype=float).ravel()
        finite = np.isfinite(x)
        missing = int(x.size - finite.sum())
        x = x[finite]
        if x.size == 0:
            return cls([], [0], [0.0], missing, None, None, None, None, {}, [])
        # Sorted once: quantiles of sorted data are cheap (select is ~10x faster), and bin counts and
        # sums come from positions and a cumulative sum instead of a pass per statistic.
        xs = np.sort(x)
        # numpy's inverted-CDF quantiles (each edge an observed value), read off the sorted values
        at = np.clip(np.ceil(xs.size * (np.arange(1, bins) / bins) - 1).astype(np.int64), 0, xs.size - 1)
        edges = np.unique(xs[at])
        # bin i is (edges[i-1], edges[i]]: its values end where the first value > edges[i] starts
        ends = np.concatenate([np.searchsorted(xs, edges, side="right"), [xs.size]])
        counts = np.diff(ends, prepend=0)
        cumulative = np.concatenate([[0.0], np.cumsum(xs)])
        sums = np.diff(cumulative[ends], prepend=0.0)
        # numpy's default (linear) quantiles, read off the sorted values without another selection pass
        position = np.array(list(_QUANTILES.values())) * (xs.size - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, xs.size - 1)
        values = xs[low] + (position - low) * (xs[high] - xs[low])
        quantiles = dict(zip(_QUANTILES, values))
        rng = np.random.default_rng(seed)
        reservoir = x if x.size <= reservoir_size else rng.choice(x, size=int(reservoir_size), replace=False)
        return cls(edges, counts, sums, missing, xs[0], xs[-1], x.mean(), x.std(), quantiles, reservoir)

    @property
    def n(self):
        """Non-missing values."""
        return int(self.counts.sum())

    @property
    def missing_ratio(self):
        """Missing share of all rows, None if there were no rows."""
        return _ratio(self.missing, self.n + self.missing)

    def to_dict(self):
        """JSON-safe dict; :meth:`from_dict` reverses it."""
        return {
            "type": "numeric",
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
            "n": self.n,
            "missing": self.missing,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "quantiles": dict(self.quantiles),
            "reservoir": self.reservoir.tolist(),
        }

    @classmethod
    def from_dict(cls, d):
        if d.get("type") != "numeric":
            raise ValueError(f"not a numeric profile: type={d.get('type')!r}")
        prof = cls(
            d["edges"], d["counts"], d["sums"], d["missing"], d["min"], d["max"], d["mean"], d["std"], d["quantiles"], d["reservoir"]
        )
        if "n" in d and d["n"] != prof.n:
            raise ValueError(f"n={d['n']} does not match sum(counts)={prof.n}")
        return prof

    def __repr__(self):
        return f"NumericProfile(n={self.n}, missing={self.missing}, bins={self.counts.size})"


class CategoricalProfile:
    """Baseline summary of a categorical feature.

    Parameters
    ----------
    categories : list of str
        The most frequent categories, most frequent first.
    counts : array_like
        Baseline count per category.
    other_count : int
        Values in all other categories together.
    other_categories : list of str
        Names of those other categories, sorted (at most 10 000, the most
        frequent; rarer ones still count in ``other_count`` but a window will
        see them as unseen).
    missing : int
        ``None`` or NaN values.

    Examples
    --------
    >>> prof = CategoricalProfile.fit(["b", "a", "b", None, "c", "a", "b"], max_categories=2)
    >>> prof.categories, prof.counts.tolist(), prof.other_categories, prof.other_count
    (['b', 'a'], [3, 2], ['c'], 1)
    """

    def __init__(self, categories, counts, other_count, other_categories, missing):
        self.categories = [str(c) for c in categories]
        self.counts = _frozen(counts, np.int64)
        self.other_count = int(other_count)
        self.other_categories = sorted(str(c) for c in other_categories)
        self.missing = int(missing)
        if self.counts.shape != (len(self.categories),):
            raise ValueError(f"{len(self.categories)} categories need as many counts, got {self.counts.shape}")
        if len(set(self.categories) | set(self.other_categories)) != len(self.categories) + len(self.other_categories):
            raise ValueError("category names must be unique across categories and other_categories")
        if (self.counts < 0).any() or self.other_count < 0 or self.missing < 0:
            raise ValueError("counts must be non-negative")

    @classmethod
    def fit(cls, values, max_categories=50):
        """Profile ``values`` (str/int/bool/None; compared as ``str(value)``).

        Ties in frequency are broken by name so the result is deterministic.
        """
        if int(max_categories) < 1:
            raise ValueError(f"max_categories must be >= 1, got {max_categories!r}")
        counts, missing = count_categories(values)
        return cls.from_counts(counts, missing, max_categories)

    @classmethod
    def from_counts(cls, counts, missing=0, max_categories=50):
        """Profile from counts already made (category name -> count, plus missing values)."""
        if int(max_categories) < 1:
            raise ValueError(f"max_categories must be >= 1, got {max_categories!r}")
        counts = {str(k): int(c) for k, c in counts.items()}
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[: int(max_categories)]
        rest = ranked[int(max_categories) :]
        return cls(
            [k for k, _ in top],
            [c for _, c in top],
            sum(c for _, c in rest),
            [k for k, _ in rest[:MAX_OTHER_CATEGORIES]],
            int(missing),
        )

    @property
    def n(self):
        """Non-missing values."""
        return int(self.counts.sum()) + self.other_count

    @property
    def missing_ratio(self):
        """Missing share of all rows, None if there were no rows."""
        return _ratio(self.missing, self.n + self.missing)

    def to_dict(self):
        """JSON-safe dict; :meth:`from_dict` reverses it."""
        return {
            "type": "categorical",
            "categories": list(self.categories),
            "counts": self.counts.tolist(),
            "other_count": self.other_count,
            "other_categories": list(self.other_categories),
            "n": self.n,
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, d):
        if d.get("type") != "categorical":
            raise ValueError(f"not a categorical profile: type={d.get('type')!r}")
        prof = cls(d["categories"], d["counts"], d["other_count"], d["other_categories"], d["missing"])
        if "n" in d and d["n"] != prof.n:
            raise ValueError(f"n={d['n']} does not match the counts ({prof.n})")
        return prof

    def __repr__(self):
        return f"CategoricalProfile(n={self.n}, categories={len(self.categories)}, other={len(self.other_categories)})"
