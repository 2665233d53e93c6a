"""Window detectors: the one small protocol everything a window evaluates implements.

A window detector is built once per window from the baseline and its config section (by a
builder in ``monitor/registry.py``), sees every batch of the window, and turns what it holds into a
typed result when the window closes. Two partial windows of the same period (two workers, two
chunks of a replay) combine with :meth:`WindowDetector.merge`: exact for counts and histograms, so
the merged window evaluates as if one process had seen every event.

The protocol (River's ``base.DriftDetector`` and Alibi Detect's ``BaseDetector`` in spirit)::

    key                       the detector's entry in a checkpoint
    update(batch) -> self     add a decoded batch (``batch.columns``: name -> column; ``batch.n`` rows)
    merge(other) -> self      add another partial window of the same detector (same baseline and config)
    result(context) -> R      a typed result; ``R.sections()`` are its top-level parts of the window result
    state_dict() / load_state_dict(state) -> self
    fresh() -> detector       an empty twin for the next window

This module holds the univariate ones: :class:`FeatureDrift` (features and model outputs),
:class:`SegmentDrift` (feature drift within each segment value) and :class:`EstimatedPerformance`
(confidence-based performance estimates). Results stay typed until :meth:`sections` turns them
into JSON at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from .accumulate import CategoryCounter, NumericHistogram
from .drift import FeaturePolicy, compare_categorical, compare_effects, compare_numerics, decide
from .estimation import ConfidenceBasedEstimator
from .profile import CategoricalProfile

__all__ = [
    "EstimatedPerformance",
    "EstimatedPerformanceResult",
    "FeatureDrift",
    "FeatureDriftResult",
    "SegmentDrift",
    "SegmentDriftResult",
    "WindowContext",
    "WindowDetector",
    "distribution",
]

#: Unseen category names kept in a window result (the most frequent first).
MAX_UNSEEN_SHOWN = 10


@dataclass(frozen=True)
class WindowContext:
    """What a detector may know about the window it judges.

    Attributes
    ----------
    index : int
        The window's sequence number.
    events : int
        Valid events in the window.
    alpha : float
        The per-window test level (from ``drift.alpha`` or a false-page budget).
    """

    index: int
    events: int
    alpha: float


@runtime_checkable
class DetectorResult(Protocol):
    def sections(self) -> dict:
        """Top-level sections of the window result (JSON-safe)."""


@runtime_checkable
class WindowDetector(Protocol):
    """The window detector protocol (see the module docstring)."""

    key: str

    def update(self, batch) -> "WindowDetector": ...

    def merge(self, other: "WindowDetector") -> "WindowDetector": ...

    def result(self, context: WindowContext) -> DetectorResult: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> "WindowDetector": ...

    def fresh(self) -> "WindowDetector": ...


def _accumulator(profile):
    if isinstance(profile, CategoricalProfile):
        return CategoryCounter(profile.categories, profile.other_categories)
    return NumericHistogram(profile.edges, profile.min, profile.max)


def _accumulator_states(accumulators: dict) -> dict:
    return {name: acc.state_dict() for name, acc in accumulators.items()}


def _load_accumulators(accumulators: dict, states: dict) -> None:
    """Load each column's saved accumulator; a column no longer watched is passed over."""
    for name, state in states.items():
        if name in accumulators:
            accumulators[name].load_state_dict(state)


def _check_twin(a, b) -> None:
    if type(a) is not type(b) or a.key != b.key:
        raise TypeError(f"cannot merge {type(b).__name__} {b.key!r} into {type(a).__name__} {a.key!r}")


def distribution(acc) -> dict:
    """The window's counts on the baseline's bins or categories: what the report draws next to the baseline."""
    if isinstance(acc, CategoryCounter):
        top = sorted(acc.unseen_top.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_UNSEEN_SHOWN]
        return {"counts": acc.counts.tolist(), "other": acc.other, "unseen": acc.unseen,
                "unseen_top": dict(top), "missing": acc.missing}
    return {"counts": acc.counts.tolist(), "sums": acc.sums.tolist(), "missing": acc.missing,
            "out_of_range": acc.out_of_range, "min": acc.min, "max": acc.max, "mean": acc.mean, "std": acc.std}


# ---------------------------------------------------------------- feature and output drift


@dataclass(frozen=True)
class FeatureDriftResult:
    """Per-column drift of one window.

    Attributes
    ----------
    features : dict
        Feature name -> its comparison (statistics, effect with interval, material test, ``drift``,
        ``missing_ratio`` with the baseline's ``baseline_missing_ratio``, ``distribution``), Holm-corrected
        over the features.
    outputs : dict
        Role (``prediction``, ``score``, ``label``) -> the same for that column, a family of its own.
    drifted : list of str
        The drifting features, sorted.
    """

    features: dict
    outputs: dict
    drifted: list

    def sections(self) -> dict:
        return {"drifted": self.drifted, "features": self.features, **self.outputs}


class FeatureDrift:
    """Univariate drift of every monitored column: a histogram or category counts per column.

    Features form one family for the multiple-testing correction; the prediction, score and
    label are judged as a second family, so adding features never makes prediction drift
    harder to detect.

    Parameters
    ----------
    profiles : dict
        Column name -> its baseline profile (NumericProfile or CategoricalProfile).
    policies : dict
        Column name -> FeaturePolicy (effect method, threshold, minimum events).
    features : list of str
        Feature columns, in output order.
    outputs : dict
        Role -> column name of the model's outputs watched (may be empty).
    """

    key = "accumulators"  # its checkpoint entry, as before the protocol

    def __init__(self, profiles: dict, policies: dict, features: list[str], outputs: dict[str, str] | None = None):
        self.profiles = profiles
        self.policies = policies
        self.features = list(features)
        self.outputs = dict(outputs or {})
        self.names = self.features + [n for n in self.outputs.values() if n not in self.features]
        self._reset()

    def _reset(self) -> None:
        self.accumulators = {name: _accumulator(self.profiles[name]) for name in self.names}

    def fresh(self) -> "FeatureDrift":
        return FeatureDrift(self.profiles, self.policies, self.features, self.outputs)

    def update(self, batch) -> "FeatureDrift":
        for name, acc in self.accumulators.items():
            acc.update(batch.columns[name])
        return self

    def merge(self, other: "FeatureDrift") -> "FeatureDrift":
        _check_twin(self, other)
        for name, acc in self.accumulators.items():
            acc.merge(other.accumulators[name])
        return self

    def compare(self, name: str) -> dict:
        """One column's full comparison with the baseline (before the family's correction)."""
        return self.compare_all([name])[name]

    def compare_all(self, names: list[str]) -> dict:
        """:meth:`compare` of several columns; the numeric ones' material tests in one vectorized call."""
        numeric = [n for n in names if not isinstance(self.profiles[n], CategoricalProfile)]
        out = dict(zip(numeric, compare_numerics([(self.profiles[n], self.accumulators[n], self.policies.get(n))
                                                  for n in numeric])))
        for name in names:
            acc = self.accumulators[name]
            if name not in out:
                out[name] = compare_categorical(self.profiles[name], acc, self.policies.get(name) or FeaturePolicy())
            # the baseline's share beside the window's: only an increase is a data-quality problem
            out[name]["baseline_missing_ratio"] = self.profiles[name].missing_ratio
            out[name]["distribution"] = distribution(acc)
        return {name: out[name] for name in names}

    def result(self, context: WindowContext) -> FeatureDriftResult:
        features = decide(self.compare_all(self.features), alpha=context.alpha)
        present = {role: name for role, name in self.outputs.items() if name in self.accumulators}
        decided = decide(self.compare_all(list(present.values())), alpha=context.alpha)
        return FeatureDriftResult(features=features, outputs={role: decided[name] for role, name in present.items()},
                                  drifted=sorted(name for name, r in features.items() if r["drift"]))

    def state_dict(self) -> dict:
        return _accumulator_states(self.accumulators)

    def load_state_dict(self, state: dict) -> "FeatureDrift":
        _load_accumulators(self.accumulators, state)
        return self


# ---------------------------------------------------------------- segments


@dataclass(frozen=True)
class SegmentSummary:
    """Feature drift within one segment value (its own Holm family)."""

    events: int
    status: str  # "ok" or "insufficient_data"
    drifted: list
    effects: dict | None = None  # feature -> effect estimate (None while data are insufficient)

    def to_dict(self) -> dict:
        out = {"events": self.events, "status": self.status, "drifted": self.drifted}
        if self.effects is not None:
            out["effects"] = self.effects
        return out


@dataclass(frozen=True)
class SegmentDriftResult:
    """Field -> segment value -> :class:`SegmentSummary`."""

    segments: dict = field(default_factory=dict)

    def sections(self) -> dict:
        if not self.segments:
            return {}
        return {"segments": {f: {v: s.to_dict() for v, s in values.items()} for f, values in self.segments.items()}}


class _Segment:
    """The accumulators of one segment value."""

    __slots__ = ("events", "accumulators")

    def __init__(self, profiles: dict, names: list[str]):
        self.events = 0
        self.accumulators = {name: _accumulator(profiles[name]) for name in names}


class SegmentDrift:
    """Feature drift within each value of each segment field (the baseline's top values, the rest "other").

    Parameters
    ----------
    profiles, policies : dict
        As for :class:`FeatureDrift`.
    features : list of str
        The features judged within each segment value.
    names : list of str
        The columns accumulated per segment value (features first).
    fields : dict
        Segment field -> the values the baseline knows.
    min_events : int
        A segment value with fewer events is reported as ``insufficient_data``.
    segment_value : callable
        ``segment_value(value, known)``: the segment a raw value belongs to.
    """

    key = "segments"

    def __init__(self, profiles: dict, policies: dict, features: list[str], names: list[str], fields: dict,
                 min_events: int, segment_value):
        self.profiles = profiles
        self.policies = policies
        self.features = list(features)
        self.names = list(names)
        self.fields = fields
        self.min_events = min_events
        self.segment_value = segment_value
        self._reset()

    def _reset(self) -> None:
        self.by_segment: dict[str, dict[str, _Segment]] = {f: {} for f in self.fields}

    def fresh(self) -> "SegmentDrift":
        return SegmentDrift(self.profiles, self.policies, self.features, self.names, self.fields, self.min_events,
                            self.segment_value)

    def _segment(self, field_name: str, value: str) -> _Segment:
        seg = self.by_segment[field_name].get(value)
        if seg is None:
            seg = self.by_segment[field_name][value] = _Segment(self.profiles, self.names)
        return seg

    def update(self, batch) -> "SegmentDrift":
        """Each accumulator is updated for all segment values of a field in one pass."""
        if batch.n == 0:
            return self
        for field_name, known in self.fields.items():
            names = [self.segment_value(v, known) for v in batch.columns[field_name]]
            values = sorted(set(names))
            code = {v: i for i, v in enumerate(values)}
            groups = np.fromiter((code[v] for v in names), dtype=np.int64, count=len(names))
            segs = [self._segment(field_name, value) for value in values]
            for name in self.names:
                accs = [seg.accumulators[name] for seg in segs]
                kind = NumericHistogram if isinstance(accs[0], NumericHistogram) else CategoryCounter
                kind.update_groups(accs, batch.columns[name], groups)
            for seg, size in zip(segs, np.bincount(groups, minlength=len(segs)).tolist()):
                seg.events += size
        return self

    def merge(self, other: "SegmentDrift") -> "SegmentDrift":
        _check_twin(self, other)
        for field_name, values in other.by_segment.items():
            for value, theirs in values.items():
                mine = self._segment(field_name, value)
                mine.events += theirs.events
                for name, acc in mine.accumulators.items():
                    acc.merge(theirs.accumulators[name])
        return self

    def _summaries(self, values: dict, alpha: float) -> dict:
        """Every segment value of one field; each feature's tests run for all its values at once."""
        judged = [v for v, seg in sorted(values.items()) if seg.events >= self.min_events]
        per_value = {v: {} for v in judged}
        for name in self.features:
            results = compare_effects(self.profiles[name], [values[v].accumulators[name] for v in judged],
                                      self.policies.get(name))
            for v, r in zip(judged, results):
                per_value[v][name] = r
        out = {}
        for v, seg in sorted(values.items()):
            if v not in per_value:
                out[v] = SegmentSummary(events=seg.events, status="insufficient_data", drifted=[])
                continue
            features = decide(per_value[v], alpha=alpha)
            out[v] = SegmentSummary(events=seg.events, status="ok",
                                    drifted=sorted(name for name, r in features.items() if r["drift"]),
                                    effects={name: r["effect"]["value"] for name, r in features.items()})
        return out

    def result(self, context: WindowContext) -> SegmentDriftResult:
        return SegmentDriftResult({f: self._summaries(values, context.alpha) for f, values in self.by_segment.items()})

    def state_dict(self) -> dict:
        # the layout of the per-segment windows before the protocol, so older checkpoints load
        return {f: {v: {"events": seg.events, "accumulators": _accumulator_states(seg.accumulators)}
                    for v, seg in values.items()} for f, values in self.by_segment.items()}

    def load_state_dict(self, state: dict) -> "SegmentDrift":
        self._reset()
        for field_name, values in state.items():
            self.by_segment.setdefault(field_name, {})
            for value, sub in values.items():
                seg = self._segment(field_name, value)
                seg.events = int(sub["events"])
                _load_accumulators(seg.accumulators, sub["accumulators"])
        return self


# ---------------------------------------------------------------- estimated performance


@dataclass(frozen=True)
class EstimatedPerformanceResult:
    """Expected metrics of the window's unlabelled predictions (see :class:`ConfidenceBasedEstimator`)."""

    metrics: dict

    def sections(self) -> dict:
        return {"estimated_performance": self.metrics}


class EstimatedPerformance:
    """Confidence-based performance estimates: expected confusion counts summed over the window.

    Parameters
    ----------
    estimator : ConfidenceBasedEstimator
        Fitted on the labelled baseline.
    score : str
        The score column.
    threshold : float
        Score at or above which the prediction is the positive class.
    """

    key = "estimated"

    def __init__(self, estimator: ConfidenceBasedEstimator, score: str, threshold: float = 0.5):
        self.estimator = estimator
        self.score = score
        self.threshold = threshold
        self._reset()

    def _reset(self) -> None:
        self.counts = {"tp": 0.0, "fp": 0.0, "fn": 0.0, "tn": 0.0, "n": 0, "sparse": 0}

    def fresh(self) -> "EstimatedPerformance":
        return EstimatedPerformance(self.estimator, self.score, self.threshold)

    def update(self, batch) -> "EstimatedPerformance":
        if batch.n:
            for key, value in self.estimator.expected_counts(batch.columns[self.score], self.threshold).items():
                self.counts[key] += value
        return self

    def merge(self, other: "EstimatedPerformance") -> "EstimatedPerformance":
        _check_twin(self, other)
        for key, value in other.counts.items():
            self.counts[key] += value
        return self

    def result(self, context: WindowContext) -> EstimatedPerformanceResult:
        return EstimatedPerformanceResult(ConfidenceBasedEstimator.metrics_from_counts(self.counts))

    def state_dict(self) -> dict:
        return dict(self.counts)

    def load_state_dict(self, state: dict) -> "EstimatedPerformance":
        self.counts = dict(state)
        return self
