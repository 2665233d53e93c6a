"""compare_numeric, compare_categorical, decide and FeaturePolicy."""

import doctest
import json

import numpy as np
import pytest
from scipy import stats as ss

from detectors import (
    CategoricalProfile,
    CategoryCounter,
    FeaturePolicy,
    NumericHistogram,
    NumericProfile,
    compare_categorical,
    compare_numeric,
    decide,
)
from detectors import accumulate, drift, profile, stats

NUMERIC_KEYS = {
    "type", "drift", "status", "events", "missing_ratio", "out_of_range_ratio", "statistics",
    "ks_p_value", "ks_error_bound", "effect", "test", "difference_test",
}
CATEGORICAL_KEYS = {"type", "drift", "status", "events", "missing_ratio", "unseen_ratio", "statistics", "effect", "test",
                    "difference_test"}


def _walk(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from _walk(v)
    else:
        yield x


def assert_json_safe(result):
    json.dumps(result, allow_nan=False)
    for leaf in _walk(result):
        assert leaf is None or type(leaf) in (bool, int, float, str), type(leaf)


@pytest.fixture(scope="module")
def numeric_profile():
    return NumericProfile.fit(np.random.default_rng(0).normal(10, 2, 20_000))


def _hist(prof, x):
    return NumericHistogram(prof.edges, prof.min, prof.max).update(x)


# ---------------------------------------------------------------- compare_numeric


def test_compare_numeric_shape_and_values(numeric_profile):
    rng = np.random.default_rng(1)
    x = rng.normal(10.5, 2, 3_000)
    x[:30] = np.nan
    x[30:40] = 100.0
    result = compare_numeric(numeric_profile, _hist(numeric_profile, x), FeaturePolicy())
    assert set(result) == NUMERIC_KEYS
    assert set(result["statistics"]) == {"psi", "jensen_shannon", "wasserstein", "ks"}
    assert_json_safe(result)
    assert result["type"] == "numeric" and result["status"] == "ok" and result["drift"] is False
    assert result["events"] == 3_000
    assert result["missing_ratio"] == pytest.approx(30 / 3000)
    v = x[30:]
    assert result["out_of_range_ratio"] == pytest.approx(np.mean((v < numeric_profile.min) | (v > numeric_profile.max)))
    assert result["out_of_range_ratio"] >= 10 / 2970
    # A quarter-std shift (plus a few outliers) reads as about 0.25 std.
    assert result["statistics"]["wasserstein"] == pytest.approx(
        ss.wasserstein_distance(numeric_profile.reservoir, x[30:]) / numeric_profile.std, abs=0.1
    )
    assert 0.15 < result["statistics"]["wasserstein"] < 0.4
    effect = result["effect"]
    assert set(effect) == {"method", "value", "plug_in", "threshold", "ci"}
    assert effect["method"] == "wasserstein" and effect["threshold"] == 0.1
    assert effect["plug_in"] == pytest.approx(result["statistics"]["wasserstein"])
    # at 3,000 events the bias correction is small, and the interval holds the estimate
    assert effect["value"] == pytest.approx(effect["plug_in"], abs=0.01)
    assert effect["ci"][0] < effect["value"] < effect["ci"][1] and effect["ci"][1] - effect["ci"][0] < 0.3  # 10 outliers widen it
    assert result["test"]["method"] == "delta_method" and result["test"]["null"] == "effect <= threshold"
    assert result["test"]["p_value"] < 1e-6  # 0.25 std is far past 0.1 at this size
    assert result["difference_test"] == {"method": "ks", "p_value": result["ks_p_value"]}
    assert result["ks_p_value"] < 1e-6 and 0 < result["ks_error_bound"] <= 0.06


def test_compare_numeric_insufficient_data(numeric_profile):
    result = compare_numeric(numeric_profile, _hist(numeric_profile, np.full(50, 13.0)), FeaturePolicy(min_events=100))
    assert_json_safe(result)
    assert result["status"] == "insufficient_data" and result["drift"] is False
    assert result["test"]["p_value"] is None and result["ks_p_value"] is None
    assert result["statistics"]["wasserstein"] > 1  # still described
    decide({"f": result})
    assert result["drift"] is False and result["test"]["p_value_adjusted"] is None

    empty = compare_numeric(numeric_profile, _hist(numeric_profile, np.full(5, np.nan)))
    assert_json_safe(empty)
    assert empty["events"] == 5 and empty["missing_ratio"] == 1.0 and empty["out_of_range_ratio"] is None
    assert set(empty["statistics"].values()) == {None} and empty["effect"]["value"] is None


def test_compare_numeric_constant_baseline_has_no_std_scale():
    prof = NumericProfile.fit(np.zeros(1_000))
    result = compare_numeric(prof, _hist(prof, np.ones(500)))
    assert_json_safe(result)
    assert result["statistics"]["wasserstein"] is None
    assert result["statistics"]["ks"] == pytest.approx(1.0)
    ks_policy = compare_numeric(prof, _hist(prof, np.ones(500)), FeaturePolicy(effect_method="ks"))
    decide({"f": ks_policy})
    assert ks_policy["drift"] is True


def test_compare_numeric_chi2_test_option(numeric_profile):
    x = np.random.default_rng(2).normal(10, 2, 2_000)
    result = compare_numeric(numeric_profile, _hist(numeric_profile, x), FeaturePolicy(test="chi2"))
    p, q = numeric_profile.counts, _hist(numeric_profile, x).counts
    assert result["difference_test"]["method"] == "chi2"
    assert result["difference_test"]["p_value"] == pytest.approx(
        ss.chi2_contingency(np.vstack([p, q]), correction=False).pvalue)
    assert result["test"]["method"] == "delta_method"  # the decision's test follows the effect, not this option


def test_compare_numeric_rejects_foreign_histogram(numeric_profile):
    with pytest.raises(ValueError):
        compare_numeric(numeric_profile, NumericHistogram([0.0, 1.0], 0.0, 1.0).update(np.ones(200)))


# ---------------------------------------------------------------- compare_categorical


@pytest.fixture(scope="module")
def cat_profile():
    rng = np.random.default_rng(3)
    names = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)
    values = names[rng.choice(6, 20_000, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])].tolist()
    return CategoricalProfile.fit(values + [None] * 200, max_categories=4)


def _counter(prof, values):
    return CategoryCounter(prof.categories, prof.other_categories).update(values)


def test_compare_categorical_shape_and_values(cat_profile):
    values = ["a"] * 400 + ["b"] * 250 + ["c"] * 150 + ["d"] * 100 + ["e"] * 70 + ["f"] * 30 + [None] * 10
    result = compare_categorical(cat_profile, _counter(cat_profile, values), FeaturePolicy())
    assert set(result) == CATEGORICAL_KEYS
    assert set(result["statistics"]) == {"psi", "jensen_shannon", "chi2"}
    assert_json_safe(result)
    assert result["status"] == "ok" and result["events"] == 1010
    assert result["missing_ratio"] == pytest.approx(10 / 1010) and result["unseen_ratio"] == 0.0
    assert result["statistics"]["jensen_shannon"] < 0.03
    assert result["effect"]["method"] == "jensen_shannon" and result["effect"]["threshold"] == 0.05
    assert result["difference_test"]["method"] == "chi2" and result["difference_test"]["p_value"] > 0.01
    assert result["test"]["method"] == "noncentral_chi2" and result["test"]["p_value"] > 0.5
    # The difference test is chi-square homogeneity over [categories..., other] (unseen column empty).
    p = list(cat_profile.counts) + [cat_profile.other_count]
    q = [400, 250, 150, 100, 100]
    ref = ss.chi2_contingency(np.array([p, q]), correction=False)
    assert result["statistics"]["chi2"] == pytest.approx(ref.statistic)
    assert result["difference_test"]["p_value"] == pytest.approx(ref.pvalue)


def test_unseen_categories_are_drift_evidence(cat_profile):
    known = ["a"] * 380 + ["b"] * 250 + ["c"] * 150 + ["d"] * 100 + ["e"] * 70 + ["f"] * 30
    p = list(cat_profile.counts) + [cat_profile.other_count, 0]

    # Enough unseen values to expect >= 5 in both rows: the unseen column stands alone.
    result = compare_categorical(cat_profile, _counter(cat_profile, known + [f"new{i % 7}" for i in range(120)]))
    assert result["unseen_ratio"] == pytest.approx(120 / 1100)
    ref = ss.chi2_contingency(np.array([p, [380, 250, 150, 100, 100, 120]]), correction=False)
    assert ref.expected_freq.min() >= 5
    assert result["statistics"]["chi2"] == pytest.approx(ref.statistic)
    assert result["difference_test"]["p_value"] == pytest.approx(ref.pvalue, abs=1e-300)
    decide({"f": result})
    assert result["drift"] is True and result["effect"]["ci"][0] > 0.05  # 11% new mass: JS about 0.1

    # A small unseen column (40 values, 1.9 expected in the window row) is pooled into
    # another column: the difference shows, and JS sees the new mass, but the chi-square
    # limit behind the material test needs expected counts, so it sees the pooled 3.7-point
    # move, which is not shown to exceed 0.05 (the unseen-ratio data-quality check is the alarm
    # for new names).
    small = compare_categorical(cat_profile, _counter(cat_profile, known + ["new"] * 40))
    unpooled = ss.chi2_contingency(np.array([p, [380, 250, 150, 100, 100, 40]]), correction=False)
    assert small["statistics"]["chi2"] < unpooled.statistic / 10
    assert small["statistics"]["jensen_shannon"] > 0.1
    assert small["difference_test"]["p_value"] < 0.01
    decide({"f": small})
    assert small["drift"] is False and small["effect"]["value"] < 0.05


def test_compare_categorical_policy_checks(cat_profile):
    with pytest.raises(ValueError):
        compare_categorical(cat_profile, _counter(cat_profile, ["a"]), FeaturePolicy(effect_method="wasserstein"))
    with pytest.raises(ValueError):
        compare_categorical(cat_profile, _counter(cat_profile, ["a"]), FeaturePolicy(test="ks"))
    with pytest.raises(ValueError):
        compare_categorical(cat_profile, CategoryCounter(["a", "b"]).update(["a"]))
    small = compare_categorical(cat_profile, _counter(cat_profile, ["a"] * 99 + [None] * 5))
    assert small["status"] == "insufficient_data" and small["test"]["p_value"] is None


# ---------------------------------------------------------------- decide


def _result(p_value, status="ok"):
    return {"status": status, "drift": False, "test": {"p_value": p_value, "p_value_adjusted": None, "alpha": None}}


def test_decide_is_holm_over_the_material_tests():
    results = {
        "shown_past_threshold": _result(1e-6),
        "not_shown": _result(0.02),
        "far_past": _result(1e-12),
        "too_few_events": _result(None, status="insufficient_data"),
        "near_the_line": _result(4e-3),
    }
    assert decide(results, alpha=0.01) is results
    # Holm over the four tested features: ranks 1e-12, 1e-6, 4e-3, 0.02 get factors 4, 3, 2, 1.
    assert [r["drift"] for r in results.values()] == [True, False, True, False, True]
    adjusted = {k: r["test"]["p_value_adjusted"] for k, r in results.items()}
    assert adjusted.pop("too_few_events") is None
    assert list(adjusted.values()) == pytest.approx([3e-6, 0.02, 4e-12, 8e-3], rel=1e-12)
    assert all(r["test"]["alpha"] == 0.01 for r in results.values())
    with pytest.raises(ValueError):
        decide(results, alpha=0)


def test_feature_policy_defaults_and_validation():
    assert FeaturePolicy().resolve("numeric") == ("wasserstein", 0.1, "ks")
    assert FeaturePolicy().resolve("categorical") == ("jensen_shannon", 0.05, "chi2")
    assert FeaturePolicy(effect_method="psi", effect_threshold=0.2).resolve("numeric") == ("psi", 0.2, "ks")
    assert FeaturePolicy(min_events=np.int64(5)).min_events == 5
    for bad in (dict(effect_method="hellinger"), dict(effect_threshold=-1), dict(effect_threshold=float("nan")),
                dict(test="t"), dict(min_events=0), dict(min_events=2.5)):
        with pytest.raises(ValueError):
            FeaturePolicy(**bad)
    with pytest.raises(ValueError):
        FeaturePolicy(effect_method="ks").resolve("categorical")


# ---------------------------------------------------------------- package rules


def test_docstring_examples_hold():
    for module in (stats, profile, accumulate, drift):
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert attempted > 0 and failed == 0, module.__name__


def test_compare_effect_is_the_decision_of_the_full_comparison(numeric_profile, cat_profile):
    from detectors import compare_effect

    rng = np.random.default_rng(21)
    for x in (rng.normal(10.3, 2, 800), rng.normal(10, 2, 50)):
        hist = _hist(numeric_profile, x)
        full, light = compare_numeric(numeric_profile, hist), compare_effect(numeric_profile, hist)
        assert light["status"] == full["status"] and light["effect"]["value"] == full["effect"]["value"]
        assert light["test"]["p_value"] == full["test"]["p_value"]
    values = ["a"] * 300 + ["b"] * 300 + ["c"] * 100 + ["new"] * 30
    counter = _counter(cat_profile, values)
    full, light = compare_categorical(cat_profile, counter), compare_effect(cat_profile, counter)
    assert light["effect"]["value"] == full["effect"]["value"] and light["test"]["p_value"] == full["test"]["p_value"]


def test_compare_effects_is_compare_effect_for_each_window(numeric_profile):
    from detectors import compare_effect, compare_effects

    rng = np.random.default_rng(22)
    hists = [_hist(numeric_profile, rng.normal(10 + 0.2 * k, 2, size)) for k, size in enumerate((50, 400, 3000))]
    hists.append(_hist(numeric_profile, np.full(3, np.nan)))  # no values at all
    for one, many in zip([compare_effect(numeric_profile, h) for h in hists], compare_effects(numeric_profile, hists)):
        assert one["status"] == many["status"]
        for part in ("effect", "test"):
            for key, value in one[part].items():
                assert many[part][key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value)
