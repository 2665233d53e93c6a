"""Seeded, vectorized simulations of the material-drift test (calibration and power).

Baselines of 50,000 rows are fitted with the real profile code; windows are drawn
as one (windows x events) array per baseline and binned with ``bincount``, then
each window goes through the same comparison as the daemon's. The true effect is
set exactly: for numeric features a shift by ``effect * sd`` (W1 of a shift is the
shift; ``sd`` is the baseline's, the unit the threshold is stated in) or, for integer
features, moving a share ``effect * sd`` of the mass up by one (W1 = that share, and
the data keep their ties); for categorical features the window's probabilities are the baseline's
mixed with a uniform or a shifted distribution, the mixing weight solved so that
the Jensen-Shannon distance on the categories driftmon keeps equals the effect.

``python -m tests.material_sim`` prints the tables in docs/statistics.md.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq

from detectors import CategoricalProfile, CategoryCounter, FeaturePolicy, NumericProfile, compare_categorical
from detectors.stats import js_distance, material_wasserstein

N_BASELINE = 50_000
THRESHOLD_W = 0.1
THRESHOLD_JS = 0.05

# name -> (generator(rng, shape), integer-valued)
NUMERIC = {
    "normal": (lambda r, s: r.normal(0.0, 1.0, s), False),
    "lognormal": (lambda r, s: r.lognormal(0.0, 1.0, s), False),
    "bimodal": (lambda r, s: np.where(r.random(s) < 0.3, r.normal(-2.0, 0.5, s), r.normal(2.0, 1.0, s)), False),
    "integer (Poisson 4, ties)": (lambda r, s: r.poisson(4.0, s).astype(float), True),
}


def _zipf(k, s):
    w = 1.0 / np.arange(1, k + 1) ** s
    return w / w.sum()


CATEGORICAL = {
    "2 categories": np.array([0.7, 0.3]),
    "5 categories": _zipf(5, 1.0),
    "30 categories": _zipf(30, 1.0),
    "long tail (300, 50 kept)": _zipf(300, 1.1),
}


def compare_numeric_arrays(profile, x, threshold):
    """The Wasserstein material test of every row of ``x`` (windows x events) against ``profile``."""
    k = profile.edges.size + 1
    rows = np.repeat(np.arange(x.shape[0]), x.shape[1])
    cell = rows * k + np.searchsorted(profile.edges, x, side="left").ravel()  # bin i is (edges[i-1], edges[i]]
    counts = np.bincount(cell, minlength=x.shape[0] * k).reshape(-1, k)
    sums = np.bincount(cell, weights=x.ravel(), minlength=x.shape[0] * k).reshape(-1, k)
    lo, hi, std = np.minimum(x.min(axis=1), profile.min), np.maximum(x.max(axis=1), profile.max), x.std(axis=1)
    return [material_wasserstein(profile.edges, profile.counts, counts[i], lo[i], hi[i], profile.sums, sums[i],
                                 profile.std, std[i], threshold, scale=profile.std) for i in range(x.shape[0])]


def numeric_rates(name, effects, window, windows, alpha, **kw):
    """Share of ``windows`` windows (of ``window`` events) whose material test rejects at ``alpha``, per effect."""
    return [float(np.mean(p <= alpha)) for p in numeric_pvalues(name, effects, window, windows, **kw)]


def categorical_rates(name, effects, window, windows, alpha, **kw):
    return [float(np.mean(p <= alpha)) for p in categorical_pvalues(name, effects, window, windows, **kw)]


def numeric_pvalues(name, effects, window, windows, seed=0, baselines=None, threshold=THRESHOLD_W):
    """The material test's p-values of ``windows`` windows of ``window`` events, per effect.

    Every effect is applied to the same draws. Each baseline is a sample too, and the
    test counts its noise, so the windows are spread over ``baselines`` baselines.
    """
    gen, integer = NUMERIC[name]
    baselines = baselines or max(8, windows // 10)
    per = -(-windows // baselines)
    flags = {e: [] for e in effects}
    for b in range(baselines):
        rng = np.random.default_rng([seed, b, window])
        profile = NumericProfile.fit(gen(rng, N_BASELINE))
        x = gen(rng, (per, window))
        u = rng.random(x.shape) if integer else None
        for effect in effects:
            # the threshold is in units of the baseline file's std, a constant of the baseline
            moved = x + (u < effect * profile.std) if integer else x + effect * profile.std
            flags[effect] += [t.p_value for t in compare_numeric_arrays(profile, moved, threshold)]
    return [np.array(flags[e][:windows]) for e in effects]


def _kept(probs, max_categories=50):
    """Probabilities on the categories a profile keeps (the rest pooled as other)."""
    if probs.size <= max_categories:
        return probs
    return np.append(probs[:max_categories], probs[max_categories:].sum())


def shifted_probs(probs, effect):
    """The baseline's probabilities moved until the JS distance on the kept categories is ``effect``."""
    if effect == 0:
        return probs
    target = np.roll(probs, 1) if probs.size <= 5 else np.full(probs.size, 1.0 / probs.size)
    js = lambda t: js_distance(_kept(probs), _kept((1 - t) * probs + t * target)) - effect  # noqa: E731
    t = brentq(js, 0.0, 1.0, xtol=1e-12)
    return (1 - t) * probs + t * target


def categorical_pvalues(name, effects, window, windows, seed=0, baselines=None, threshold=THRESHOLD_JS):
    """As :func:`numeric_pvalues`, for a categorical feature (windows drawn per effect, baselines shared)."""
    probs = CATEGORICAL[name]
    values = [f"c{i:03d}" for i in range(probs.size)]
    baselines = baselines or max(8, windows // 10)
    per = -(-windows // baselines)
    policy = FeaturePolicy(effect_threshold=threshold)
    flags = {e: [] for e in effects}
    for b in range(baselines):
        rng = np.random.default_rng([seed, 100 + b, window])
        profile = CategoricalProfile.from_counts(dict(zip(values, rng.multinomial(N_BASELINE, probs).tolist())))
        for effect in effects:
            for row in rng.multinomial(window, shifted_probs(probs, effect), size=per):
                counter = CategoryCounter(profile.categories, profile.other_categories)
                counter.update_counts({c: k for c, k in zip(values, row.tolist()) if k})
                flags[effect].append(compare_categorical(profile, counter, policy)["test"]["p_value"])
    return [np.array(flags[e][:windows]) for e in effects]


def table(windows=None):
    """Print the calibration table of docs/statistics.md (rates at alpha 0.01 and 0.05).

    At 50,000 events the baseline's noise is as large as the window's, so every window
    gets its own baseline there (else the rates would be those of a few baselines).
    """
    windows = windows or {500: 4000, 5000: 2000, 50000: 1000}
    for kind, names, thr, fn in (("numeric", NUMERIC, THRESHOLD_W, numeric_pvalues),
                                 ("categorical", CATEGORICAL, THRESHOLD_JS, categorical_pvalues)):
        for name in names:
            for window, count in windows.items():
                half, at, twice = fn(name, [m * thr for m in (0.5, 1.0, 2.0)], window, count,
                                     baselines=count if window >= 50_000 else None)
                cells = [f"{np.mean(at <= 0.01):.2%}", f"{np.mean(at <= 0.05):.1%}", f"{np.mean(half <= 0.01):.2%}",
                         f"{np.mean(twice <= 0.01):.1%}"]
                print(f"| {kind} | {name} | {window:,} | {count:,} | " + " | ".join(cells) + " |", flush=True)


def power_curve(window=500, windows=2000, multiples=(1.0, 1.5, 2.0, 3.0, 4.0), alpha=0.01):
    """Print the power curve at ``window`` events: flag rate per multiple of the threshold."""
    for kind, names, thr, fn in (("numeric", NUMERIC, THRESHOLD_W, numeric_pvalues),
                                 ("categorical", CATEGORICAL, THRESHOLD_JS, categorical_pvalues)):
        for name in names:
            rates = [np.mean(p <= alpha) for p in fn(name, [m * thr for m in multiples], window, windows)]
            print(f"| {kind} | {name} | " + " | ".join(f"{r:.1%}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["power"]:
        power_curve()
        sys.exit()
    table({int(w): {500: 4000, 5000: 2000, 50000: 1000}[int(w)] for w in sys.argv[1:]} or None)
