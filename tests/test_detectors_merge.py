"""Partial accumulators merge into the whole: counts exactly, moments up to float rounding (issue 9's partials)."""

import numpy as np
import pytest

from detectors import ClassificationAccumulator, GroupAccumulator, RegressionAccumulator


def split(n, parts, seed):
    """A random owner per row (as partitions would assign them)."""
    return np.random.default_rng(seed).integers(0, parts, size=n)


def cells(acc):
    """Confusion cells by (true, predicted) name: independent of the order classes were met in."""
    cm, names = acc.confusion_matrix, acc.labels
    return {(names[i], names[j]): int(cm[i, j]) for i in range(len(names)) for j in range(len(names)) if cm[i, j]}


def close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("parts", [2, 5])
def test_binary_classification_with_scores(parts):
    rng = np.random.default_rng(0)
    n = 20_000
    y = rng.integers(0, 2, n)
    score = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    score[rng.random(n) < 0.05] = np.nan
    pred = (score >= 0.5).astype(int)
    y_obj = y.astype(object)
    y_obj[rng.random(n) < 0.01] = None  # missing labels
    whole = ClassificationAccumulator(positive=1).update(y_obj, pred, score)
    owner = split(n, parts, parts)
    accs = [ClassificationAccumulator(positive=1) for _ in range(parts)]
    for i, acc in enumerate(accs):
        rows = np.flatnonzero(owner == i)[::-1]  # another order too
        for chunk in np.array_split(rows, 3):
            acc.update(y_obj[chunk], pred[chunk], score[chunk])
    merged = accs[0]
    for acc in accs[1:]:
        assert merged.merge(acc) is merged
    a, b = whole.state_dict(), merged.state_dict()
    assert cells(whole) == cells(merged)
    for key in ("correct", "missing", "pos_hist", "neg_hist", "cal_n", "cal_pos"):
        assert a[key] == b[key], key
    close(whole.metrics(), merged.metrics())
    close(whole.std_errors(), merged.std_errors())


def test_multiclass_met_in_different_orders():
    rng = np.random.default_rng(1)
    classes = np.array(["cat", "dog", "emu", "gnu"])
    y, p = classes[rng.integers(0, 4, 5000)], classes[rng.integers(0, 4, 5000)]
    whole = ClassificationAccumulator().update(y, p)
    first = ClassificationAccumulator().update(y[2500:], p[2500:])  # meets the classes in another order
    second = ClassificationAccumulator().update(y[:2500], p[:2500])
    merged = first.merge(second)
    assert cells(whole) == cells(merged) and whole.n == merged.n == 5000
    close(whole.metrics(), merged.metrics())


def test_merge_refuses_another_configuration():
    with pytest.raises(ValueError):
        ClassificationAccumulator(positive=1).merge(ClassificationAccumulator(positive=0))
    with pytest.raises(TypeError):
        ClassificationAccumulator().merge(RegressionAccumulator())
    with pytest.raises(ValueError):
        GroupAccumulator("yes").merge(GroupAccumulator("no"))


@pytest.mark.parametrize("parts", [2, 4])
def test_regression(parts):
    rng = np.random.default_rng(2)
    n = 10_000
    y = 1e6 + rng.normal(0, 1, n)  # a large mean next to the spread: raw power sums would lose it all
    y[::97] = np.nan
    yhat = y + rng.normal(0, 0.1, n)
    whole = RegressionAccumulator().update(y, yhat)
    owner = split(n, parts, parts)
    accs = [RegressionAccumulator().update(y[owner == i], yhat[owner == i]) for i in range(parts)]
    merged = accs[0]
    for acc in accs[1:]:
        merged.merge(acc)
    assert merged.n == whole.n and merged.missing == whole.missing
    close(whole.metrics(), merged.metrics())
    close(whole.std_errors(), merged.std_errors())


@pytest.mark.parametrize("parts", [2, 3])
def test_fairness_groups(parts):
    rng = np.random.default_rng(3)
    n = 8000
    groups = np.array(["a", "b", "c", "d"], dtype=object)[rng.integers(0, 4, n)]
    groups[rng.random(n) < 0.01] = None
    pred = np.where(rng.random(n) < 0.4, "yes", "no")
    label = np.where(rng.random(n) < 0.5, "yes", "no").astype(object)
    label[rng.random(n) < 0.1] = None
    whole = GroupAccumulator("yes").update(groups, pred, label)
    owner = split(n, parts, parts + 10)
    accs = [GroupAccumulator("yes").update(groups[owner == i], pred[owner == i], label[owner == i])
            for i in range(parts)]
    merged = accs[-1]
    for acc in accs[:-1]:
        merged.merge(acc)
    assert merged.counts() == whole.counts() and merged.missing == whole.missing
