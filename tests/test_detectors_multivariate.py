"""Multivariate drift detectors: encoding, checkpoints, merges, and calibration on seeded simulations.

The simulated table has ten features: two numeric ones correlated at rho = 0.8 (``x0``, ``x1``), six more
numeric ones of assorted shapes and two categorical ones. The drift scenario flips the correlation to
-0.8: every marginal stays exactly as it was, so the univariate tests (detectors.drift, run as the pipeline
runs them) must stay quiet while the multivariate ones see it.
"""

import doctest

import numpy as np
import pytest
from scipy import stats as sps

from detectors import multivariate
from detectors.drift import FeaturePolicy, compare_categorical, compare_numeric, decide
from detectors.accumulate import CategoryCounter, NumericHistogram
from detectors.multivariate import DomainClassifier, PCAReconstruction, TableEncoder
from detectors.profile import CategoricalProfile, NumericProfile

N_BASELINE = 50_000
WINDOW = 5_000
KINDS = {**{f"x{i}": "numeric" for i in range(8)}, "plan": "categorical", "flag": "categorical"}
PLANS = np.array(["basic", "plus", "pro", "team"], dtype=object)


def table(rng, n, rho=0.8):
    """``n`` rows; ``x0`` and ``x1`` are standard normal with correlation ``rho``."""
    a, b = rng.normal(size=(2, n))
    cols = {"x0": a, "x1": rho * a + np.sqrt(1 - rho ** 2) * b,
            "x2": rng.lognormal(0.0, 1.0, n), "x3": rng.exponential(2.0, n), "x4": rng.uniform(-1, 1, n),
            "x5": rng.poisson(3.0, n).astype(float), "x6": rng.normal(100.0, 15.0, n), "x7": rng.gamma(2.0, 2.0, n)}
    cols["x6"][rng.random(n) < 0.02] = np.nan  # some missing values
    cols["plan"] = tuple(PLANS[np.searchsorted([0.4, 0.7, 0.9], rng.random(n))].tolist())
    cols["flag"] = tuple((rng.random(n) < 0.3).tolist())
    return cols


@pytest.fixture(scope="module")
def baseline():
    return table(np.random.default_rng(7), N_BASELINE)


@pytest.fixture(scope="module")
def pca_model(baseline):
    return PCAReconstruction.fit_baseline(baseline, KINDS, seed=1)


@pytest.fixture(scope="module")
def classifier_model(baseline):
    return DomainClassifier.fit_baseline(baseline, KINDS, sample_size=1000, seed=1)


def univariate_drifted(baseline, window):
    """The features the univariate tests flag, computed as monitor.window.Evaluator does (one Holm family)."""
    results = {}
    for name, kind in KINDS.items():
        if kind == "numeric":
            prof = NumericProfile.fit(baseline[name])
            hist = NumericHistogram(prof.edges, prof.min, prof.max).update(window[name])
            results[name] = compare_numeric(prof, hist, FeaturePolicy())
        else:
            prof = CategoricalProfile.fit(list(baseline[name]))
            counter = CategoryCounter(prof.categories, prof.other_categories).update(list(window[name]))
            results[name] = compare_categorical(prof, counter, FeaturePolicy())
    return [name for name, r in decide(results, alpha=0.01).items() if r["drift"]]


# ---------------------------------------------------------------- the encoder


def test_encoder_codes_and_standardized_columns():
    cols = {"n": np.array([1.0, 3.0, np.nan, 5.0]), "c": ("a", "b", None, "a")}
    enc = TableEncoder.fit(cols, {"n": "numeric", "c": "categorical"}, max_categories=1)
    assert enc.categories == [None, ["a"]] and enc.frequencies[1] == pytest.approx([2 / 3, 1 / 3])
    window = {"n": np.array([3.0, np.nan, np.inf]), "c": ("a", "zzz", float("nan"))}
    codes = enc.codes(window)
    np.testing.assert_array_equal(codes[:, 1], [0.0, 1.0, np.nan])  # unseen -> "other" (index 1)
    assert np.isnan(codes[1:, 0]).all()
    z = enc.standardized(window)
    assert z.shape == (3, 3)
    np.testing.assert_allclose(z[0], [0.0, (1 - 2 / 3) / np.sqrt(2 / 9), (0 - 1 / 3) / np.sqrt(2 / 9)])
    np.testing.assert_allclose(z[1:, 0], 0.0)  # missing numeric -> the mean
    np.testing.assert_allclose(z[2, 1:], 0.0)  # missing category -> no indicator
    # 1.0 and 1 and True are normalized as the baseline's category profiles are
    enc2 = TableEncoder.fit({"c": (1, 2, 2)}, {"c": "categorical"})
    np.testing.assert_array_equal(enc2.codes({"c": (1.0, "2", True)})[:, 0], [1.0, 0.0, 2.0])
    assert TableEncoder.from_dict(enc.to_dict()).to_dict() == enc.to_dict()


# ---------------------------------------------------------------- PCA reconstruction


def test_pca_fit_matches_a_reference_reconstruction(pca_model, baseline):
    # The error of a row is its distance to the projection on the kept components of an sklearn PCA.
    from sklearn.decomposition import PCA

    det = PCAReconstruction(pca_model)
    z = det.encoder.standardized(baseline)
    order = np.random.default_rng(1).permutation(z.shape[0])
    fit = z[order[: z.shape[0] // 2]]
    pca = PCA(n_components=pca_model["components"]).fit(fit)
    rows = z[:500]
    expected = np.linalg.norm(rows - pca.inverse_transform(pca.transform(rows)), axis=1)
    np.testing.assert_allclose(det._errors(rows), expected, rtol=1e-6, atol=1e-9)
    # windows take a faster path (lookups instead of one-hot matrices); it must agree with the dense one
    window = table(np.random.default_rng(5), 2000)
    window["x3"][:10] = np.nan
    window["plan"] = ("unseen", None) + window["plan"][2:]
    np.testing.assert_allclose(det._errors_from_columns(window), det._errors(det.encoder.standardized(window)),
                               rtol=1e-9, atol=1e-9)
    assert pca_model["basis_kind"] == "kept"
    # ... with the dropped basis stored (most variance kept), and for numeric-only or categorical-only tables
    small = {k: v[:5000] for k, v in baseline.items()}
    for kinds, variance in ((KINDS, 0.95), ({"x0": "numeric", "x1": "numeric", "x2": "numeric"}, 0.5),
                            ({"plan": "categorical", "flag": "categorical"}, 0.65)):
        other = PCAReconstruction(PCAReconstruction.fit_baseline(small, kinds, variance=variance))
        np.testing.assert_allclose(other._errors_from_columns(window),
                                   other._errors(other.encoder.standardized(window)), rtol=1e-9, atol=1e-9)
    assert PCAReconstruction.fit_baseline(small, KINDS, variance=0.95)["basis_kind"] == "dropped"
    assert pca_model["explained_variance"] >= 0.65
    assert 0 < pca_model["components"] < det.encoder.width


def test_pca_state_merge_and_validation(pca_model):
    rng = np.random.default_rng(3)
    a, b = table(rng, 3000), table(rng, 2000)
    whole = PCAReconstruction(pca_model).update(a).update(b)
    left, right = PCAReconstruction(pca_model).update(a), PCAReconstruction(pca_model).update(b)
    merged = left.merge(right).result()
    assert merged.events == 5000 and merged.error == pytest.approx(whole.result().error, rel=1e-12)
    restored = PCAReconstruction(pca_model).load_state_dict(whole.state_dict())
    assert restored.result() == whole.result()
    assert PCAReconstruction(pca_model).update(table(rng, 50)).result().status == "insufficient_data"
    for bad in (dict(alpha=0), dict(alpha=1.5), dict(threshold=-0.1), dict(min_events=0), dict(min_events=2.5)):
        with pytest.raises(ValueError):
            PCAReconstruction(pca_model, **bad)


def test_pca_no_drift_false_alarm_rate(pca_model):
    rng = np.random.default_rng(11)
    results = [PCAReconstruction(pca_model).update(table(rng, WINDOW)).result() for _ in range(400)]
    p = np.array([r.p_value for r in results])
    # calibrated: at most alpha = 1% of windows flagged (binomial 99.9% bound for 400 windows: 11)
    assert sum(r.drift for r in results) <= 11
    # and the test itself is calibrated, not just saved by the effect gate: p-values are uniform
    assert np.mean(p <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)
    assert sps.kstest(p, "uniform").pvalue > 0.001


def test_pca_catches_a_correlation_flip_the_univariate_tests_miss(pca_model, baseline):
    rng = np.random.default_rng(12)
    windows = [table(rng, WINDOW, rho=-0.8) for _ in range(40)]
    results = [PCAReconstruction(pca_model).update(w).result() for w in windows]
    assert np.mean([r.drift for r in results]) >= 0.95
    assert min(r.effect for r in results) > 0.1  # the error rises
    assert np.mean([bool(univariate_drifted(baseline, w)) for w in windows[:20]]) <= 0.05


# ---------------------------------------------------------------- domain classifier


def test_classifier_reservoir_is_uniform_and_bounded(classifier_model):
    det = DomainClassifier(classifier_model, sample_size=100, seed=5)
    counts = np.zeros(1000)
    for rep in range(200):
        det = DomainClassifier(classifier_model, sample_size=100, seed=rep)
        codes = np.tile(np.arange(1000.0)[:, None], (1, len(KINDS)))
        for start in range(0, 1000, 137):  # uneven batches
            det.update_codes(codes[start:start + 137])
        assert det.sample.shape == (100, len(KINDS)) and det.n == 1000
        counts[det.sample[:, 0].astype(int)] += 1
    # each row is kept with probability 0.1: 20 expected over 200 reps; early, middle and late rows alike
    thirds = counts.reshape(4, 250).sum(axis=1)
    assert np.all(np.abs(thirds - 5000) < 5 * np.sqrt(5000))
    assert sps.chisquare(counts.reshape(100, 10).sum(axis=1)).pvalue > 0.001


def test_classifier_merge_state_and_validation(classifier_model):
    rng = np.random.default_rng(4)
    a = DomainClassifier(classifier_model, sample_size=300, seed=1).update(table(rng, 1000))
    b = DomainClassifier(classifier_model, sample_size=300, seed=2).update(table(rng, 3000))
    a.merge(b)
    assert a.n == 4000 and a.sample.shape == (300, len(KINDS))
    restored = DomainClassifier(classifier_model, sample_size=300).load_state_dict(
        __import__("json").loads(__import__("json").dumps(a.state_dict())))
    np.testing.assert_array_equal(restored.sample, a.sample)
    # the restored random state continues the same sequence
    more = table(rng, 500)
    np.testing.assert_array_equal(restored.update(more).sample, a.update(more).sample)
    twin = a.copy()  # independent: what the daemon hands to its worker thread
    a.update(table(rng, 300))
    assert twin.n == 4500 and a.n == 4800 and not np.array_equal(twin.sample, a.sample)
    assert DomainClassifier(classifier_model).update(table(rng, 50)).result().status == "insufficient_data"
    for bad in (dict(threshold=0.4), dict(sample_size=5), dict(alpha=1), dict(seed=-1), dict(max_iter=0)):
        with pytest.raises(ValueError):
            DomainClassifier(classifier_model, **bad)


def _rows(first, n):
    return np.tile(np.arange(first, first + n, dtype=float)[:, None], (1, len(KINDS)))


def test_classifier_merge_is_distributed_as_one_process_sample(classifier_model):
    """Partials of one window are built by twins with the same seed (every worker's window detector is the
    config's): their merge must still be a uniform sample of the union, as one process's reservoir is.
    Each row is kept with probability size/total whatever its partial (weighted by the counts seen), and
    two rows of different partials are kept together as often as in a uniform sample: identically seeded
    reservoirs that pick the same slots would keep row i of one partial with row i of the other ten times
    as often."""
    size, reps = 100, 300
    kept = np.zeros(4000)
    for rep in range(reps):  # partials of 1000 and 3000 rows: each row kept with probability 100/4000
        a = DomainClassifier(classifier_model, sample_size=size, seed=rep).update_codes(_rows(0, 1000))
        b = DomainClassifier(classifier_model, sample_size=size, seed=rep)
        for start in range(1000, 4000, 700):  # other batch sizes on the other worker
            b.update_codes(_rows(start, min(700, 4000 - start)))
        a.merge(b)
        assert a.n == 4000 and a.sample.shape[0] == size and np.unique(a.sample[:, 0]).size == size
        kept[a.sample[:, 0].astype(int)] += 1
    from_a = kept[:1000].sum() / reps  # hypergeometric(1000, 3000, 100): mean 25, sd ~4.3; over 300 reps
    assert abs(from_a - 25.0) < 5 * 4.3 / np.sqrt(reps)
    assert sps.chisquare(kept.reshape(100, 40).sum(axis=1)).pvalue > 0.001  # uniform over the union

    together, pairs = 0, 1000
    for rep in range(reps):  # equal partials with equal seeds: the case where shared slots would show
        a = DomainClassifier(classifier_model, sample_size=size, seed=rep).update_codes(_rows(0, pairs))
        b = DomainClassifier(classifier_model, sample_size=size, seed=rep).update_codes(_rows(pairs, pairs))
        rows = set(a.merge(b).sample[:, 0].astype(int).tolist())
        together += sum(i in rows and i + pairs in rows for i in range(pairs))
    expected = reps * pairs * size / (2 * pairs) * (size - 1) / (2 * pairs - 1)  # ~743 in a uniform sample
    assert abs(together - expected) < 5 * np.sqrt(expected)


def test_classifier_no_drift_false_alarm_rate(classifier_model):
    # alpha = 0.05 here for resolution with 100 model fits; the p-value must be (about) uniform
    rng = np.random.default_rng(21)
    results = [DomainClassifier(classifier_model, alpha=0.05, sample_size=500, seed=i)
               .update(table(rng, WINDOW)).result() for i in range(100)]
    p = np.array([r.p_value for r in results])
    assert sum(r.drift for r in results) <= 11  # binomial(100, 0.05): P(X > 11) < 0.5%
    assert np.mean(p <= 0.05) <= 0.11
    assert sps.kstest(p, "uniform").pvalue > 0.001
    assert 0.45 < np.median([r.auc for r in results]) < 0.55


def test_classifier_catches_a_correlation_flip(classifier_model):
    rng = np.random.default_rng(22)
    results = [DomainClassifier(classifier_model, seed=i).update(table(rng, WINDOW, rho=-0.8)).result()
               for i in range(30)]
    assert np.mean([r.drift for r in results]) >= 0.95
    assert min(r.auc for r in results) > 0.7


def test_docstring_examples_hold():
    failed, attempted = doctest.testmod(multivariate, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
