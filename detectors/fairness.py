"""Group fairness of a model's decisions: per-group counts and a parity report.

:class:`GroupAccumulator` keeps fixed-size counts per value of a sensitive
attribute; :func:`fairness_report` turns them into per-group rates, the
usual gap metrics and an alert decision that small groups and small random
differences cannot trip.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.special import ndtr, ndtri

from ._common import _labels

__all__ = ["DEFAULT_MIN_GROUP_SIZE", "GroupAccumulator", "fairness_report"]

OTHER = "other"
_COLUMNS = ("n", "positive", "labelled", "tp", "fp", "tn", "fn", "correct")


def min_group_size_for(half_width=0.05, confidence=0.95, p=0.5):
    """Smallest n whose Wald confidence interval for a rate p has half-width <= ``half_width``.

    n = ceil((z_{(1+confidence)/2} * sqrt(p (1 - p)) / half_width)^2); p = 0.5
    is the worst case, so the bound holds for every rate.

    Examples
    --------
    >>> min_group_size_for()
    385
    """
    if not 0 < half_width < 1 or not 0 < confidence < 1 or not 0 < p < 1:
        raise ValueError("half_width, confidence and p must be in (0, 1)")
    z = ndtri((1 + confidence) / 2)
    return int(np.ceil((z * np.sqrt(p * (1 - p)) / half_width) ** 2 - 1e-9))


DEFAULT_MIN_GROUP_SIZE = min_group_size_for()  # 385: 95% CI half-width <= 0.05 for any positive rate


class GroupAccumulator:
    """Per-group counts of decisions (and outcomes, when labels are known).

    Parameters
    ----------
    favourable : label
        The favourable decision (e.g. "approved"), compared as ``str``:
        prediction == favourable is a positive decision, label ==
        favourable a positive outcome.
    max_groups : int
        Groups kept by name, in order of first appearance; rows of later
        groups are pooled under ``"other"`` (as is a real group called
        "other"), so memory stays bounded.

    Notes
    -----
    Per group: ``n`` rows, ``positive`` decisions; for rows with a label
    (``labelled``): ``tp``, ``fp``, ``tn``, ``fn`` of the favourable class
    against the rest, and ``correct`` (prediction == label, exact match).
    Rows whose group or prediction is None/NaN are counted in ``missing``
    only; a None/NaN label just makes the row unlabelled.

    Examples
    --------
    >>> acc = GroupAccumulator("yes").update(["a", "a", "b", "b"], ["yes", "no", "no", "no"], ["yes", "yes", "no", None])
    >>> acc.counts()["a"]
    {'n': 2, 'positive': 1, 'labelled': 2, 'tp': 1, 'fp': 0, 'tn': 0, 'fn': 1, 'correct': 1}
    """

    def __init__(self, favourable, max_groups=20):
        if isinstance(max_groups, bool) or not isinstance(max_groups, numbers.Integral) or max_groups < 1:
            raise ValueError(f"max_groups must be an integer >= 1, got {max_groups!r}")
        if favourable is None:
            raise ValueError("favourable must be a label, not None")
        self.favourable = str(favourable)
        self.max_groups = int(max_groups)
        self._reset()

    def _reset(self):
        self._names = []
        self._index = {}
        self._counts = np.zeros((0, len(_COLUMNS)), dtype=np.int64)
        self._missing = 0

    def reset(self):
        """Forget everything seen. Returns self."""
        self._reset()
        return self

    def _group_index(self, name):
        i = self._index.get(name)
        if i is not None:
            return i
        if len(self._names) >= self.max_groups and name != OTHER:
            return self._group_index(OTHER)
        self._index[name] = i = len(self._names)
        self._names.append(name)
        self._counts = np.vstack([self._counts, np.zeros((1, len(_COLUMNS)), dtype=np.int64)])
        return i

    def update(self, groups, y_pred, y_true=None):
        """Add a batch of rows: group per row, prediction, optional label. Returns self."""
        g, g_missing = _labels(groups)
        p, p_missing = _labels(y_pred)
        if g.size != p.size:
            raise ValueError(f"groups has {g.size} rows, y_pred {p.size}")
        if y_true is None:
            t, labelled = p, np.zeros(p.size, dtype=bool)
        else:
            t, t_missing = _labels(y_true)
            if t.size != p.size:
                raise ValueError(f"y_true has {t.size} rows, y_pred {p.size}")
            labelled = ~t_missing
        keep = ~(g_missing | p_missing)
        self._missing += int(p.size - keep.sum())
        g, p, t, labelled = g[keep], p[keep], t[keep], labelled[keep]
        if g.size == 0:
            return self
        names, first, inverse = np.unique(g, return_index=True, return_inverse=True)
        index = np.zeros(names.size, dtype=np.int64)
        for j in np.argsort(first, kind="stable"):  # register new groups in order of first appearance
            index[j] = self._group_index(str(names[j]))
        idx = index[inverse]
        pred_pos = p == self.favourable
        true_pos = t == self.favourable
        columns = (
            np.ones(g.size, dtype=bool),
            pred_pos,
            labelled,
            labelled & pred_pos & true_pos,
            labelled & pred_pos & ~true_pos,
            labelled & ~pred_pos & ~true_pos,
            labelled & ~pred_pos & true_pos,
            labelled & (p == t),
        )
        k = len(self._names)
        for j, mask in enumerate(columns):
            self._counts[:, j] += np.bincount(idx[mask], minlength=k)
        return self

    def merge(self, other):
        """Add another accumulator's rows (another worker's). Returns self.

        Counts add exactly while the groups fit in ``max_groups``; beyond it, which groups are pooled
        under "other" depends on the order of first appearance, as it does for one accumulator.
        """
        if not isinstance(other, GroupAccumulator):
            raise TypeError(f"cannot merge {type(other).__name__} into GroupAccumulator")
        if (self.favourable, self.max_groups) != (other.favourable, other.max_groups):
            raise ValueError("can only merge accumulators with the same favourable label and max_groups")
        index = np.array([self._group_index(name) for name in other._names], dtype=np.int64)
        if index.size:
            np.add.at(self._counts, index, other._counts)
        self._missing += other._missing
        return self

    @property
    def groups(self):
        """Group names in order of first appearance (a copy)."""
        return list(self._names)

    @property
    def missing(self):
        """Rows skipped for a missing group or prediction."""
        return self._missing

    def counts(self):
        """``{group: {n, positive, labelled, tp, fp, tn, fn, correct}}`` (plain ints)."""
        return {name: dict(zip(_COLUMNS, map(int, row))) for name, row in zip(self._names, self._counts)}

    def state_dict(self):
        """JSON-safe state."""
        return {
            "favourable": self.favourable,
            "max_groups": self.max_groups,
            "groups": list(self._names),
            "columns": list(_COLUMNS),
            "counts": self._counts.tolist(),
            "missing": self._missing,
        }

    def load_state_dict(self, d):
        """Restore :meth:`state_dict` output. Returns self."""
        if (d["favourable"], int(d["max_groups"])) != (self.favourable, self.max_groups):
            raise ValueError("state was saved for another favourable label or max_groups")
        if list(d["columns"]) != list(_COLUMNS):
            raise ValueError(f"state columns {d['columns']} are not {list(_COLUMNS)}")
        names = [str(x) for x in d["groups"]]
        counts = np.array(d["counts"], dtype=np.int64).reshape(len(names), len(_COLUMNS))
        if len(set(names)) != len(names) or len(names) > self.max_groups + 1 or (counts < 0).any():
            raise ValueError("groups must be unique, at most max_groups + 1, with non-negative counts")
        self._names = names
        self._index = {name: i for i, name in enumerate(names)}
        self._counts = counts
        self._missing = int(d["missing"])
        return self

    def __repr__(self):
        return f"GroupAccumulator(favourable={self.favourable!r}, groups={len(self._names)}, n={int(self._counts[:, 0].sum())})"


def _rate(a, b):
    return None if b == 0 else a / b


def _spread(rates):
    """(max - min, min / max, argmin, argmax) over ``{group: rate}``; Nones with fewer than 2 groups."""
    if len(rates) < 2:
        return None, None, None, None
    lo = min(rates, key=rates.get)
    hi = max(rates, key=rates.get)
    ratio = None if rates[hi] == 0 else rates[lo] / rates[hi]
    return rates[hi] - rates[lo], ratio, lo, hi


def _clip_rate(x, n):
    # a rate of exactly 0 or 1 would claim a zero standard error; half a count keeps the test honest
    return min(max(x / n, 0.5 / n), 1.0 - 0.5 / n)


def _ratio_test(counts, lo, hi, bound, k):
    """One-sided p-value of H0 "rate_lo >= bound * rate_hi", Bonferroni over the k (k - 1) ordered pairs."""
    n1, n2 = counts[lo]["n"], counts[hi]["n"]
    p1, p2 = counts[lo]["positive"] / n1, counts[hi]["positive"] / n2
    q1, q2 = _clip_rate(counts[lo]["positive"], n1), _clip_rate(counts[hi]["positive"], n2)
    se = np.sqrt(q1 * (1 - q1) / n1 + bound**2 * q2 * (1 - q2) / n2)
    return min(1.0, float(ndtr((p1 - bound * p2) / se)) * k * (k - 1))


def _gap_test(pairs, bound):
    """One-sided p-value of H0 "max - min <= bound" for {group: (successes, trials)}, Bonferroni over ordered pairs."""
    if len(pairs) < 2:
        return None
    rates = {g: x / n for g, (x, n) in pairs.items()}
    lo, hi = min(rates, key=rates.get), max(rates, key=rates.get)
    (x1, n1), (x2, n2) = pairs[lo], pairs[hi]
    q1, q2 = _clip_rate(x1, n1), _clip_rate(x2, n2)
    se = np.sqrt(q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2)
    k = len(pairs)
    return min(1.0, float(ndtr(-((rates[hi] - rates[lo]) - bound) / se)) * k * (k - 1))


def _widening_test(now, base, bound):
    """One-sided p-value of H0 "(hi - lo) now <= (hi - lo) in the baseline + bound" for the extreme groups now.

    ``now`` and ``base`` map group -> (successes, trials); groups missing from the baseline are skipped.
    Bonferroni over the k (k - 1) ordered pairs the extremes were picked from.
    """
    pairs = {g: v for g, v in now.items() if g in base and base[g][1] > 0}
    if len(pairs) < 2:
        return None, None
    rates = {g: x / n for g, (x, n) in pairs.items()}
    lo, hi = min(rates, key=rates.get), max(rates, key=rates.get)
    base_gap = base[hi][0] / base[hi][1] - base[lo][0] / base[lo][1]
    var = 0.0
    for x, n in (pairs[lo], pairs[hi], base[lo], base[hi]):
        q = _clip_rate(x, n)
        var += q * (1 - q) / n
    z = ((rates[hi] - rates[lo]) - base_gap - bound) / np.sqrt(var)
    k = len(pairs)
    return min(1.0, float(ndtr(-z)) * k * (k - 1)), base_gap


def _rate_pairs(counts, min_group_size):
    positive, tpr, fpr = {}, {}, {}
    for name, c in counts.items():
        if c["n"] >= min_group_size:
            positive[name] = (c["positive"], c["n"])
        if c["tp"] + c["fn"] >= min_group_size:
            tpr[name] = (c["tp"], c["tp"] + c["fn"])
        if c["fp"] + c["tn"] >= min_group_size:
            fpr[name] = (c["fp"], c["fp"] + c["tn"])
    return positive, tpr, fpr


def fairness_report(acc, min_group_size=None, alpha=0.05, parity_ratio_bound=0.8, max_equalized_odds_difference=0.1,
                    reference=None, max_gap_widening=None):
    """Per-group rates, gap metrics, and alerts that test the bounds themselves.

    Parameters
    ----------
    acc : GroupAccumulator
    min_group_size : int or None
        Smallest denominator for a group's rate to take part in a gap
        metric. None means :data:`DEFAULT_MIN_GROUP_SIZE` = 385, the smallest
        n for which a 95% confidence interval of a rate has half-width at most
        0.05 whatever the rate (1.96^2 * 0.25 / 0.05^2 = 384.2).
    alpha : float
        Significance level of the check behind the alert.
    parity_ratio_bound : float
        The alert bound for the demographic parity ratio (0.8 is the
        "four-fifths rule").
    max_equalized_odds_difference : float or None
        The alert bound for the equalized odds difference (0.1 is customary);
        None never alerts on it.
    reference : GroupAccumulator or None
        The same attribute's counts on the baseline's labelled data.
    max_gap_widening : float or None
        With ``reference``: alert (``alerts["widened"]``) when a gap between
        the groups that are now the extremes (parity, TPR or FPR) is shown to
        exceed the same groups' gap in the baseline by more than this (H0
        "gap now <= gap then + max_gap_widening"). None: no such alert.

    Returns
    -------
    dict
        ``groups``: ``{name: {n, positive_rate, tpr, fpr, accuracy,
        labelled, sufficient}}`` for every group (rates None when
        undefined); ``insufficient``: names of groups with ``n <
        min_group_size``; ``overall``: ``demographic_parity_difference``
        (max - min positive rate), ``demographic_parity_ratio`` (min / max),
        ``equal_opportunity_difference`` (max - min TPR),
        ``false_positive_rate_difference`` (max - min FPR),
        ``equalized_odds_difference`` (max of the TPR and FPR differences),
        ``min_group`` and ``max_group`` (by positive rate), ``p_value`` (of
        the parity bound) and ``equalized_odds_p_value``; ``alerts``
        (``demographic_parity``, ``equalized_odds``: bools) and ``alert``
        (either); and the settings ``min_group_size``, ``alpha``,
        ``parity_ratio_bound``, ``max_equalized_odds_difference``.

    Notes
    -----
    A group's rate enters a gap metric only if the rate's own denominator
    reaches ``min_group_size``: rows for the positive rate, labelled actual
    positives for TPR, labelled actual negatives for FPR. So TPR and FPR
    gaps may use fewer groups than the parity gap; each is None with fewer
    than two eligible groups (equalized odds needs both). ``"other"`` (pooled overflow groups) is treated
    like any group.

    Both alerts test the bound itself, not "the groups differ": a group
    whose true ratio is 0.85 dips under 0.8 in single windows and differs
    significantly from the top group, yet is not under the bound. The parity
    alert rejects H0 "rate_lo >= bound * rate_hi" for the lowest and highest
    eligible groups (one-sided z-test of ``rate_lo - bound * rate_hi`` with
    unpooled variances); the equalized odds alert rejects H0 "TPR gap <=
    bound" or "FPR gap <= bound" for the extreme groups of each. Each
    p-value is Bonferroni-corrected for the k (k - 1) ordered pairs the
    extremes were picked from (and the equalized odds one for its two
    rates), so the alert's chance, when every pair is within its bound, is
    at most ``alpha``. Groups below the minimum size never alert.

    Examples
    --------
    >>> decisions = ["yes"] * 250 + ["no"] * 250 + ["yes"] * 150 + ["no"] * 350
    >>> acc = GroupAccumulator("yes").update(["a"] * 500 + ["b"] * 500, decisions)
    >>> r = fairness_report(acc)
    >>> r["overall"]["demographic_parity_ratio"], r["alert"], round(r["overall"]["p_value"], 6)
    (0.6, True, 0.000237)
    """
    if not isinstance(acc, GroupAccumulator):
        raise TypeError(f"expected a GroupAccumulator, got {type(acc).__name__}")
    if min_group_size is None:
        min_group_size = DEFAULT_MIN_GROUP_SIZE
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, numbers.Integral) or min_group_size < 1:
        raise ValueError(f"min_group_size must be an integer >= 1, got {min_group_size!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not 0 < parity_ratio_bound <= 1:
        raise ValueError(f"parity_ratio_bound must be in (0, 1], got {parity_ratio_bound!r}")
    if max_equalized_odds_difference is not None and not 0 <= max_equalized_odds_difference < 1:
        raise ValueError(f"max_equalized_odds_difference must be in [0, 1), got {max_equalized_odds_difference!r}")
    counts = acc.counts()
    groups, positive_rates, tprs, fprs, tpr_counts, fpr_counts = {}, {}, {}, {}, {}, {}
    for name, c in counts.items():
        actual_pos, actual_neg = c["tp"] + c["fn"], c["fp"] + c["tn"]
        row = {
            "n": c["n"],
            "positive_rate": _rate(c["positive"], c["n"]),
            "tpr": _rate(c["tp"], actual_pos),
            "fpr": _rate(c["fp"], actual_neg),
            "accuracy": _rate(c["correct"], c["labelled"]),
            "labelled": c["labelled"],
            "sufficient": c["n"] >= min_group_size,
        }
        groups[name] = row
        if row["sufficient"]:
            positive_rates[name] = row["positive_rate"]
        if actual_pos >= min_group_size:
            tprs[name] = row["tpr"]
            tpr_counts[name] = (c["tp"], actual_pos)
        if actual_neg >= min_group_size:
            fprs[name] = row["fpr"]
            fpr_counts[name] = (c["fp"], actual_neg)
    dp_diff, dp_ratio, lo, hi = _spread(positive_rates)
    eo_diff = _spread(tprs)[0]
    fpr_diff = _spread(fprs)[0]
    p_value = None
    if lo is not None:
        p_value = _ratio_test(counts, lo, hi, parity_ratio_bound, len(positive_rates))
    eo_p_value = None
    if max_equalized_odds_difference is not None:
        tests = [t for t in (_gap_test(tpr_counts, max_equalized_odds_difference),
                             _gap_test(fpr_counts, max_equalized_odds_difference)) if t is not None]
        if tests:
            eo_p_value = min(1.0, min(tests) * len(tests))
    alerts = {"demographic_parity": bool(p_value is not None and p_value <= alpha),
              "equalized_odds": bool(eo_p_value is not None and eo_p_value <= alpha)}
    baseline_gaps = widened_p = None
    if reference is not None and max_gap_widening is not None:
        now = _rate_pairs(counts, min_group_size)
        base = _rate_pairs(reference.counts(), 1)
        tests = [_widening_test(a, b, max_gap_widening) for a, b in zip(now, base)]
        baseline_gaps = {name: t[1] for name, t in zip(
            ("demographic_parity_difference", "equal_opportunity_difference", "false_positive_rate_difference"),
            tests)}
        done = [t[0] for t in tests if t[0] is not None]
        widened_p = min(1.0, min(done) * len(done)) if done else None
        alerts["widened"] = bool(widened_p is not None and widened_p <= alpha)
    return {
        "groups": groups,
        "insufficient": [name for name, row in groups.items() if not row["sufficient"]],
        "overall": {
            "demographic_parity_difference": dp_diff,
            "demographic_parity_ratio": dp_ratio,
            "equal_opportunity_difference": eo_diff,
            "false_positive_rate_difference": fpr_diff,
            "equalized_odds_difference": None if eo_diff is None or fpr_diff is None else max(eo_diff, fpr_diff),
            "min_group": lo,
            "max_group": hi,
            "p_value": p_value,
            "equalized_odds_p_value": eo_p_value,
            "baseline_gaps": baseline_gaps,
            "widened_p_value": widened_p,
        },
        "alerts": alerts,
        "alert": any(alerts.values()),
        "min_group_size": int(min_group_size),
        "alpha": float(alpha),
        "parity_ratio_bound": float(parity_ratio_bound),
        "max_equalized_odds_difference": None if max_equalized_odds_difference is None
        else float(max_equalized_odds_difference),
        "max_gap_widening": None if max_gap_widening is None else float(max_gap_widening),
        "missing": acc.missing,
    }
