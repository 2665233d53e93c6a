"""ClassificationAccumulator, RegressionAccumulator, performance_drop_test and ConfidenceBasedEstimator.

Expected values are hand-computed or come from textbook formulas written out
here (Mann-Whitney via scipy, log loss and ECE by direct loops, numpy for
regression), never from the code under test.
"""

import doctest
import json
import math

import numpy as np
import pytest
from scipy import stats as ss

from detectors import (
    ClassificationAccumulator,
    ConfidenceBasedEstimator,
    RegressionAccumulator,
    performance_drop_test,
)
from detectors import performance
from detectors.performance import pool_adjacent_violators


def assert_json_safe(obj):
    text = json.dumps(obj, allow_nan=False)
    assert json.loads(text) == obj


# ---------------------------------------------------------------- classification: hand-made tables

# TP at 0, 2, 6; FN at 1; FP at 4, 7; TN at 3, 5.
Y_TRUE = [1, 1, 1, 0, 0, 0, 1, 0]
Y_PRED = [1, 0, 1, 0, 1, 0, 1, 1]
SCORE = [0.9, 0.3, 0.8, 0.1, 0.6, 0.3, 0.7, 0.55]


def test_binary_counts_metrics_by_hand():
    m = ClassificationAccumulator(positive=1).update(Y_TRUE, Y_PRED).metrics()
    # TP=3, FP=2, FN=1, TN=2
    assert m["n"] == 8 and m["average"] == "binary"
    assert m["accuracy"] == 5 / 8
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # = 2PR/(P+R) = 2/3
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["roc_auc"] is None and m["log_loss"] is None and m["ece"] is None and m["n_scored"] == 0
    assert_json_safe(m)


def test_binary_score_metrics_by_hand():
    m = ClassificationAccumulator(positive=1).update(Y_TRUE, Y_PRED, score=SCORE).metrics()
    # positives 0.9, 0.3, 0.8, 0.7; negatives 0.1, 0.6, 0.3, 0.55.
    # 0.9, 0.8 beat all 4; 0.7 beats 0.1, 0.6, 0.3, 0.55; 0.3 beats 0.1, ties 0.3 (half).
    wins = 4 + 4 + 4 + 1 + 0.5
    assert m["roc_auc"] == pytest.approx(wins / 16)
    # the tie (0.3, 0.3) is the only same-bin pair at 1000 bins
    assert m["roc_auc_error_bound"] == pytest.approx(0.5 * 1 / 16)
    ll = -(math.log(0.9) + math.log(0.3) + math.log(0.8) + math.log(0.9) + math.log(0.4)
           + math.log(0.7) + math.log(0.7) + math.log(0.45)) / 8  # fmt: skip
    assert m["log_loss"] == pytest.approx(ll, rel=1e-12)
    # ECE, 10 bins: [0.1,0.2): {0.1:neg}; [0.3,0.4): {0.3:pos, 0.3:neg}; [0.5,0.6): {0.55:neg};
    # [0.6,0.7): {0.6:neg}; [0.7,0.8): {0.7:pos}; [0.8,0.9): {0.8:pos}; [0.9,1]: {0.9:pos}
    ece = (1 * abs(0.1 - 0) + 2 * abs(0.3 - 0.5) + 1 * abs(0.55 - 0) + 1 * abs(0.6 - 0)
           + 1 * abs(0.7 - 1) + 1 * abs(0.8 - 1) + 1 * abs(0.9 - 1)) / 8  # fmt: skip
    assert m["ece"] == pytest.approx(ece, rel=1e-12)
    assert_json_safe(m)


def test_multiclass_macro_by_hand():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "b", "a", "b", "c", "c"]
    acc = ClassificationAccumulator(classes=["a", "b", "c", "d"]).update(y_true, y_pred)
    m = acc.metrics()
    # a: TP2 FP0 FN1 -> P 1, R 2/3, F1 4/5; b: TP1 FP1 FN1 -> .5 .5 .5; c: TP1 FP1 FN0 -> .5, 1, 2/3.
    # d never appears: every per-class value undefined, left out of the averages.
    assert m["average"] == "macro"
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["f1"] == pytest.approx((4 / 5 + 0.5 + 2 / 3) / 3)
    assert acc.labels == ["a", "b", "c", "d"]
    assert acc.confusion_matrix.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_macro_class_only_predicted_counts_zero_precision():
    # "z" is predicted once, never true: precision 0 (defined), recall undefined (left out), F1 0.
    m = ClassificationAccumulator().update(["a", "b"], ["a", "z"]).metrics()
    # a: P1 R1 F1 1; b: P undefined, R 0, F1 0; z: P 0, R undefined, F1 0
    assert m["precision"] == pytest.approx((1 + 0) / 2)
    assert m["recall"] == pytest.approx((1 + 0) / 2)
    assert m["f1"] == pytest.approx((1 + 0 + 0) / 3)


def test_undefined_values_are_none():
    empty = ClassificationAccumulator(positive="yes").metrics()
    assert all(empty[k] is None for k in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece"))
    assert empty["n"] == 0
    # no predicted positives -> precision None; no actual positives -> recall None
    m = ClassificationAccumulator(positive="yes").update(["no", "no"], ["no", "no"], score=[0.1, 0.2]).metrics()
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None
    assert m["accuracy"] == 1.0
    assert m["roc_auc"] is None  # one class only
    assert m["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert_json_safe(m)
    assert_json_safe(ClassificationAccumulator().metrics())


def test_labels_compared_as_str_and_missing_skipped():
    acc = ClassificationAccumulator(positive="1")
    acc.update(np.array([1, 0, 1]), ["1", "0", "0"])
    acc.update([1, None, float("nan"), 0], [1, 1, 0, None])
    m = acc.metrics()
    assert m["n"] == 4 and m["missing"] == 3
    assert m["accuracy"] == 3 / 4
    # NaN score: row counted, not scored
    acc.update([1, 0], [1, 0], score=[np.nan, 0.2])
    assert acc.n == 6 and acc.n_scored == 1


def test_validation():
    with pytest.raises(ValueError):
        ClassificationAccumulator().update([1], [1], score=[0.5])  # scores need positive
    with pytest.raises(ValueError):
        ClassificationAccumulator(positive=1).update([1], [1], score=[1.5])
    with pytest.raises(ValueError):
        ClassificationAccumulator(positive=1).update([1, 0], [1])
    with pytest.raises(ValueError):
        ClassificationAccumulator(classes=["a", "b"], positive="c")
    with pytest.raises(ValueError):
        ClassificationAccumulator(score_bins=0)
    assert ClassificationAccumulator(classes=["no", "yes"], positive="yes").labels == ["no", "yes"]


def test_class_cap_pools_overflow_and_keeps_accuracy_exact():
    labels = [f"c{i}" for i in range(105)]
    acc = ClassificationAccumulator().update(labels, labels)
    assert acc.labels == labels[:100] + ["__overflow__"]  # first 100 by appearance keep their names
    acc.update(["c101"], ["c102"])  # both overflow names: pooled, but not "correct"
    m = acc.metrics()
    assert m["n"] == 106 and m["accuracy"] == pytest.approx(105 / 106)
    # macro over the 100 named classes, all perfect
    assert m["precision"] == 1.0 and m["recall"] == 1.0


# ---------------------------------------------------------------- classification: against references


def _mann_whitney_auc(scores, y):
    pos, neg = scores[y], scores[~y]
    u = ss.mannwhitneyu(pos, neg, alternative="two-sided").statistic  # U of the first sample, ties = 1/2
    return u / (pos.size * neg.size)


@pytest.mark.parametrize("bins", [1000, 50, 7])
def test_roc_auc_against_mann_whitney_within_bound(bins):
    rng = np.random.default_rng(3)
    y = rng.random(3000) < 0.3
    s = np.clip(rng.normal(0.45 + 0.15 * y, 0.2), 0, 1)
    s[:40] = 0.0
    s[40:60] = 1.0
    m = ClassificationAccumulator(positive=True, score_bins=bins).update(y, np.where(s >= 0.5, True, False), score=s).metrics()
    exact = _mann_whitney_auc(s, y)
    assert abs(m["roc_auc"] - exact) <= m["roc_auc_error_bound"] + 1e-12
    # bound: half the same-bin pairs, computed here from the bin assignment
    b = np.minimum(np.floor(s * bins), bins - 1)
    same = sum(np.sum(b[y] == v) * np.sum(b[~y] == v) for v in np.unique(b))
    assert m["roc_auc_error_bound"] == pytest.approx(0.5 * same / (y.sum() * (~y).sum()))
    if bins == 1000:
        assert m["roc_auc_error_bound"] < 0.002


def test_log_loss_and_ece_against_direct_formulas():
    rng = np.random.default_rng(4)
    s = rng.random(5000)
    s[:5] = [0.0, 1.0, 0.0, 1.0, 0.5]
    y = rng.random(5000) < s**1.3
    y[:4] = [True, False, False, True]  # p=0 for a positive and p=1 for a negative: clipped, finite
    acc = ClassificationAccumulator(positive=True, n_bins_calibration=15)
    for chunk in np.array_split(np.arange(s.size), 7):
        acc.update(y[chunk], s[chunk] >= 0.5, score=s[chunk])
    m = acc.metrics()
    p = np.clip(s, 1e-15, 1 - 1e-15)
    losses = [-math.log(pi) if yi else -math.log(1 - pi) for pi, yi in zip(p, y)]
    assert m["log_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-9)
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (s >= lo) & ((s < hi) if b < 14 else (s <= 1))
        if inside.any():
            ece += inside.sum() / s.size * abs(s[inside].mean() - y[inside].mean())
    assert m["ece"] == pytest.approx(ece, rel=1e-9)


def test_chunked_updates_equal_one_update():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 1000)
    p = np.where(rng.random(1000) < 0.7, y, rng.integers(0, 3, 1000))
    one = ClassificationAccumulator().update(y, p)
    many = ClassificationAccumulator()
    for i in range(0, 1000, 93):
        many.update(y[i : i + 93], p[i : i + 93])
    assert one.metrics() == many.metrics()


def test_classification_state_round_trip():
    rng = np.random.default_rng(6)
    y = rng.random(500) < 0.4
    s = rng.random(500)
    acc = ClassificationAccumulator(positive=True).update(y[:300], s[:300] > 0.5, score=s[:300])
    state = json.loads(json.dumps(acc.state_dict(), allow_nan=False))
    restored = ClassificationAccumulator(positive=True).load_state_dict(state)
    assert restored.metrics() == acc.metrics()
    acc.update(y[300:], s[300:] > 0.5, score=s[300:])
    restored.update(y[300:], s[300:] > 0.5, score=s[300:])
    assert restored.metrics() == acc.metrics()
    with pytest.raises(ValueError):
        ClassificationAccumulator(positive=False).load_state_dict(state)
    with pytest.raises(ValueError):
        ClassificationAccumulator(positive=True, score_bins=10).load_state_dict(state)


def test_std_errors_closed_forms():
    acc = ClassificationAccumulator(positive=1).update(Y_TRUE, Y_PRED, score=SCORE)
    se = acc.std_errors()
    tp, fp, fn = 3, 2, 1
    assert se["accuracy"] == pytest.approx(math.sqrt(5 / 8 * 3 / 8 / 8))
    assert se["precision"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert se["recall"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert se["f1"] == pytest.approx(math.sqrt(4 * tp * (fp + fn) * (tp + fp + fn) / (2 * tp + fp + fn) ** 4))
    a, n1, n0 = 13.5 / 16, 4, 4  # AUC of the table, see test_binary_score_metrics_by_hand
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hanley_mcneil = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0)
    assert se["roc_auc"] == pytest.approx(math.sqrt(hanley_mcneil))
    assert se["ece"] is None
    assert_json_safe(se)


def test_f1_std_error_matches_simulation():
    # Multinomial confusion cells with fixed probabilities; the spread of F1 over
    # many seeded windows should match the delta-method standard error.
    rng = np.random.default_rng(7)
    probs = [0.2, 0.05, 0.1, 0.65]  # TP, FP, FN, TN
    n = 2000
    cells = rng.multinomial(n, probs, size=4000)
    f1 = 2 * cells[:, 0] / (2 * cells[:, 0] + cells[:, 1] + cells[:, 2])
    tp, fp, fn = (np.array(probs[:3]) * n).tolist()
    acc = ClassificationAccumulator(positive=1)
    acc.update([1] * int(tp) + [0] * int(fp) + [1] * int(fn) + [0] * (n - int(tp + fp + fn)),
               [1] * int(tp + fp) + [0] * (n - int(tp + fp)))  # fmt: skip
    assert acc.std_errors()["f1"] == pytest.approx(f1.std(), rel=0.08)


# ---------------------------------------------------------------- regression


def test_regression_against_numpy():
    rng = np.random.default_rng(8)
    y = rng.normal(3, 2, 2000)
    y[:10] = 0.0
    yhat = y + rng.normal(0, 0.5, 2000)
    acc = RegressionAccumulator()
    for chunk in np.array_split(np.arange(y.size), 9):
        acc.update(y[chunk], yhat[chunk])
    m = acc.metrics()
    err = y - yhat
    assert m["n"] == 2000
    assert m["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-12)
    nz = y != 0
    assert m["mape"] == pytest.approx(np.mean(np.abs(err[nz]) / np.abs(y[nz])), rel=1e-12)  # y == 0 left out
    assert m["r2"] == pytest.approx(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2), rel=1e-12)
    assert_json_safe(m)


def test_regression_by_hand_and_undefined():
    m = RegressionAccumulator().update([1.0, 2.0, 4.0], [1.5, 2.0, 3.0]).metrics()
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert m["mape"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert m["r2"] == pytest.approx(1 - 1.25 / (16 / 9 + 1 / 9 + 25 / 9))
    empty = RegressionAccumulator().metrics()
    assert empty == {"n": 0, "missing": 0, "mae": None, "rmse": None, "mape": None, "r2": None}
    const = RegressionAccumulator().update([0.0, 0.0], [1.0, np.nan]).metrics()
    assert const["n"] == 1 and const["missing"] == 1 and const["mape"] is None and const["r2"] is None


def test_regression_r2_keeps_precision_with_large_offset():
    rng = np.random.default_rng(9)
    y = 1e9 + rng.normal(0, 1, 10_000)
    yhat = y + rng.normal(0, 0.5, y.size)
    acc = RegressionAccumulator()
    for chunk in np.array_split(np.arange(y.size), 13):
        acc.update(y[chunk], yhat[chunk])
    ref = 1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)
    assert acc.metrics()["r2"] == pytest.approx(ref, abs=1e-6)


def test_regression_state_and_std_errors():
    rng = np.random.default_rng(10)
    y = rng.normal(5, 1, 400)
    yhat = y + rng.normal(0, 0.3, 400)
    acc = RegressionAccumulator().update(y, yhat)
    restored = RegressionAccumulator().load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.metrics() == acc.metrics()
    se = acc.std_errors()
    a = np.abs(y - yhat)
    assert se["mae"] == pytest.approx(a.std(ddof=1) / math.sqrt(a.size))
    sq = a**2
    assert se["rmse"] == pytest.approx(sq.std(ddof=1) / math.sqrt(a.size) / (2 * math.sqrt(sq.mean())))


# ---------------------------------------------------------------- drop test


def test_drop_test_binomial_against_binomial_cdf():
    r = performance_drop_test("accuracy", 0.90, 0.85, n=1000, margin=0.02)
    # H1: accuracy < 0.88; P(X <= 850 | n=1000, p=0.88)
    assert r["p_value"] == pytest.approx(ss.binom.cdf(850, 1000, 0.88), rel=1e-9)
    assert r["drop"] is True and r["test"] == "binomial_exact" and r["threshold"] == pytest.approx(0.88)
    assert set(r) >= {"metric", "baseline", "value", "margin", "p_value", "drop", "test"}
    assert_json_safe(r)
    small = performance_drop_test("accuracy", 0.90, 0.85, n=40, margin=0.02)
    assert small["p_value"] == pytest.approx(ss.binom.cdf(34, 40, 0.88)) and small["drop"] is False


def test_drop_test_normal_both_directions():
    r = performance_drop_test("roc_auc", 0.80, 0.78, n=2000, margin=0.005, std_err=0.01)
    z = (0.78 - 0.795) / 0.01
    assert r["p_value"] == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))))
    assert r["drop"] is False and r["test"] == "normal"
    # error metric: worse means higher
    r = performance_drop_test("mae", 1.0, 1.2, n=500, margin=0.05, std_err=0.05)
    z = (1.05 - 1.2) / 0.05
    assert r["p_value"] == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2)))) and r["drop"] is True
    assert r["threshold"] == pytest.approx(1.05)
    better = performance_drop_test("mae", 1.0, 0.8, n=500, std_err=0.05)
    assert better["drop"] is False and better["p_value"] > 0.99


def test_drop_test_edge_cases():
    r = performance_drop_test("accuracy", 0.9, None, n=0)
    assert r["p_value"] is None and r["drop"] is False
    assert performance_drop_test("accuracy", 0.01, 0.0, n=100, margin=0.05)["p_value"] == 1.0
    with pytest.raises(ValueError):
        performance_drop_test("f1", 0.8, 0.7, n=100)  # needs std_err
    with pytest.raises(ValueError):
        performance_drop_test("custom", 0.8, 0.7, n=100, std_err=0.1)  # direction unknown
    assert performance_drop_test("custom", 0.8, 0.7, n=100, std_err=0.1, higher_is_better=True)["drop"] is False
    with pytest.raises(ValueError):
        performance_drop_test("accuracy", 0.8, 0.7, n=100, margin=-0.1)


def test_drop_test_false_alarm_rate_and_power():
    # At the boundary (true accuracy = baseline - margin) the exact test rejects at most alpha.
    rng = np.random.default_rng(11)
    n = 1000
    at_boundary = rng.binomial(n, 0.88, size=2000) / n
    rate = np.mean([performance_drop_test("accuracy", 0.90, v, n, margin=0.02)["drop"] for v in at_boundary])
    assert rate <= 0.05 + 0.01
    worse = rng.binomial(n, 0.84, size=300) / n
    power = np.mean([performance_drop_test("accuracy", 0.90, v, n, margin=0.02)["drop"] for v in worse])
    assert power > 0.95


# ---------------------------------------------------------------- CBPE


def test_pool_adjacent_violators_by_hand():
    assert pool_adjacent_violators([1.0, 3.0, 2.0, 4.0], [1, 1, 1, 1]).tolist() == [1.0, 2.5, 2.5, 4.0]
    # weighted: (0.5 * 1 + 0.2 * 3) / 4 = 0.275
    assert pool_adjacent_violators([0.5, 0.2], [1, 3]).tolist() == pytest.approx([0.275, 0.275])
    assert pool_adjacent_violators([3.0, 2.0, 1.0], [1, 1, 1]).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        pool_adjacent_violators([1.0], [0])


def test_cbpe_expected_counts_by_hand():
    # two bins: scores 0.1 with 1/10 positive, 0.9 with 9/10 -> the identity map between them
    s = np.array([0.1] * 10 + [0.9] * 10)
    y = np.array([1] + [0] * 9 + [1] * 9 + [0])
    cbpe = ConfidenceBasedEstimator(positive=1, calibration="isotonic").fit(s, y)
    assert cbpe.uses_isotonic
    assert cbpe.calibrate([0.2, 0.6, 0.9, 0.0, 1.0]).tolist() == pytest.approx([0.2, 0.6, 0.9, 0.1, 0.9])
    r = cbpe.estimate([0.2, 0.6, 0.9])
    # p = .2 (pred 0), .6 and .9 (pred 1): TP 1.5, FP 0.5, FN 0.2, TN 0.8
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == pytest.approx((1.5, 0.5, 0.2, 0.8))
    assert r["accuracy"] == pytest.approx(2.3 / 3)
    assert r["precision"] == pytest.approx(1.5 / 2)
    assert r["recall"] == pytest.approx(1.5 / 1.7)
    assert r["f1"] == pytest.approx(3 / 3.7)
    assert r["n"] == 3
    assert r["sparse_share"] == 1.0  # every baseline bin held fewer than 100 rows
    assert_json_safe(r)


def test_calibration_test_by_hand():
    # 4 rows, 2 groups: (0.2, 0.4 | y 0, 1) and (0.6, 0.8 | y 1, 1)
    s = np.array([0.2, 0.4, 0.6, 0.8])
    y = np.array([0, 1, 1, 1])
    o1, e1, v1 = 1, 0.6, 0.2 * 0.8 + 0.4 * 0.6
    o2, e2, v2 = 2, 1.4, 0.6 * 0.4 + 0.8 * 0.2
    stat = (o1 - e1) ** 2 / v1 + (o2 - e2) ** 2 / v2
    got = performance.calibration_test(s, y, groups=2)
    assert got == pytest.approx((stat, ss.chi2.sf(stat, 2)))
    assert performance.calibration_test([1.0, 0.0], [0, 0]) == (float("inf"), 0.0)  # a certain score that was wrong


def test_cbpe_uses_raw_scores_unless_the_baseline_shows_miscalibration():
    rng = np.random.default_rng(14)
    s = rng.random(20_000)
    calibrated = ConfidenceBasedEstimator(positive=True).fit(s, rng.random(s.size) < s)
    assert not calibrated.uses_isotonic and calibrated.calibration_p_value > 0.05
    assert calibrated.calibrate([0.03, 0.97]).tolist() == [0.03, 0.97]
    skewed = ConfidenceBasedEstimator(positive=True).fit(s, rng.random(s.size) < s**2)
    assert skewed.uses_isotonic and skewed.calibration_p_value < 1e-6
    assert skewed.calibrate([0.5])[0] == pytest.approx(0.25, abs=0.03)
    forced = ConfidenceBasedEstimator(positive=True, calibration="isotonic").fit(s, rng.random(s.size) < s)
    assert forced.uses_isotonic
    raw = ConfidenceBasedEstimator(positive=True, calibration="none").fit(s, rng.random(s.size) < s**2)
    assert not raw.uses_isotonic
    with pytest.raises(ValueError):
        ConfidenceBasedEstimator(calibration="platt")


def _realized(s, y, threshold=0.5):
    pred = s >= threshold
    tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
    return {
        "accuracy": np.mean(pred == y),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cbpe_tracks_realized_accuracy_under_covariate_shift(seed):
    rng = np.random.default_rng(seed)
    base = rng.beta(2, 3, 20_000)
    cbpe = ConfidenceBasedEstimator(positive=True).fit(base, rng.random(base.size) < base)
    for a, b in ((2, 3), (5, 2), (1, 4), (0.5, 0.5)):  # same distribution, then covariate shifts
        s = rng.beta(a, b, 20_000)
        y = rng.random(s.size) < s  # still calibrated: P(y | s) = s
        est, real = cbpe.estimate(s), _realized(s, y)
        assert abs(est["accuracy"] - real["accuracy"]) <= 0.02, (a, b)
        for k in ("precision", "recall", "f1"):
            assert abs(est[k] - real[k]) <= 0.03, (a, b, k)


def test_cbpe_calibration_fixes_miscalibrated_scores():
    # The model says s, the truth is P(y | s) = s**2; the fitted map must learn that.
    rng = np.random.default_rng(12)
    base = rng.random(20_000)
    cbpe = ConfidenceBasedEstimator(positive="1").fit(base, (rng.random(base.size) < base**2).astype(int))
    s = rng.beta(4, 2, 20_000)
    y = rng.random(s.size) < s**2
    est = cbpe.estimate(s)["accuracy"]
    naive = np.mean(np.where(s >= 0.5, s, 1 - s))  # CBPE without calibration
    assert abs(est - np.mean((s >= 0.5) == y)) <= 0.02
    assert abs(naive - np.mean((s >= 0.5) == y)) > 0.05


def test_cbpe_batches_add_up_and_state_round_trip():
    rng = np.random.default_rng(13)
    s = rng.random(3000)
    cbpe = ConfidenceBasedEstimator(positive=1, calibration="isotonic").fit(s, (rng.random(s.size) < s).astype(int), n_bins=10)
    parts = [cbpe.expected_counts(c) for c in np.array_split(s, 4)]
    total = {k: sum(p[k] for p in parts) for k in ("tp", "fp", "fn", "tn", "n", "sparse")}
    assert ConfidenceBasedEstimator.metrics_from_counts(total) == pytest.approx(cbpe.estimate(s))
    assert total["sparse"] == 0  # 3000 uniform scores, 10 bins: about 300 rows a bin
    state = json.loads(json.dumps(cbpe.state_dict(), allow_nan=False))
    restored = ConfidenceBasedEstimator(positive=1, calibration="isotonic").load_state_dict(state)
    assert restored.estimate(s) == cbpe.estimate(s)
    assert restored.uses_isotonic and restored.calibration_p_value == cbpe.calibration_p_value
    with pytest.raises(ValueError):
        ConfidenceBasedEstimator(positive=0, calibration="isotonic").load_state_dict(state)
    with pytest.raises(ValueError):
        ConfidenceBasedEstimator(positive=1).load_state_dict(state)  # saved with calibration="isotonic"
    with pytest.raises(ValueError):
        ConfidenceBasedEstimator().estimate(s)  # not fitted
    empty = cbpe.estimate([])
    assert empty["n"] == 0 and empty["accuracy"] is None


# ---------------------------------------------------------------- package rules


@pytest.mark.parametrize("module", ["classification", "regression", "drop", "estimation"])
def test_docstring_examples_hold(module):
    import importlib

    mod = importlib.import_module(f"detectors.{module}")
    failed, attempted = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert failed == 0
    if module == "estimation":
        assert attempted > 0


def test_performance_names_one_module_per_concern():
    # detectors.performance is the one import path for the split modules
    from detectors import classification, drop, estimation, regression

    assert performance.ClassificationAccumulator is classification.ClassificationAccumulator
    assert performance.RegressionAccumulator is regression.RegressionAccumulator
    assert performance.performance_drop_test is drop.performance_drop_test
    assert performance.ConfidenceBasedEstimator is estimation.ConfidenceBasedEstimator


def test_binomial_drop_test_matches_scipy_binomtest():
    from scipy.stats import binomtest

    from detectors import performance_drop_test

    for value, n, base, margin in [(0.85, 1000, 0.90, 0.02), (0.70, 300, 0.75, 0.0), (0.5, 40, 0.9, 0.1)]:
        r = performance_drop_test("accuracy", base, value, n, margin=margin)
        expected = binomtest(round(value * n), n, p=base - margin, alternative="less").pvalue
        assert r["p_value"] == pytest.approx(expected, rel=1e-9)
