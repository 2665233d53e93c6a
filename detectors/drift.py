"""Per-feature drift comparisons and the window-level decision.

:func:`compare_numeric` and :func:`compare_categorical` turn a baseline
profile and a window accumulator into a JSON-safe result; :func:`decide`
then corrects the p-values of all features of the window together and sets
each ``drift`` flag.

The decision is a test of *material* drift: each feature's null hypothesis
is "its effect is at most the threshold" (not "nothing changed"), and a
feature drifts when the data reject it at ``alpha`` after Holm's correction
across the window's features. So a window flags any feature whose effect is
at or below its threshold with probability at most ``alpha``, at every
window size: an effect sitting at the threshold does not flap on the
estimate's noise, and small windows, whose plug-in distances read larger,
do not page on that. Each result carries the effect estimate (bias-corrected
where the plug-in is biased) with a 95% confidence interval; see
:mod:`detectors.stats` for the test behind each effect.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .accumulate import CategoryCounter, NumericHistogram
from .profile import CategoricalProfile, NumericProfile
from .stats import (EFFECT_METHODS, binned_statistics, chi2_homogeneity, holm, js_distance, material_divergence,
                    material_ks, material_wasserstein, material_wasserstein_batch, material_wasserstein_many, psi)

__all__ = ["FeaturePolicy", "compare_categorical", "compare_effect", "compare_effects", "compare_numeric",
           "compare_numerics", "decide"]

TEST_METHODS = {"numeric": ("ks", "chi2"), "categorical": ("chi2",)}

# Each default is about as sensitive as a 0.1-0.125 standard-deviation mean
# shift of a normal feature, so switching methods does not silently change
# what counts as drift (see FeaturePolicy).
DEFAULT_THRESHOLDS = {"wasserstein": 0.1, "ks": 0.05, "jensen_shannon": 0.05, "psi": 0.015}
DEFAULTS = {"numeric": ("wasserstein", "ks"), "categorical": ("jensen_shannon", "chi2")}


@dataclass(frozen=True)
class FeaturePolicy:
    """How one feature is judged. None means the default for the feature's type.

    Parameters
    ----------
    effect_method : {"wasserstein", "ks", "psi", "jensen_shannon"} or None
        Effect size that must reach ``effect_threshold``. Numeric default
        ``"wasserstein"``: W1 divided by the baseline std, i.e. how far, in
        standard deviations, mass has to move. It reads the same for every
        distribution shape and scale. Categorical default
        ``"jensen_shannon"``: bounded in [0, 1], symmetric and finite when a
        category is new or gone (PSI needs a floor for that). ``"wasserstein"``
        and ``"ks"`` are numeric only.
    effect_threshold : float or None
        Defaults: wasserstein 0.1 (a tenth of a std), jensen_shannon 0.05,
        ks 0.05 and psi 0.015. For a normal feature these all correspond to a
        mean shift of about 0.1-0.125 std. (The credit-scoring rule of thumb
        PSI 0.1 is about a 0.3 std shift; set it explicitly if you want it.)
        For categorical features, JS distance 0.05 is a 4.5-point move of
        share between two categories near 30%. Small windows read larger
        (the plug-in JS distance of pure noise is about
        ``sqrt((k - 1) * (1/n_window + 1/n_baseline) / (8 ln 2))``, 0.034
        for k = 30 and 5 000-event windows); the test accounts for that.
    test : {"ks", "chi2"} or None
        Test of "no difference at all", reported as ``difference_test`` for
        reference (it does not decide). Numeric default ``"ks"`` (two-sample
        Kolmogorov-Smirnov on the bins), categorical (and allowed for
        numeric bins) ``"chi2"``, the chi-square test of homogeneity. The
        decision's test follows from ``effect_method``: Wasserstein by the
        delta method, Jensen-Shannon and PSI by a noncentral chi-square, KS
        by its distribution-free bound.
    min_events : int
        Windows with fewer non-missing values are reported as
        ``"insufficient_data"`` and never flagged.

    Examples
    --------
    >>> FeaturePolicy().resolve("numeric")
    ('wasserstein', 0.1, 'ks')
    >>> FeaturePolicy(effect_method="psi").resolve("categorical")
    ('psi', 0.015, 'chi2')
    """

    effect_method: str | None = None
    effect_threshold: float | None = None
    test: str | None = None
    min_events: int = 100

    def __post_init__(self):
        if self.effect_method is not None and self.effect_method not in DEFAULT_THRESHOLDS:
            raise ValueError(f"effect_method must be one of {sorted(DEFAULT_THRESHOLDS)}, got {self.effect_method!r}")
        threshold = self.effect_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < float("inf")
        ):
            raise ValueError(f"effect_threshold must be a finite number >= 0, got {self.effect_threshold!r}")
        if self.test is not None and self.test not in ("ks", "chi2"):
            raise ValueError(f"test must be 'ks' or 'chi2', got {self.test!r}")
        if isinstance(self.min_events, bool) or not isinstance(self.min_events, numbers.Integral) or self.min_events < 1:
            raise ValueError(f"min_events must be an integer >= 1, got {self.min_events!r}")

    def resolve(self, kind):
        """``(effect_method, effect_threshold, test)`` for a ``"numeric"`` or ``"categorical"`` feature."""
        if kind not in DEFAULTS:
            raise ValueError(f"kind must be 'numeric' or 'categorical', got {kind!r}")
        effect = self.effect_method or DEFAULTS[kind][0]
        test = self.test or DEFAULTS[kind][1]
        if effect not in EFFECT_METHODS[kind]:
            raise ValueError(f"effect_method {effect!r} does not apply to {kind} features")
        if test not in TEST_METHODS[kind]:
            raise ValueError(f"test {test!r} does not apply to {kind} features")
        threshold = DEFAULT_THRESHOLDS[effect] if self.effect_threshold is None else float(self.effect_threshold)
        return effect, threshold, test


def _ratio(part, whole):
    return None if whole == 0 else part / whole


def _result(kind, status, events, ratios, statistics, extra, effect, threshold, test, p_value, material):
    out = {"type": kind, "drift": False, "status": status, "events": int(events)}
    out.update(ratios)
    out["statistics"] = statistics
    out.update(extra)
    if material is None:
        out["effect"] = {"method": effect, "value": None, "plug_in": statistics[effect], "threshold": threshold,
                         "ci": None}
    else:
        out["effect"] = {"method": effect, "value": material.estimate, "plug_in": material.plug_in,
                         "threshold": threshold, "ci": [material.ci_low, material.ci_high]}
    out["test"] = {"method": None if material is None else material.method, "null": "effect <= threshold",
                   "p_value": None if material is None or status != "ok" else material.p_value,
                   "p_value_adjusted": None, "alpha": None}
    out["difference_test"] = {"method": test, "p_value": p_value}
    return out


def _unselected(profile: CategoricalProfile, p, q):
    """Pool into "other" the kept categories that may have been kept by the baseline's noise.

    When a feature has more categories than the profile keeps, the kept ones are
    those the baseline sample counted most often, so near the cut their baseline
    counts are biased upward (a winner's curse) and the window, counted fairly,
    seems to have moved away from them. Categories whose baseline count is
    within four standard deviations of the smallest kept count are pooled with
    "other" for the test; pooling can only lower the divergence, so the test
    stays valid.
    """
    if profile.other_count == 0 or profile.counts.size == 0:
        return p, q
    smallest = float(profile.counts.min())
    near = np.append(profile.counts < smallest + 4.0 * np.sqrt(smallest), [True, False])  # [..., other, unseen]
    if near.sum() < 2:
        return p, q
    return (np.append(p[~near], p[near].sum()), np.append(q[~near], q[near].sum()))


def _material_binned(effect, threshold, p, q):
    if effect == "ks":
        return material_ks(p, q, threshold)
    return material_divergence(p, q, effect, threshold)


def compare_effect(profile, acc, policy: FeaturePolicy | None = None) -> dict:
    """Only the decision's inputs for one feature: the effect's material test, no other statistic.

    The same effect, test and status as :func:`compare_numeric` / :func:`compare_categorical`
    (``effect``, ``test``, ``status``, ``drift``), for places that decide many small families,
    such as the per-segment drift of every segment value, at a fraction of the cost.
    """
    policy = policy or FeaturePolicy()
    numeric = isinstance(profile, NumericProfile)
    effect, threshold, _test = policy.resolve("numeric" if numeric else "categorical")
    material = None
    if numeric:
        n = acc.n
        if profile.n > 0 and n > 0:
            p, q = profile.counts, acc.counts
            if effect != "wasserstein":
                material = _material_binned(effect, threshold, p, q)
            elif profile.std > 0:
                lo, hi = min(profile.min, acc.min), max(profile.max, acc.max)
                material = material_wasserstein(profile.edges, p, q, lo, hi, profile.sums, acc.sums, profile.std,
                                                acc.std, threshold, scale=profile.std)
    else:
        n = acc.n
        if profile.n > 0 and n > 0:
            p = np.append(profile.counts, [profile.other_count, 0])
            q = np.append(acc.counts, [acc.other, acc.unseen])
            material = _material_binned(effect, threshold, *_unselected(profile, p, q))
    status = "ok" if profile.n > 0 and n >= policy.min_events else "insufficient_data"
    return {"status": status, "drift": False,
            "effect": {"method": effect, "value": None if material is None else material.estimate,
                       "threshold": threshold},
            "test": {"p_value": None if material is None or status != "ok" else material.p_value,
                     "p_value_adjusted": None, "alpha": None}}


def compare_effects(profile, accs: list, policy: FeaturePolicy | None = None) -> list[dict]:
    """:func:`compare_effect` of several windows of one feature; Wasserstein tests run as one vectorized call."""
    policy = policy or FeaturePolicy()
    if not (isinstance(profile, NumericProfile) and policy.resolve("numeric")[0] == "wasserstein"
            and profile.n > 0 and profile.std > 0):
        return [compare_effect(profile, acc, policy) for acc in accs]
    threshold = policy.resolve("numeric")[1]
    live = [i for i, acc in enumerate(accs) if acc.n > 0]
    tests = material_wasserstein_many(
        profile.edges, profile.counts, [accs[i].counts for i in live], [min(profile.min, accs[i].min) for i in live],
        [max(profile.max, accs[i].max) for i in live], profile.sums, [accs[i].sums for i in live], profile.std,
        [accs[i].std for i in live], threshold, scale=profile.std)
    material = dict(zip(live, tests))
    out = []
    for i, acc in enumerate(accs):
        t = material.get(i)
        status = "ok" if acc.n >= policy.min_events else "insufficient_data"
        out.append({"status": status, "drift": False,
                    "effect": {"method": "wasserstein", "value": None if t is None else t.estimate,
                               "threshold": threshold},
                    "test": {"p_value": None if t is None or status != "ok" else t.p_value,
                             "p_value_adjusted": None, "alpha": None}})
    return out


def compare_numeric(profile: NumericProfile, hist: NumericHistogram, policy: FeaturePolicy | None = None) -> dict:
    """Compare a window histogram with the baseline profile of a numeric feature.

    Statistics are computed whenever both sides have values; p-values only
    when the window has at least ``policy.min_events`` of them (status
    ``"ok"``). ``wasserstein`` is W1 divided by the baseline std (None for a
    constant baseline, which then never trips a wasserstein effect);
    ``out_of_range_ratio`` is the share of non-missing window values outside
    the baseline ``[min, max]``; ``missing_ratio`` is the share of all rows.
    """
    return compare_numerics([(profile, hist, policy)])[0]


def compare_numerics(items: list) -> list[dict]:
    """:func:`compare_numeric` of several features, ``items`` a list of ``(profile, hist, policy)``.

    The statistics and the Wasserstein material tests run as a few vectorized calls per number of bins
    (the same numbers as one call per feature, at about the cost of one): the numeric features of a window.
    """
    resolved, groups = [], {}
    for i, (profile, hist, policy) in enumerate(items):
        policy = policy or FeaturePolicy()
        effect, threshold, test = policy.resolve("numeric")
        if not np.array_equal(profile.edges, hist.edges):
            raise ValueError("the histogram's edges are not the profile's")
        resolved.append((profile, hist, policy, effect, threshold, test))
        if profile.n > 0 and hist.n > 0:
            groups.setdefault(profile.edges.size, []).append(i)
    computed = {}
    for rows in groups.values():
        profiles, hists = [items[i][0] for i in rows], [items[i][1] for i in rows]
        edges, p, q = [pr.edges for pr in profiles], [pr.counts for pr in profiles], [h.counts for h in hists]
        lo = [min(pr.min, h.min) for pr, h in zip(profiles, hists)]
        hi = [max(pr.max, h.max) for pr, h in zip(profiles, hists)]
        p_sums, q_sums = [pr.sums for pr in profiles], [h.sums for h in hists]
        stats = {k: v.tolist() for k, v in binned_statistics(edges, p, q, lo, hi, p_sums, q_sums).items()}
        for j, i in enumerate(rows):
            computed[i] = ({k: v[j] for k, v in stats.items()}, None)
        # the material test of every feature judged by Wasserstein distance (a baseline with a spread)
        tested = [j for j, i in enumerate(rows) if resolved[i][3] == "wasserstein" and profiles[j].std > 0]
        tests = material_wasserstein_batch(
            [edges[j] for j in tested], [p[j] for j in tested], [q[j] for j in tested], [lo[j] for j in tested],
            [hi[j] for j in tested], [p_sums[j] for j in tested], [q_sums[j] for j in tested],
            [profiles[j].std for j in tested], [hists[j].std for j in tested],
            [resolved[rows[j]][4] for j in tested], [profiles[j].std for j in tested])
        for j, test in zip(tested, tests):
            computed[rows[j]] = (computed[rows[j]][0], test)
    return [_compare_numeric(*r, *computed.get(i, (None, None))) for i, r in enumerate(resolved)]


def _compare_numeric(profile, hist, policy, effect, threshold, test, binned, wasserstein_test) -> dict:
    """One feature's result from its statistics (``binned``, None when a side is empty) and material test."""
    n = hist.n
    stats = {"psi": None, "jensen_shannon": None, "wasserstein": None, "ks": None}
    ks_p = ks_err = p_value = material = None
    status = "ok" if profile.n > 0 and n >= policy.min_events else "insufficient_data"
    if binned is not None:
        p, q = profile.counts, hist.counts
        stats["psi"] = binned["psi"]
        stats["jensen_shannon"] = binned["jensen_shannon"]
        stats["wasserstein"] = binned["wasserstein"] / profile.std if profile.std > 0 else None
        stats["ks"], ks_pv, ks_err = binned["ks"], binned["ks_p_value"], binned["ks_error_bound"]
        if effect == "wasserstein":
            material = wasserstein_test  # None for a constant baseline
        else:
            material = _material_binned(effect, threshold, p, q)
        if status == "ok":
            ks_p = ks_pv
            p_value = ks_pv if test == "ks" else chi2_homogeneity(p, q)[2]
    ratios = {"missing_ratio": _ratio(hist.missing, n + hist.missing), "out_of_range_ratio": _ratio(hist.out_of_range, n)}
    extra = {"ks_p_value": ks_p, "ks_error_bound": ks_err}
    return _result("numeric", status, n + hist.missing, ratios, stats, extra, effect, threshold, test, p_value,
                   material)


def compare_categorical(profile: CategoricalProfile, counter: CategoryCounter, policy: FeaturePolicy | None = None) -> dict:
    """Compare a window's category counts with the baseline profile.

    The compared vectors are ``[categories..., other, unseen]``: the baseline
    has 0 in the unseen column, the window its count of never-seen values.
    Unseen values are drift evidence in their own right, so they are not
    folded into "other" (where a few rare baseline names would hide them).
    The chi-square test pools the unseen column with other sparse columns
    while its expected window count is below 5 (about ``5 * N / n_window``
    unseen values, N both samples together): a long-tailed feature shows a
    few new names in every window even without drift, and an unpooled
    column with a near-zero expectation would page on them. Larger unseen
    mass stands on its own and dominates the statistic. JS distance needs
    no special case for the zero. ``unseen_ratio`` is the share of
    non-missing window values that are unseen.
    """
    policy = policy or FeaturePolicy()
    effect, threshold, test = policy.resolve("categorical")
    if counter.categories != profile.categories or counter.other_categories != profile.other_categories:
        raise ValueError("the counter's categories are not the profile's")
    n = counter.n
    stats = {"psi": None, "jensen_shannon": None, "chi2": None}
    p_value = material = None
    status = "ok" if profile.n > 0 and n >= policy.min_events else "insufficient_data"
    if profile.n > 0 and n > 0:
        p = np.append(profile.counts, [profile.other_count, 0])
        q = np.append(counter.counts, [counter.other, counter.unseen])
        stats["psi"] = psi(p, q)
        stats["jensen_shannon"] = js_distance(p, q)
        stats["chi2"], _, chi2_p = chi2_homogeneity(p, q)
        material = _material_binned(effect, threshold, *_unselected(profile, p, q))
        if status == "ok":
            p_value = chi2_p
    ratios = {"missing_ratio": _ratio(counter.missing, n + counter.missing), "unseen_ratio": _ratio(counter.unseen, n)}
    return _result("categorical", status, n + counter.missing, ratios, stats, {}, effect, threshold, test, p_value,
                   material)


def decide(results: dict, alpha: float = 0.01) -> dict:
    """Set ``drift`` on every feature result of one window (mutates and returns ``results``).

    Each result's ``test.p_value`` is that of H0 "effect <= threshold". Holm's
    correction runs over the p-values of all results with status ``"ok"``; each
    gets ``test.p_value_adjusted`` and every result ``test.alpha``. A feature
    drifts when ``p_value_adjusted <= alpha``: the data show, at ``alpha``
    family-wise, that its effect exceeds the threshold. However many features
    are watched, a window in which no feature's effect exceeds its threshold
    flags anything with probability at most ``alpha`` (up to the accuracy of
    each test's approximation, measured in docs/statistics.md).

    Examples
    --------
    >>> r = {"f": {"status": "ok", "drift": False, "test": {"p_value": 0.004}},
    ...      "g": {"status": "ok", "drift": False, "test": {"p_value": 0.2}}}
    >>> [(k, v["drift"], v["test"]["p_value_adjusted"]) for k, v in decide(r).items()]
    [('f', True, 0.008), ('g', False, 0.2)]
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    tested = [k for k, r in results.items() if r["status"] == "ok" and r["test"]["p_value"] is not None]
    adjusted = dict(zip(tested, holm([results[k]["test"]["p_value"] for k in tested]).tolist()))
    for name, r in results.items():
        p_adj = adjusted.get(name)
        r["test"]["p_value_adjusted"] = p_adj
        r["test"]["alpha"] = float(alpha)
        r["drift"] = bool(p_adj is not None and p_adj <= alpha)
    return results
