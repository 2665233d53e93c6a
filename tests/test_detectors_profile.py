"""Baseline profiles and window accumulators: conventions, numbers, round trips."""

import json
import timeit

import numpy as np
import pytest

from detectors import CategoricalProfile, CategoryCounter, NumericHistogram, NumericProfile


def _json_round_trip(d):
    return json.loads(json.dumps(d, allow_nan=False))


# ---------------------------------------------------------------- NumericProfile


def test_numeric_profile_summaries_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0, 1, 10_000)
    x[rng.random(x.size) < 0.05] = np.nan
    prof = NumericProfile.fit(x, bins=20)
    v = x[~np.isnan(x)]
    assert prof.n == v.size and prof.missing == x.size - v.size
    assert prof.missing_ratio == pytest.approx((x.size - v.size) / x.size)
    assert (prof.min, prof.max) == (v.min(), v.max())
    assert prof.mean == pytest.approx(v.mean(), rel=1e-12)
    assert prof.std == pytest.approx(v.std(), rel=1e-12)
    expected = np.quantile(v, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    assert [prof.quantiles[k] for k in ("p01", "p05", "p25", "p50", "p75", "p95", "p99")] == pytest.approx(expected)
    assert prof.edges.size == 19 and prof.counts.size == 20
    # Equal-mass bins on continuous data.
    assert prof.counts.min() >= v.size // 20 - 1 and prof.counts.max() <= v.size // 20 + 1


def test_numeric_profile_bin_convention():
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(0, 3, 5_000))
    prof = NumericProfile.fit(x, bins=10)
    edges = np.concatenate([[-np.inf], prof.edges, [np.inf]])
    expected = [np.sum((x > edges[i]) & (x <= edges[i + 1])) for i in range(edges.size - 1)]
    assert prof.counts.tolist() == expected
    sums = [x[(x > edges[i]) & (x <= edges[i + 1])].sum() for i in range(edges.size - 1)]
    assert prof.sums == pytest.approx(sums)


def test_numeric_profile_deduplicates_edges_for_discrete_data():
    x = np.array([0.0] * 700 + [1.0] * 250 + [5.0] * 50)
    prof = NumericProfile.fit(x, bins=20)
    # The 0.95 quantile is 1.0 (F(1) = 0.95 exactly), so 5.0 sits alone in the open top bin.
    assert prof.edges.tolist() == [0.0, 1.0]
    assert prof.counts.tolist() == [700, 250, 50]
    constant = NumericProfile.fit(np.full(100, 3.0))
    assert constant.edges.tolist() == [3.0] and constant.std == 0.0


def test_numeric_profile_reservoir_is_seeded_and_bounded():
    x = np.arange(10_000, dtype=float)
    a = NumericProfile.fit(x, reservoir_size=500, seed=7)
    b = NumericProfile.fit(x, reservoir_size=500, seed=7)
    c = NumericProfile.fit(x, reservoir_size=500, seed=8)
    assert a.reservoir.size == 500 and np.unique(a.reservoir).size == 500
    assert np.isin(a.reservoir, x).all()
    assert np.array_equal(a.reservoir, b.reservoir) and not np.array_equal(a.reservoir, c.reservoir)
    assert 4000 < a.reservoir.mean() < 6000  # uniform, not a head or tail slice
    assert NumericProfile.fit(x[:10], reservoir_size=500).reservoir.size == 10


def test_numeric_profile_round_trip():
    rng = np.random.default_rng(2)
    x = rng.gamma(2, 2, 3_000)
    x[:30] = np.nan
    prof = NumericProfile.fit(x)
    back = NumericProfile.from_dict(_json_round_trip(prof.to_dict()))
    assert back.to_dict() == prof.to_dict()
    assert np.array_equal(back.edges, prof.edges) and back.counts.dtype == np.int64
    with pytest.raises(ValueError):
        NumericProfile.from_dict({**prof.to_dict(), "n": prof.n + 1})


def test_numeric_profile_of_all_missing_is_json_safe():
    prof = NumericProfile.fit(np.full(10, np.nan))
    d = _json_round_trip(prof.to_dict())
    assert d["n"] == 0 and d["missing"] == 10 and d["mean"] is None and d["quantiles"]["p50"] is None
    assert NumericProfile.from_dict(d).missing_ratio == 1.0


# ---------------------------------------------------------------- CategoricalProfile


def test_categorical_profile_top_categories_and_other():
    values = ["a"] * 50 + ["b"] * 30 + ["c"] * 30 + ["d"] * 5 + ["e"] * 2 + [None] * 3
    prof = CategoricalProfile.fit(values, max_categories=3)
    assert prof.categories == ["a", "b", "c"]  # b and c tie: by name
    assert prof.counts.tolist() == [50, 30, 30]
    assert prof.other_count == 7 and prof.other_categories == ["d", "e"]
    assert prof.n == 117 and prof.missing == 3
    assert prof.missing_ratio == pytest.approx(3 / 120)


def test_categorical_profile_compares_values_as_str():
    values = np.array([True, False, True, 1, "1", None, float("nan"), 2], dtype=object)
    prof = CategoricalProfile.fit(values)
    counts = dict(zip(prof.categories, prof.counts.tolist()))
    # True is not filed under 1 even though True == 1 in Python.
    assert counts == {"True": 2, "False": 1, "1": 2, "2": 1}
    assert prof.missing == 2


def test_categorical_profile_bounds_other_categories():
    values = [f"c{i:05d}" for i in range(10_100)] + ["top"] * 5
    prof = CategoricalProfile.fit(values, max_categories=1)
    assert prof.categories == ["top"]
    assert len(prof.other_categories) == 10_000 and prof.other_count == 10_100
    assert prof.other_categories == sorted(prof.other_categories)


def test_categorical_profile_round_trip():
    prof = CategoricalProfile.fit(["x", "y", "y", None, 3, True], max_categories=2)
    back = CategoricalProfile.from_dict(_json_round_trip(prof.to_dict()))
    assert back.to_dict() == prof.to_dict()
    with pytest.raises(ValueError):
        CategoricalProfile.from_dict({**prof.to_dict(), "type": "numeric"})


# ---------------------------------------------------------------- NumericHistogram


def test_numeric_histogram_matches_profile_binning_and_numpy():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 20_000)
    prof = NumericProfile.fit(base)
    x = rng.normal(0.3, 1.5, 7_000)
    x[::50] = np.nan
    x[1::97] = np.inf
    h = NumericHistogram(prof.edges, prof.min, prof.max)
    for chunk in np.array_split(x, 7):
        assert h.update(chunk) is h
    v = x[np.isfinite(x)]
    expected = np.bincount(np.searchsorted(prof.edges, v, side="left"), minlength=prof.edges.size + 1)
    assert h.counts.tolist() == expected.tolist()
    assert h.n == v.size and h.missing == x.size - v.size
    assert h.out_of_range == np.sum((v < prof.min) | (v > prof.max))
    assert (h.min, h.max) == (v.min(), v.max())
    assert h.sum == pytest.approx(v.sum(), rel=1e-12)
    assert h.sumsq == pytest.approx(np.sum(v**2), rel=1e-12)
    assert h.mean == pytest.approx(v.mean(), rel=1e-12)
    assert h.std == pytest.approx(v.std(), rel=1e-10)


def test_numeric_histogram_std_is_precise_for_a_large_mean():
    rng = np.random.default_rng(4)
    x = 1e9 + rng.normal(0, 1, 100_000)
    h = NumericHistogram([1e9], None, None)
    for chunk in np.array_split(x, 10):
        h.update(chunk)
    assert h.std == pytest.approx(x.std(), rel=1e-6)
    assert h.out_of_range == x.size  # an empty baseline has no range


def test_numeric_histogram_merge_equals_single_pass():
    rng = np.random.default_rng(5)
    x = rng.exponential(2, 9_000)
    edges = [0.5, 1.0, 2.0, 4.0]
    whole = NumericHistogram(edges, 0.0, 10.0).update(x)
    a = NumericHistogram(edges, 0.0, 10.0).update(x[:4000])
    b = NumericHistogram(edges, 0.0, 10.0).update(x[4000:])
    assert a.merge(b) is a
    assert a.counts.tolist() == whole.counts.tolist()
    assert a.out_of_range == whole.out_of_range and (a.min, a.max) == (whole.min, whole.max)
    assert a.mean == pytest.approx(whole.mean) and a.std == pytest.approx(whole.std)
    assert a.sums == pytest.approx(whole.sums)
    assert a.merge(NumericHistogram(edges, 0.0, 10.0)).n == whole.n
    with pytest.raises(ValueError):
        a.merge(NumericHistogram([0.5, 1.0], 0.0, 10.0))


def test_numeric_histogram_state_round_trip_and_reset():
    rng = np.random.default_rng(6)
    h = NumericHistogram([-1.0, 0.0, 1.0], -3.0, 3.0).update(rng.normal(size=1000))
    state = _json_round_trip(h.state_dict())
    g = NumericHistogram([-1.0, 0.0, 1.0], -3.0, 3.0).load_state_dict(state)
    more = rng.normal(size=500)
    h.update(more)
    g.update(more)
    assert g.state_dict() == h.state_dict()
    with pytest.raises(ValueError):
        NumericHistogram([-1.0, 0.0, 2.0], -3.0, 3.0).load_state_dict(state)
    h.reset()
    assert (h.n, h.missing, h.min, h.mean, h.std) == (0, 0, None, None, None)
    assert _json_round_trip(h.state_dict())["min"] is None


def test_numeric_histogram_rejects_bad_edges():
    with pytest.raises(ValueError):
        NumericHistogram([1.0, 1.0], 0.0, 2.0)
    with pytest.raises(ValueError):
        NumericHistogram([1.0], 2.0, 0.0)


# ---------------------------------------------------------------- CategoryCounter


def test_category_counter_counts_other_unseen_and_missing():
    c = CategoryCounter(["a", "b", "True"], other_categories=["z"], max_unseen=2)
    c.update(["a", "b", "a", None, "z", True, "new1", "new2", "new3", "new1", float("nan")])
    c.update(np.array(["new3", "a", None], dtype=object))
    assert c.counts.tolist() == [3, 1, 1]
    assert c.other == 1
    assert c.unseen == 5
    assert c.unseen_top == {"new1": 2, "new2": 1}  # full after two names; new3 only counted
    assert c.missing == 3 and c.n == 11


def test_category_counter_keeps_bool_and_int_apart():
    c = CategoryCounter(["True", "1", "0", "False"]).update([True, 1, 1, False, 0, 0, 0])
    assert c.counts.tolist() == [1, 2, 3, 1]


def test_category_counter_merge_and_state_round_trip():
    values = ["a", "b", "x", "y", None, "c", "a", "x"] * 10
    whole = CategoryCounter(["a", "b"], ["c"], max_unseen=1).update(values)
    a = CategoryCounter(["a", "b"], ["c"], max_unseen=1).update(values[:37])
    b = CategoryCounter(["a", "b"], ["c"], max_unseen=1).update(values[37:])
    a.merge(b)
    assert a.counts.tolist() == whole.counts.tolist()
    assert (a.other, a.unseen, a.missing, a.n) == (whole.other, whole.unseen, whole.missing, whole.n)
    assert len(a.unseen_top) == 1 and sum(a.unseen_top.values()) <= a.unseen
    state = _json_round_trip(whole.state_dict())
    back = CategoryCounter(["a", "b"], ["c"], max_unseen=1).load_state_dict(state)
    assert back.state_dict() == whole.state_dict()
    with pytest.raises(ValueError):
        CategoryCounter(["a", "c"], ["b"]).load_state_dict(state)
    with pytest.raises(ValueError):
        a.merge(CategoryCounter(["a"]))
    whole.reset()
    assert (whole.n, whole.unseen, whole.unseen_top) == (0, 0, {})


# ---------------------------------------------------------------- cost per row


def _per_row_seconds(fn, rows):
    return min(timeit.repeat(fn, number=3, repeat=5)) / 3 / rows


def test_updates_cost_well_under_a_microsecond_per_row():
    rng = np.random.default_rng(7)
    prof = NumericProfile.fit(rng.lognormal(size=50_000))
    x = rng.lognormal(size=100_000)
    x[rng.random(x.size) < 0.02] = np.nan
    h = NumericHistogram(prof.edges, prof.min, prof.max)
    assert _per_row_seconds(lambda: h.update(x), x.size) < 1e-6
    names = np.array([f"cat{i}" for i in range(40)], dtype=object)
    values = names[rng.integers(0, 40, 100_000)].tolist()
    c = CategoryCounter(names[:30].tolist(), names[30:35].tolist())
    assert _per_row_seconds(lambda: c.update(values), len(values)) < 1e-6


def test_grouped_updates_equal_one_update_per_group():
    """The per-segment windows' one-pass update is the per-group update, state for state."""
    from detectors import CategoricalProfile, CategoryCounter, NumericHistogram, NumericProfile

    rng = np.random.default_rng(0)
    prof = NumericProfile.fit(rng.normal(0, 1, 5000))
    x = rng.normal(0, 1.2, 3000)
    x[::50] = np.nan
    g = rng.integers(0, 4, 3000)
    grouped = [NumericHistogram(prof.edges, prof.min, prof.max) for _ in range(4)]
    single = [NumericHistogram(prof.edges, prof.min, prof.max) for _ in range(4)]
    NumericHistogram.update_groups(grouped, x, g)
    NumericHistogram.update_groups(grouped, x[:100], g[:100])
    for i in range(4):
        single[i].update(x[g == i]).update(x[:100][g[:100] == i])
        a, b = grouped[i].state_dict(), single[i].state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert np.allclose(a[key], b[key]), key
    values = rng.choice(np.array(["a", "b", "c", "zz", None], dtype=object), 3000).tolist()
    cprof = CategoricalProfile.fit(rng.choice(["a", "b", "c"], 1000).tolist())
    grouped = [CategoryCounter(cprof.categories, cprof.other_categories) for _ in range(4)]
    CategoryCounter.update_groups(grouped, values, g)
    for i in range(4):
        one = CategoryCounter(cprof.categories, cprof.other_categories).update([v for v, k in zip(values, g) if k == i])
        assert grouped[i].state_dict() == one.state_dict()
    mixed = [1, 1.0, True, None, "1"] * 10  # non-text values take the per-group path, with its naming rules
    grouped = [CategoryCounter(["1", "True"]) for _ in range(2)]
    CategoryCounter.update_groups(grouped, mixed, [0, 1] * 25)
    assert [c.state_dict() for c in grouped] == [
        CategoryCounter(["1", "True"]).update(mixed[k::2]).state_dict() for k in (0, 1)]
