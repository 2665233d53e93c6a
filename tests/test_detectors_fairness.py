"""GroupAccumulator and fairness_report on hand-built tables and seeded scenarios."""

import doctest
import json
import math

import numpy as np
import pytest
from scipy import stats as ss

from detectors import DEFAULT_MIN_GROUP_SIZE, GroupAccumulator, fairness_report
from detectors import fairness


def two_proportion_p(x1, n1, x2, n2):
    """Two-sided pooled two-proportion z-test, written out."""
    pooled = (x1 + x2) / (n1 + n2)
    z = (x2 / n2 - x1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return math.erfc(abs(z) / math.sqrt(2))


def ratio_p(x1, n1, x2, n2, bound=0.8, k=2):
    """One-sided test of H0 "x1/n1 >= bound * x2/n2" (unpooled), Bonferroni over k (k - 1), written out."""
    p1, p2 = x1 / n1, x2 / n2
    z = (p1 - bound * p2) / math.sqrt(p1 * (1 - p1) / n1 + bound**2 * p2 * (1 - p2) / n2)
    return min(1.0, 0.5 * math.erfc(-z / math.sqrt(2)) * k * (k - 1))


def hand_table():
    # group a: pred y y n n, true y n y n -> TP1 FP1 FN1 TN1
    # group b: pred y n n n n, true y y n n n -> TP1 FN1 TN3
    groups = ["a"] * 4 + ["b"] * 5
    y_pred = ["y", "y", "n", "n"] + ["y", "n", "n", "n", "n"]
    y_true = ["y", "n", "y", "n"] + ["y", "y", "n", "n", "n"]
    return GroupAccumulator("y").update(groups, y_pred, y_true)


def test_counts_by_hand():
    acc = hand_table()
    assert acc.counts() == {
        "a": {"n": 4, "positive": 2, "labelled": 4, "tp": 1, "fp": 1, "tn": 1, "fn": 1, "correct": 2},
        "b": {"n": 5, "positive": 1, "labelled": 5, "tp": 1, "fp": 0, "tn": 3, "fn": 1, "correct": 4},
    }


def test_report_metrics_by_hand():
    r = fairness_report(hand_table(), min_group_size=1)
    a, b = r["groups"]["a"], r["groups"]["b"]
    assert (a["positive_rate"], a["tpr"], a["fpr"], a["accuracy"]) == (0.5, 0.5, 0.5, 0.5)
    assert (b["positive_rate"], b["tpr"], b["fpr"], b["accuracy"]) == (0.2, 0.5, 0.0, 0.8)
    o = r["overall"]
    assert o["demographic_parity_difference"] == pytest.approx(0.3)
    assert o["demographic_parity_ratio"] == pytest.approx(0.4)
    assert o["equal_opportunity_difference"] == 0.0
    assert o["equalized_odds_difference"] == pytest.approx(0.5)  # max(TPR gap 0, FPR gap 0.5)
    assert (o["min_group"], o["max_group"]) == ("b", "a")
    # k = 2 groups -> 2 ordered pairs
    assert o["p_value"] == pytest.approx(ratio_p(1, 5, 2, 4))
    assert r["alert"] is False  # ratio 0.4 < 0.8, but 9 rows are no evidence
    assert r["alerts"] == {"demographic_parity": False, "equalized_odds": False}
    # FPR gap 0.5 against the 0.1 bound: b's FPR of 0/3 counts as half a count in the standard error
    q1, q2 = 0.5 / 3, 0.5
    z = (0.5 - 0.1) / math.sqrt(q1 * (1 - q1) / 3 + q2 * (1 - q2) / 2)
    fpr_p = 0.5 * math.erfc(z / math.sqrt(2)) * 2
    assert o["equalized_odds_p_value"] == pytest.approx(min(1.0, 2 * fpr_p))
    assert r["insufficient"] == []
    json.dumps(r, allow_nan=False)


def test_undefined_rates_are_none():
    acc = GroupAccumulator("y").update(["a", "a", "b"], ["y", "n", "n"])  # no labels at all
    r = fairness_report(acc, min_group_size=1)
    assert r["groups"]["a"]["tpr"] is None and r["groups"]["a"]["accuracy"] is None
    assert r["overall"]["equal_opportunity_difference"] is None and r["overall"]["equalized_odds_difference"] is None
    assert r["overall"]["demographic_parity_ratio"] == 0.0
    none_positive = fairness_report(GroupAccumulator("y").update(["a", "b"], ["n", "n"]), min_group_size=1)
    assert none_positive["overall"]["demographic_parity_ratio"] is None and none_positive["alert"] is False
    empty = fairness_report(GroupAccumulator("y"))
    assert empty["groups"] == {} and empty["overall"]["demographic_parity_difference"] is None and not empty["alert"]


def test_default_minimum_group_size_rule():
    # smallest n with 1.96 * sqrt(0.5 * 0.5 / n) <= 0.05: (1.959964 * 0.5 / 0.05)^2 = 384.15 -> 385
    z = ss.norm.ppf(0.975)
    n = math.ceil((z * 0.5 / 0.05) ** 2)
    assert DEFAULT_MIN_GROUP_SIZE == n == 385
    assert z * math.sqrt(0.25 / 385) <= 0.05 < z * math.sqrt(0.25 / 384)


def _scenario(rng, sizes_rates):
    groups, preds = [], []
    for name, (n, rate) in sizes_rates.items():
        groups += [name] * n
        preds += np.where(rng.random(n) < rate, "approve", "deny").tolist()
    order = rng.permutation(len(groups))
    return np.array(groups)[order], np.array(preds)[order]


@pytest.mark.parametrize("seed", range(5))
def test_parity_drop_alerts_equal_rates_do_not(seed):
    rng = np.random.default_rng(seed)
    g, p = _scenario(rng, {"A": (3000, 0.5), "B": (3000, 0.5), "C": (3000, 0.3)})  # ratio 0.6
    r = fairness_report(GroupAccumulator("approve").update(g, p))
    assert r["alert"] is True and r["overall"]["min_group"] == "C"
    assert r["overall"]["demographic_parity_ratio"] == pytest.approx(0.6, abs=0.05)
    g, p = _scenario(rng, {"A": (3000, 0.5), "B": (3000, 0.5), "C": (3000, 0.5)})
    r = fairness_report(GroupAccumulator("approve").update(g, p))
    assert r["alert"] is False and r["overall"]["demographic_parity_ratio"] > 0.9


def test_tiny_group_is_insufficient_and_never_alerts():
    rng = np.random.default_rng(7)
    g, p = _scenario(rng, {"A": (3000, 0.5), "B": (3000, 0.5), "tiny": (50, 0.1)})
    r = fairness_report(GroupAccumulator("approve").update(g, p))
    assert r["insufficient"] == ["tiny"] and r["groups"]["tiny"]["sufficient"] is False
    assert r["groups"]["tiny"]["positive_rate"] == pytest.approx(0.1, abs=0.1)  # still reported
    assert r["alert"] is False and "tiny" not in (r["overall"]["min_group"], r["overall"]["max_group"])
    assert r["overall"]["demographic_parity_ratio"] > 0.9


def test_the_alert_needs_the_ratio_shown_under_the_bound():
    # 40/400 = 0.10 vs 28/400 = 0.07: ratio 0.7 < 0.8, but not shown to be under 0.8
    acc = GroupAccumulator(1).update(["x"] * 400 + ["y"] * 400, [1] * 40 + [0] * 360 + [1] * 28 + [0] * 372)
    r = fairness_report(acc, min_group_size=385)
    assert r["overall"]["demographic_parity_ratio"] == pytest.approx(0.7)
    assert r["overall"]["p_value"] == pytest.approx(ratio_p(28, 400, 40, 400))
    assert r["overall"]["p_value"] > 0.1 and r["alert"] is False
    # 10x the rows: the groups differ significantly (two-proportion p 1e-6), the bound is not yet crossed
    def rows(k):
        return GroupAccumulator(1).update(["x"] * 400 * k + ["y"] * 400 * k,
                                          [1] * 40 * k + [0] * 360 * k + [1] * 28 * k + [0] * 372 * k)
    assert two_proportion_p(280, 4000, 400, 4000) < 1e-5
    assert fairness_report(rows(10))["alert"] is False
    assert fairness_report(rows(100))["alerts"]["demographic_parity"] is True


@pytest.mark.parametrize("true_ratio, most", [(0.85, 0.01), (0.8, 0.05)])
def test_a_ratio_at_or_over_the_bound_rarely_alerts(true_ratio, most):
    """The harm the old rule had: a true ratio of 0.85 dips under 0.8 in single windows and pages."""
    rng = np.random.default_rng(12)
    n, windows = 1500, 2000
    top = rng.binomial(n, 0.4, windows)
    low = rng.binomial(n, 0.4 * true_ratio, windows)
    alerts, dips = 0, 0
    for x_low, x_top in zip(low, top):
        acc = GroupAccumulator(1).update(["a"] * n + ["b"] * n, [1] * x_top + [0] * (n - x_top) + [1] * x_low
                                         + [0] * (n - x_low))
        r = fairness_report(acc)
        alerts += r["alerts"]["demographic_parity"]
        dips += r["overall"]["demographic_parity_ratio"] < 0.8
    assert alerts / windows <= most
    if true_ratio == 0.85:
        assert dips / windows > 0.05  # the point estimate is under the bound in many windows


def test_equalized_odds_alerts_on_a_tpr_gap_past_the_bound():
    rng = np.random.default_rng(13)
    n = 6000
    groups = np.repeat(["a", "b"], n)
    y_true = np.where(rng.random(2 * n) < 0.5, "y", "n")
    tpr = np.repeat([0.8, 0.55], n)  # b's qualified applicants are approved far less often: gap 0.25
    y_pred = np.where(y_true == "y", np.where(rng.random(2 * n) < tpr, "y", "n"),
                      np.where(rng.random(2 * n) < 0.2, "y", "n"))
    r = fairness_report(GroupAccumulator("y").update(groups, y_pred, y_true))
    assert r["overall"]["equalized_odds_difference"] == pytest.approx(0.25, abs=0.04)
    assert r["alerts"] == {"demographic_parity": r["alerts"]["demographic_parity"], "equalized_odds": True}
    assert r["overall"]["equalized_odds_p_value"] < 1e-6
    # a gap of 0.05 stays quiet; and no bound, no alert
    tpr = np.repeat([0.8, 0.75], n)
    y_pred = np.where(y_true == "y", np.where(rng.random(2 * n) < tpr, "y", "n"),
                      np.where(rng.random(2 * n) < 0.2, "y", "n"))
    quiet = fairness_report(GroupAccumulator("y").update(groups, y_pred, y_true))
    assert quiet["alerts"]["equalized_odds"] is False and quiet["overall"]["equalized_odds_p_value"] > 0.5
    off = fairness_report(GroupAccumulator("y").update(groups, y_pred, y_true), max_equalized_odds_difference=None)
    assert off["overall"]["equalized_odds_p_value"] is None


def test_bonferroni_over_pairs():
    acc = GroupAccumulator("y")
    for name, pos in (("a", 200), ("b", 180), ("c", 170)):
        acc.update([name] * 400, ["y"] * pos + ["n"] * (400 - pos))
    r = fairness_report(acc)
    assert r["overall"]["p_value"] == pytest.approx(ratio_p(170, 400, 200, 400, k=3))


def test_tpr_fpr_eligibility_uses_their_own_denominators():
    rng = np.random.default_rng(8)
    n = 2000
    groups = np.repeat(["a", "b"], n)
    y_true = np.where(rng.random(2 * n) < np.repeat([0.5, 0.1], n), "y", "n")  # b has ~200 actual positives
    y_pred = np.where(rng.random(2 * n) < 0.4, "y", "n")
    r = fairness_report(GroupAccumulator("y").update(groups, y_pred, y_true))
    assert r["overall"]["equal_opportunity_difference"] is None  # b's TPR rests on < 385 positives
    assert r["overall"]["equalized_odds_difference"] is None
    fpr = {k: r["groups"][k]["fpr"] for k in "ab"}
    assert r["groups"]["b"]["tpr"] is not None and fpr["a"] is not None
    r1 = fairness_report(GroupAccumulator("y").update(groups, y_pred, y_true), min_group_size=100)
    tpr = {k: r1["groups"][k]["tpr"] for k in "ab"}
    assert r1["overall"]["equal_opportunity_difference"] == pytest.approx(abs(tpr["a"] - tpr["b"]))
    assert r1["overall"]["equalized_odds_difference"] == pytest.approx(max(abs(tpr["a"] - tpr["b"]), abs(fpr["a"] - fpr["b"])))


def test_group_cap_missing_and_unlabelled_rows():
    acc = GroupAccumulator("y", max_groups=2)
    acc.update(["g1", "g2", "g3", "g4", None, "g1"], ["y", "n", "y", "y", "y", None], ["y", None, "n", "y", "y", "y"])
    c = acc.counts()
    assert acc.groups == ["g1", "g2", "other"] and acc.missing == 2
    assert c["other"] == {"n": 2, "positive": 2, "labelled": 2, "tp": 1, "fp": 1, "tn": 0, "fn": 0, "correct": 1}
    assert c["g2"]["labelled"] == 0 and c["g2"]["n"] == 1


def test_state_round_trip():
    acc = hand_table()
    state = json.loads(json.dumps(acc.state_dict()))
    restored = GroupAccumulator("y").load_state_dict(state)
    assert restored.counts() == acc.counts()
    restored.update(["c"], ["y"])
    assert restored.groups == ["a", "b", "c"]
    with pytest.raises(ValueError):
        GroupAccumulator("n").load_state_dict(state)
    with pytest.raises(ValueError):
        GroupAccumulator("y", max_groups=0)
    with pytest.raises(ValueError):
        fairness_report(acc, min_group_size=0)


def test_docstring_examples_hold():
    failed, attempted = doctest.testmod(fairness, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_a_gap_that_widens_beyond_the_baselines_alerts():
    rng = np.random.default_rng(14)

    def acc(rate_b, n=4000):
        g, p = _scenario(rng, {"A": (n, 0.5), "B": (n, rate_b)})
        return GroupAccumulator("approve").update(g, p)

    reference = acc(0.35, n=20_000)  # the model already had a gap of 0.15 on validation data
    same = fairness_report(acc(0.35), reference=reference, max_gap_widening=0.05)
    assert same["overall"]["baseline_gaps"]["demographic_parity_difference"] == pytest.approx(0.15, abs=0.02)
    assert same["alerts"]["widened"] is False and same["overall"]["widened_p_value"] > 0.5
    wider = fairness_report(acc(0.2), reference=reference, max_gap_widening=0.05)  # gap 0.3: 0.15 wider
    assert wider["alerts"]["widened"] is True and wider["alert"] is True
    assert "widened" not in fairness_report(acc(0.2))["alerts"]  # off without a reference
