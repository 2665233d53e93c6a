"""Window detectors of labelled windows: realized performance, per-segment performance, group fairness, label drift.

They implement the protocol of :mod:`detectors.window` over a labelled batch: ``batch.n`` joined
predictions and ``batch.columns`` with ``label`` and ``pred`` (category names as an object array for
a classifier, floats for a regression), ``score`` (floats, NaN = none, or None) and one column of
category names per segment field or fairness attribute. Each one's result sections are its parts of a
performance window result (docs/DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .accumulate import CategoryCounter, NumericHistogram
from .classification import ClassificationAccumulator
from .drift import FeaturePolicy, compare_categorical, compare_numeric, decide
from .drop import PROPORTIONS, performance_drop_test
from .fairness import GroupAccumulator, fairness_report
from .profile import CategoricalProfile
from .regression import RegressionAccumulator

__all__ = ["FairnessGroups", "LabelDrift", "PerformanceDrops", "SegmentPerformance", "Sections"]


@dataclass(frozen=True)
class Sections:
    """A labelled detector's typed result: its sections of the performance window result, JSON-safe."""

    parts: dict

    def sections(self) -> dict:
        return self.parts


def _check_twin(a, b) -> None:
    if type(a) is not type(b) or a.key != b.key:
        raise TypeError(f"cannot merge {type(b).__name__} {b.key!r} into {type(a).__name__} {a.key!r}")


class _Drops:
    """Metric values and one-sided drop tests of an accumulator against the baseline's metrics."""

    def __init__(self, task: str, positive, metrics: tuple, reference: dict, margin: float, alpha: float):
        self.task = task
        self.positive = positive
        self.metrics = tuple(metrics)
        self.reference = reference
        self.margin = margin
        self.alpha = alpha

    def accumulator(self):
        if self.task == "classification":
            return ClassificationAccumulator(positive=self.positive)
        return RegressionAccumulator()

    def update(self, acc, labels, preds, scores=None) -> None:
        if self.task == "classification":
            acc.update(labels, preds, scores)
        else:
            acc.update(labels, preds)

    def values(self, acc) -> dict:
        return {k: v for k, v in acc.metrics().items() if k in self.metrics or k == "n"}

    def drops(self, acc) -> dict:
        values = acc.metrics()
        errs = acc.std_errors()
        out = {}
        for metric in self.metrics:
            base = self.reference.get(metric)
            value = values.get(metric)
            n = values.get("n") or 0
            if metric in ("precision", "recall") and self.task == "classification" and self.positive is not None:
                n = self._denominator(acc, metric)
            if base is None or value is None:
                continue
            if metric not in PROPORTIONS and not errs.get(metric):
                continue  # no standard error (ECE): reported, never tested
            out[metric] = performance_drop_test(metric, base, value, n, margin=self.margin,
                                                std_err=errs.get(metric), alpha=self.alpha)
        return out

    def _denominator(self, acc, metric: str) -> int:
        labels = [str(x) for x in acc.labels]
        cm = np.asarray(acc.confusion_matrix)
        if self.positive not in labels:
            return 0
        k = labels.index(self.positive)
        return int(cm[:, k].sum()) if metric == "precision" else int(cm[k, :].sum())


class PerformanceDrops(_Drops):
    """The window's metrics and their drop tests against the baseline's performance.

    Parameters
    ----------
    task : {"classification", "regression"}
    positive : str or None
        The positive class of a binary classifier (score metrics need it).
    metrics : tuple of str
        The metrics reported and tested.
    reference : dict
        The baseline's metric values.
    margin, alpha : float
        The drop test's tolerated drop and level.
    """

    key = "acc"

    def __init__(self, task, positive, metrics, reference, margin=0.0, alpha=0.05):
        super().__init__(task, positive, metrics, reference, margin, alpha)
        self.acc = self.accumulator()

    def fresh(self) -> "PerformanceDrops":
        return PerformanceDrops(self.task, self.positive, self.metrics, self.reference, self.margin, self.alpha)

    def update(self, batch) -> "PerformanceDrops":
        cols = batch.columns
        scores = cols.get("score") if self.task == "classification" and self.positive is not None else None
        super().update(self.acc, cols["label"], cols["pred"], scores)
        return self

    def merge(self, other: "PerformanceDrops") -> "PerformanceDrops":
        _check_twin(self, other)
        self.acc.merge(other.acc)
        return self

    def result(self, context) -> Sections:
        return Sections({"task": self.task, "metrics": self.values(self.acc),
                         "baseline": {k: self.reference.get(k) for k in self.metrics}, "drops": self.drops(self.acc)})

    def state_dict(self) -> dict:
        return self.acc.state_dict()

    def load_state_dict(self, state: dict) -> "PerformanceDrops":
        self.acc.load_state_dict(state)
        return self


class SegmentPerformance(_Drops):
    """Metrics and drop tests within each segment value (the baseline's top values; the rest "other").

    ``fields`` maps each segment field to the values the baseline knows; the other parameters are
    :class:`PerformanceDrops`'.
    """

    key = "by_segment"

    def __init__(self, task, positive, metrics, reference, fields: dict, margin=0.0, alpha=0.05):
        super().__init__(task, positive, metrics, reference, margin, alpha)
        self.fields = fields
        self.by_segment: dict[str, dict] = {f: {} for f in fields}

    def fresh(self) -> "SegmentPerformance":
        return SegmentPerformance(self.task, self.positive, self.metrics, self.reference, self.fields, self.margin,
                                  self.alpha)

    def _acc(self, field: str, value: str):
        acc = self.by_segment[field].get(value)
        if acc is None:
            acc = self.by_segment[field][value] = self.accumulator()
        return acc

    def update(self, batch) -> "SegmentPerformance":
        cols = batch.columns
        labels, preds = cols["label"], cols["pred"]
        for field, known in self.fields.items():
            values = cols[field]
            for value in sorted(set(values.tolist()), key=str):
                mask = values == value
                name = value if value in known else "other"
                super().update(self._acc(field, name), labels[mask], preds[mask])
        return self

    def merge(self, other: "SegmentPerformance") -> "SegmentPerformance":
        _check_twin(self, other)
        for field, values in other.by_segment.items():
            for value, acc in values.items():
                self._acc(field, value).merge(acc)
        return self

    def result(self, context) -> Sections:
        return Sections({"segments": {
            field: {value: {"metrics": self.values(acc), "drops": self.drops(acc)} for value, acc in sorted(accs.items())}
            for field, accs in self.by_segment.items()}})

    def state_dict(self) -> dict:
        return {f: {v: a.state_dict() for v, a in accs.items()} for f, accs in self.by_segment.items()}

    def load_state_dict(self, state: dict) -> "SegmentPerformance":
        for field, accs in state.items():
            self.by_segment.setdefault(field, {})
            for value, s in accs.items():
                self._acc(field, value).load_state_dict(s)
        return self


class FairnessGroups:
    """Decisions and outcomes per group of each fairness attribute, and the fairness report of each.

    Parameters
    ----------
    favourable : str
        The favourable decision.
    attributes : dict
        Attribute -> the most groups kept by name (the rest pooled as "other").
    task : str
        Outcomes (labels) enter equalized odds for a classifier only.
    report : dict
        Keyword arguments of :func:`detectors.fairness.fairness_report` (group size, level, bounds).
    references : dict, optional
        Attribute -> the baseline's GroupAccumulator (the labelled data's group rates), for the gaps'
        widening beyond the baseline's.
    """

    key = "groups"

    def __init__(self, favourable, attributes: dict, task: str, report: dict, references: dict | None = None):
        self.favourable = favourable
        self.attributes = dict(attributes)
        self.task = task
        self.report = dict(report)
        self.references = dict(references or {})
        self.groups = {a: GroupAccumulator(favourable, max_groups=m) for a, m in self.attributes.items()}

    def fresh(self) -> "FairnessGroups":
        return FairnessGroups(self.favourable, self.attributes, self.task, self.report, self.references)

    def update(self, batch) -> "FairnessGroups":
        cols = batch.columns
        y_true = cols["label"] if self.task == "classification" else None
        for attr, acc in self.groups.items():
            acc.update(cols[attr], cols["pred"], y_true)
        return self

    def merge(self, other: "FairnessGroups") -> "FairnessGroups":
        _check_twin(self, other)
        for attr, acc in self.groups.items():
            acc.merge(other.groups[attr])
        return self

    def result(self, context) -> Sections:
        return Sections({"fairness": {attr: fairness_report(acc, reference=self.references.get(attr), **self.report)
                                      for attr, acc in self.groups.items()}})

    def state_dict(self) -> dict:
        return {a: g.state_dict() for a, g in self.groups.items()}

    def load_state_dict(self, state: dict) -> "FairnessGroups":
        for attr, s in state.items():
            # the window the checkpoint holds keeps the group cap it was counted with
            self.groups[attr] = GroupAccumulator(self.favourable, max_groups=int(s["max_groups"])).load_state_dict(s)
        return self


class LabelDrift:
    """Drift of the label's distribution against the baseline's (a family of one, at the window's level).

    Parameters
    ----------
    profile : NumericProfile or CategoricalProfile
        The baseline's label profile.
    min_events : int
        Fewer labels are reported as insufficient data.
    """

    key = "label_acc"

    def __init__(self, profile, min_events: int):
        self.profile = profile
        self.min_events = min_events
        if isinstance(profile, CategoricalProfile):
            self.acc = CategoryCounter(profile.categories, profile.other_categories)
        else:
            self.acc = NumericHistogram(profile.edges, profile.min, profile.max)

    def fresh(self) -> "LabelDrift":
        return LabelDrift(self.profile, self.min_events)

    def update(self, batch) -> "LabelDrift":
        labels = batch.columns["label"]
        self.acc.update(labels.tolist() if labels.dtype == object else labels)
        return self

    def merge(self, other: "LabelDrift") -> "LabelDrift":
        _check_twin(self, other)
        self.acc.merge(other.acc)
        return self

    def result(self, context) -> Sections:
        compare = compare_categorical if isinstance(self.profile, CategoricalProfile) else compare_numeric
        decided = decide({"label": compare(self.profile, self.acc, FeaturePolicy(min_events=self.min_events))},
                         alpha=context.alpha)
        return Sections({"label_drift": decided["label"]})

    def state_dict(self) -> dict:
        return self.acc.state_dict()

    def load_state_dict(self, state: dict) -> "LabelDrift":
        self.acc.load_state_dict(state)
        return self
