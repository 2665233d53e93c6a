"""Window-side accumulators: fixed-size summaries of a stream of values.

Memory does not grow with the number of rows: a histogram over the baseline
bins plus a few moments, or category counts plus a bounded list of unseen
names. Both support ``merge`` (for parallel or chunked windows) and a
JSON-safe ``state_dict`` for checkpoints.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .profile import count_categories

__all__ = ["CategoryCounter", "NumericHistogram"]


def _float_list_equal(a, b):
    return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b))


class NumericHistogram:
    """Counts of a window's numeric values in the baseline bins, plus moments.

    Parameters
    ----------
    edges : array_like
        Interior bin edges from :class:`~detectors.profile.NumericProfile`;
        bin ``i`` is ``(edges[i-1], edges[i]]`` with open tails.
    low, high : float or None
        Baseline min and max; values outside ``[low, high]`` count as out of
        range. None (an empty baseline) makes every value out of range.

    Notes
    -----
    NaN and +-inf count as missing. Mean and variance are merged batch by
    batch with Chan's formula rather than kept as raw power sums, which lose
    all precision when the mean is large next to the spread.

    Examples
    --------
    >>> h = NumericHistogram([1.0, 2.0], low=0.0, high=3.0)
    >>> h.update(np.array([0.5, 1.0, 1.5, 4.0, np.nan])).counts.tolist()
    [2, 1, 1]
    >>> h.n, h.missing, h.out_of_range, h.mean
    (4, 1, 1, 1.75)
    """

    def __init__(self, edges, low, high):
        edges = np.array(edges, dtype=float)
        if edges.ndim != 1 or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
            raise ValueError("edges must be a 1-D, finite, strictly increasing sequence")
        if (low is None) != (high is None) or (low is not None and not low <= high):
            raise ValueError(f"need low <= high (or both None), got low={low!r}, high={high!r}")
        edges.setflags(write=False)
        self.edges = edges
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        self._reset()

    def _reset(self):
        self._counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self._sums = np.zeros(self.edges.size + 1)
        self._missing = 0
        self._out_of_range = 0
        self._min = np.inf
        self._max = -np.inf
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean

    def reset(self):
        """Forget everything seen; keep the bins."""
        self._reset()
        return self

    def update(self, values):
        """Add a batch of values (float array; NaN = missing). Returns self."""
        x = np.asarray(values, dtype=float).ravel()
        finite = np.isfinite(x)
        n_finite = int(np.count_nonzero(finite))
        if n_finite < x.size:
            self._missing += x.size - n_finite
            x = x[finite]
        if x.size == 0:
            return self
        # Sorting once is about twice as fast as a binary search per value from a few thousand values
        # on: bin counts, sums, range and the out-of-range count all come from positions in it.
        xs = np.sort(x)
        ends = np.empty(self.edges.size + 1, dtype=np.int64)
        ends[:-1] = np.searchsorted(xs, self.edges, side="right")  # bin i is (edges[i-1], edges[i]]
        ends[-1] = xs.size
        self._counts += np.diff(ends, prepend=0)
        cumulative = np.empty(xs.size + 1)
        cumulative[0] = 0.0
        np.cumsum(xs, out=cumulative[1:])
        self._sums += np.diff(cumulative[ends], prepend=0.0)
        if self.low is None:
            self._out_of_range += x.size
        else:
            below = int(np.searchsorted(xs, self.low, side="left"))
            above = xs.size - int(np.searchsorted(xs, self.high, side="right"))
            self._out_of_range += below + above
        self._min = min(self._min, float(xs[0]))
        self._max = max(self._max, float(xs[-1]))
        mean = float(cumulative[-1]) / x.size
        dev = x - mean
        self._combine(x.size, mean, float(dev @ dev))
        return self

    def _combine(self, n_b, mean_b, m2_b):
        n_a = self.n - n_b  # counts already include the batch
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean += delta * n_b / n
        self._m2 += m2_b + delta * delta * n_a * n_b / n

    @staticmethod
    def update_groups(hists, values, groups):
        """Add a batch to one histogram per group in one pass (``groups[i]`` indexes ``hists`` for row i).

        The same as ``hists[g].update(values[groups == g])`` for every g, with one binary search and a
        few ``bincount`` calls for the whole batch instead of a sort per group (per-segment windows).
        All histograms must share the bins and range.
        """
        if not hists:
            return
        first = hists[0]
        if any(not np.array_equal(h.edges, first.edges) or (h.low, h.high) != (first.low, first.high) for h in hists):
            raise ValueError("update_groups needs histograms with the same edges, low and high")
        x = np.asarray(values, dtype=float).ravel()
        g = np.asarray(groups, dtype=np.int64).ravel()
        if g.size != x.size or (g.size and (g.min() < 0 or g.max() >= len(hists))):
            raise ValueError("groups must give a histogram index for every value")
        n_groups, k = len(hists), first.edges.size + 1
        finite = np.isfinite(x)
        missing = np.bincount(g[~finite], minlength=n_groups)
        x, g = x[finite], g[finite]
        cell = g * k + np.searchsorted(first.edges, x, side="left")  # bin i is (edges[i-1], edges[i]]
        counts = np.bincount(cell, minlength=n_groups * k).reshape(n_groups, k)
        sums = np.bincount(cell, weights=x, minlength=n_groups * k).reshape(n_groups, k)
        n = counts.sum(axis=1)
        if first.low is None:
            outside = n
        else:
            outside = np.bincount(g, weights=(x < first.low) | (x > first.high), minlength=n_groups)
        mean = np.divide(np.bincount(g, weights=x, minlength=n_groups), n, out=np.zeros(n_groups), where=n > 0)
        dev = x - mean[g]
        m2 = np.bincount(g, weights=dev * dev, minlength=n_groups)
        low, high = np.full(n_groups, np.inf), np.full(n_groups, -np.inf)
        np.minimum.at(low, g, x)
        np.maximum.at(high, g, x)
        for i, h in enumerate(hists):
            h._missing += int(missing[i])
            if n[i] == 0:
                continue
            h._counts += counts[i]
            h._sums += sums[i]
            h._out_of_range += int(outside[i])
            h._min = min(h._min, float(low[i]))
            h._max = max(h._max, float(high[i]))
            h._combine(int(n[i]), float(mean[i]), float(m2[i]))

    def merge(self, other):
        """Add another histogram over the same bins. Returns self."""
        if not isinstance(other, NumericHistogram):
            raise TypeError(f"cannot merge {type(other).__name__} into NumericHistogram")
        if not np.array_equal(self.edges, other.edges) or (self.low, self.high) != (other.low, other.high):
            raise ValueError("can only merge histograms with the same edges, low and high")
        self._missing += other._missing
        if other.n == 0:
            return self
        self._counts += other._counts
        self._sums += other._sums
        self._out_of_range += other._out_of_range
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        self._combine(other.n, other._mean, other._m2)
        return self

    @property
    def counts(self):
        """Count per bin (a copy)."""
        return self._counts.copy()

    @property
    def sums(self):
        """Sum of the values in each bin (a copy)."""
        return self._sums.copy()

    @property
    def n(self):
        """Non-missing values."""
        return int(self._counts.sum())

    @property
    def missing(self):
        return self._missing

    @property
    def out_of_range(self):
        """Non-missing values outside the baseline ``[low, high]``."""
        return self._out_of_range

    @property
    def min(self):
        return float(self._min) if self.n else None

    @property
    def max(self):
        return float(self._max) if self.n else None

    @property
    def mean(self):
        return self._mean if self.n else None

    @property
    def std(self):
        """Population standard deviation (ddof=0), like the profile's."""
        return float(np.sqrt(max(self._m2, 0.0) / self.n)) if self.n else None

    @property
    def sum(self):
        return self._mean * self.n

    @property
    def sumsq(self):
        """Sum of squares, derived from the stable mean and variance."""
        return self._m2 + self.n * self._mean**2

    def state_dict(self):
        """JSON-safe state; includes the bins so a load can check them."""
        return {
            "edges": self.edges.tolist(),
            "low": self.low,
            "high": self.high,
            "counts": self._counts.tolist(),
            "sums": self._sums.tolist(),
            "missing": self._missing,
            "out_of_range": self._out_of_range,
            "min": self.min,
            "max": self.max,
            "mean": self._mean,
            "m2": self._m2,
        }

    def load_state_dict(self, d):
        """Restore :meth:`state_dict` output. Returns self.

        Raises ValueError if the state was saved with other bins (for example,
        against a different baseline).
        """
        if not _float_list_equal(d["edges"], self.edges) or (d["low"], d["high"]) != (self.low, self.high):
            raise ValueError("state was saved for different edges, low or high")
        counts = np.array(d["counts"], dtype=np.int64)
        if counts.shape != self._counts.shape or (counts < 0).any():
            raise ValueError(f"expected {self._counts.size} non-negative counts")
        sums = np.array(d["sums"], dtype=float)
        if sums.shape != counts.shape:
            raise ValueError(f"expected {self._counts.size} sums")
        self._counts = counts
        self._sums = sums
        self._missing = int(d["missing"])
        self._out_of_range = int(d["out_of_range"])
        n = int(counts.sum())
        self._min = float(d["min"]) if n else np.inf
        self._max = float(d["max"]) if n else -np.inf
        self._mean = float(d["mean"])
        self._m2 = float(d["m2"])
        return self

    def __repr__(self):
        return f"NumericHistogram(bins={self._counts.size}, n={self.n}, missing={self._missing})"


class CategoryCounter:
    """Counts of a window's categorical values against the baseline categories.

    Parameters
    ----------
    categories : sequence of str
        Baseline categories (``CategoricalProfile.categories``).
    other_categories : sequence of str
        Baseline names pooled as "other" (``CategoricalProfile.other_categories``).
    max_unseen : int
        How many never-seen names to keep counts for. Once full, further new
        names are only counted in :attr:`unseen`, so memory stays bounded
        whatever the stream sends.

    Notes
    -----
    Values are compared as ``str(value)``; ``None`` and float NaN are missing.

    Examples
    --------
    >>> c = CategoryCounter(["a", "b"], other_categories=["c"])
    >>> c = c.update(["a", "a", "c", "z", None, "b", "z"])
    >>> c.counts.tolist(), c.other, c.unseen, c.unseen_top, c.n, c.missing
    ([2, 1], 1, 2, {'z': 2}, 6, 1)
    """

    def __init__(self, categories, other_categories=(), max_unseen=100):
        self.categories = [str(c) for c in categories]
        self.other_categories = sorted(str(c) for c in other_categories)
        if int(max_unseen) < 0:
            raise ValueError(f"max_unseen must be >= 0, got {max_unseen!r}")
        self.max_unseen = int(max_unseen)
        self._index = {c: i for i, c in enumerate(self.categories)}
        self._other_set = frozenset(self.other_categories)
        if len(self._index) != len(self.categories) or self._other_set & self._index.keys():
            raise ValueError("category names must be unique across categories and other_categories")
        self._reset()

    def _reset(self):
        self._counts = np.zeros(len(self.categories), dtype=np.int64)
        self._other = 0
        self._unseen = 0
        self._unseen_top = {}
        self._missing = 0

    def reset(self):
        """Forget everything seen; keep the categories."""
        self._reset()
        return self

    def update(self, values):
        """Add a batch of values (list or array of str/int/bool/None). Returns self."""
        counts, missing = count_categories(values)
        return self.update_counts(counts, missing)

    @staticmethod
    def update_groups(counters, values, groups):
        """Add a batch to one counter per group in one counting pass (``groups[i]`` indexes ``counters``).

        The same as ``counters[g].update(values[groups == g])`` for every g. Text values (and None) are
        counted as (group, value) pairs at once; other types take the per-group path, whose naming
        rules (1, 1.0 and True) they need.
        """
        values = values.tolist() if isinstance(values, np.ndarray) else list(values)
        groups = np.asarray(groups, dtype=np.int64).ravel().tolist()
        if len(groups) != len(values):
            raise ValueError("groups must give a counter index for every value")
        if not set(map(type, values)) <= {str, type(None)}:
            for i, counter in enumerate(counters):
                counter.update([v for v, g in zip(values, groups) if g == i])
            return
        per = [{} for _ in counters]
        missing = [0] * len(counters)
        for (g, v), c in Counter(zip(groups, values)).items():
            if v is None:
                missing[g] += c
            else:
                per[g][v] = c
        for counter, counts, m in zip(counters, per, missing):
            counter._missing += m
            counter._add(counts)

    def update_counts(self, counts, missing=0):
        """Add counts already made (category name -> count, plus missing values). Returns self."""
        self._missing += int(missing)
        self._add({str(k): int(c) for k, c in counts.items()})
        return self

    def _add(self, counts):
        index, other_set, top = self._index, self._other_set, self._unseen_top
        for name, c in counts.items():
            i = index.get(name)
            if i is not None:
                self._counts[i] += c
            elif name in other_set:
                self._other += c
            else:
                self._unseen += c
                if name in top:
                    top[name] += c
                elif len(top) < self.max_unseen:
                    top[name] = c

    def merge(self, other):
        """Add another counter over the same categories. Returns self.

        Unseen names of ``other`` join :attr:`unseen_top` while there is room.
        """
        if not isinstance(other, CategoryCounter):
            raise TypeError(f"cannot merge {type(other).__name__} into CategoryCounter")
        if self.categories != other.categories or self.other_categories != other.other_categories:
            raise ValueError("can only merge counters with the same categories")
        self._counts += other._counts
        self._other += other._other
        self._missing += other._missing
        # Names in other.unseen_top are unseen here too (same categories), so
        # _add files them as unseen; the rest of other's unseen count is added as is.
        self._unseen += other._unseen - sum(other._unseen_top.values())
        self._add(other._unseen_top)
        return self

    @property
    def counts(self):
        """Count per baseline category, aligned with ``categories`` (a copy)."""
        return self._counts.copy()

    @property
    def other(self):
        """Values in the baseline's pooled "other" categories."""
        return self._other

    @property
    def unseen(self):
        """Values whose category never appeared in the baseline."""
        return self._unseen

    @property
    def unseen_top(self):
        """Counts of up to ``max_unseen`` unseen names (the first ones met)."""
        return dict(self._unseen_top)

    @property
    def n(self):
        """Non-missing values."""
        return int(self._counts.sum()) + self._other + self._unseen

    @property
    def missing(self):
        return self._missing

    def state_dict(self):
        """JSON-safe state; includes the categories so a load can check them."""
        return {
            "categories": list(self.categories),
            "n_other_categories": len(self.other_categories),
            "counts": self._counts.tolist(),
            "other": self._other,
            "unseen": self._unseen,
            "unseen_top": dict(self._unseen_top),
            "missing": self._missing,
        }

    def load_state_dict(self, d):
        """Restore :meth:`state_dict` output. Returns self.

        Raises ValueError if the state was saved for other categories.
        """
        if list(d["categories"]) != self.categories or d["n_other_categories"] != len(self.other_categories):
            raise ValueError("state was saved for different categories")
        counts = np.array(d["counts"], dtype=np.int64)
        if counts.shape != self._counts.shape or (counts < 0).any():
            raise ValueError(f"expected {self._counts.size} non-negative counts")
        top = {str(k): int(v) for k, v in d["unseen_top"].items()}
        if len(top) > self.max_unseen:
            raise ValueError(f"unseen_top holds {len(top)} names, more than max_unseen={self.max_unseen}")
        self._counts = counts
        self._other = int(d["other"])
        self._unseen = int(d["unseen"])
        self._unseen_top = top
        self._missing = int(d["missing"])
        return self

    def __repr__(self):
        return f"CategoryCounter(categories={len(self.categories)}, n={self.n}, unseen={self._unseen})"
