"""Tumbling windows of streaming distributions, evaluated against the baseline when they close."""

from __future__ import annotations

import math

import numpy as np

from detectors import (
    CategoricalProfile,
    CategoryCounter,
    ConfidenceBasedEstimator,
    FeaturePolicy,
    NumericHistogram,
    compare_categorical,
    compare_effect,
    compare_numeric,
    decide,
)
from monitor.baseline import Baseline
from monitor.config import Config
from monitor.decode import Batch
from monitor.values import iso, segment_value

__all__ = ["Window", "Evaluator", "distribution", "iso"]


#: Unseen category names kept in a window result (the most frequent first).
MAX_UNSEEN_SHOWN = 10


def distribution(acc) -> dict:
    """The window's counts on the baseline's bins or categories: what the report draws next to the baseline."""
    if isinstance(acc, CategoryCounter):
        top = sorted(acc.unseen_top.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_UNSEEN_SHOWN]
        return {"counts": acc.counts.tolist(), "other": acc.other, "unseen": acc.unseen,
                "unseen_top": dict(top), "missing": acc.missing}
    return {"counts": acc.counts.tolist(), "sums": acc.sums.tolist(), "missing": acc.missing,
            "out_of_range": acc.out_of_range, "min": acc.min, "max": acc.max, "mean": acc.mean, "std": acc.std}


class Window:
    """One open window: streaming accumulators for every column plus bookkeeping.

    Parameters
    ----------
    baseline : Baseline
        Supplies each column's bin edges and known categories.
    index : int
        Sequence number of this window (0, 1, ...), stable across restarts.
    start, end : float or None
        Bounds in epoch seconds for time windows; None for count windows.
    """

    def __init__(self, baseline: Baseline, index: int = 0, start: float | None = None, end: float | None = None,
                 names: list[str] | None = None, segments: dict | None = None, estimator=None,
                 score: str | None = None, threshold: float = 0.5, multivariate=None):
        self.baseline = baseline
        self.index = index
        self.start = start
        self.end = end
        self.names = list(baseline.profiles) if names is None else names
        self.segments = segments or {}  # field -> known values ("other" pools the rest)
        self.estimator = estimator  # a fitted ConfidenceBasedEstimator, or None
        self.score = score
        self.threshold = threshold
        self.multivariate = multivariate  # a monitor.multivariate.MultivariateState, or None
        self._reset()

    def _reset(self) -> None:
        self.events = 0
        self.invalid = 0  # messages rejected while this window was open
        self.first_time = math.inf
        self.last_time = -math.inf
        self.offsets: dict[str, list[int]] = {}  # "topic:partition" -> [first, last] offset in this window
        self.accumulators = {}
        self.by_segment: dict[str, dict[str, Window]] = {field: {} for field in self.segments}
        self.estimated = {"tp": 0.0, "fp": 0.0, "fn": 0.0, "tn": 0.0, "n": 0, "sparse": 0}
        for name in self.names:
            profile = self.baseline.profiles[name]
            if isinstance(profile, CategoricalProfile):
                self.accumulators[name] = CategoryCounter(profile.categories, profile.other_categories)
            else:
                self.accumulators[name] = NumericHistogram(profile.edges, profile.min, profile.max)

    def update(self, batch: Batch) -> "Window":
        """Add the rows of a batch (already cut to this window)."""
        if batch.n == 0:
            return self
        for name, acc in self.accumulators.items():
            acc.update(batch.columns[name])
        if self.multivariate is not None:
            self.multivariate.update(batch.columns)
        self.events += batch.n
        if self.estimator is not None:
            for key, value in self.estimator.expected_counts(batch.columns[self.score], self.threshold).items():
                self.estimated[key] += value
        for field, known in self.segments.items():
            self._update_segments(batch, field, known)
        if batch.timestamps is not None and batch.n:
            lo, hi = float(batch.timestamps.min()), float(batch.timestamps.max())
            if not math.isnan(lo):
                self.first_time = min(self.first_time, lo)
                self.last_time = max(self.last_time, hi)
        return self

    def _update_segments(self, batch: Batch, field: str, known) -> None:
        """Per-segment windows of one field, each accumulator updated for all segment values in one pass."""
        names = [segment_value(v, known) for v in batch.columns[field]]
        values = sorted(set(names))
        code = {v: i for i, v in enumerate(values)}
        groups = np.fromiter((code[v] for v in names), dtype=np.int64, count=len(names))
        subs = []
        for value in values:
            sub = self.by_segment[field].get(value)
            if sub is None:
                sub = self.by_segment[field][value] = Window(self.baseline, names=self.names)
            subs.append(sub)
        for name in self.names:
            accs = [sub.accumulators[name] for sub in subs]
            kind = NumericHistogram if isinstance(accs[0], NumericHistogram) else CategoryCounter
            kind.update_groups(accs, batch.columns[name], groups)
        sizes = np.bincount(groups, minlength=len(subs))
        ts = batch.timestamps
        if ts is not None and not np.isnan(ts).all():
            low, high = np.full(len(subs), np.inf), np.full(len(subs), -np.inf)
            ok = ~np.isnan(ts)
            np.minimum.at(low, groups[ok], ts[ok])
            np.maximum.at(high, groups[ok], ts[ok])
        for i, sub in enumerate(subs):
            sub.events += int(sizes[i])
            if ts is not None and not np.isnan(ts).all() and math.isfinite(low[i]):
                sub.first_time = min(sub.first_time, float(low[i]))
                sub.last_time = max(sub.last_time, float(high[i]))

    def add_offsets(self, key: str, first: int, last: int) -> None:
        span = self.offsets.get(key)
        if span is None:
            self.offsets[key] = [first, last]
        else:
            span[0], span[1] = min(span[0], first), max(span[1], last)

    def bounds(self) -> tuple[float | None, float | None]:
        """Reported start and end: the time window's bounds, else the first and last event times."""
        if self.start is not None:
            return self.start, self.end
        if self.events and math.isfinite(self.first_time):
            return self.first_time, self.last_time
        return None, None

    def state_dict(self) -> dict:
        return {
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "events": self.events,
            "invalid": self.invalid,
            "first_time": self.first_time if math.isfinite(self.first_time) else None,
            "last_time": self.last_time if math.isfinite(self.last_time) else None,
            "offsets": self.offsets,
            "accumulators": {name: acc.state_dict() for name, acc in self.accumulators.items()},
            "estimated": self.estimated,
            "segments": {f: {v: w.state_dict() for v, w in subs.items()} for f, subs in self.by_segment.items()},
            **({"multivariate": self.multivariate.state_dict()} if self.multivariate is not None else {}),
        }

    def load_state_dict(self, state: dict) -> "Window":
        self.index = state["index"]
        self.start = state["start"]
        self.end = state["end"]
        self.events = state["events"]
        self.invalid = state["invalid"]
        self.first_time = math.inf if state["first_time"] is None else state["first_time"]
        self.last_time = -math.inf if state["last_time"] is None else state["last_time"]
        self.offsets = {k: list(v) for k, v in state["offsets"].items()}
        for name, acc_state in state["accumulators"].items():
            self.accumulators[name].load_state_dict(acc_state)
        self.estimated = dict(state["estimated"])
        if self.multivariate is not None and "multivariate" in state:
            self.multivariate.load_state_dict(state["multivariate"])
        for field, subs in state["segments"].items():
            for value, sub in subs.items():
                self.by_segment.setdefault(field, {})[value] = Window(self.baseline, names=self.names) \
                    .load_state_dict(sub)
        return self

    def fresh(self, index: int, start: float | None = None, end: float | None = None) -> "Window":
        """An empty window with the same columns, segments and estimator."""
        return Window(self.baseline, index, start, end, self.names, self.segments, self.estimator, self.score,
                      self.threshold, self.multivariate.fresh() if self.multivariate is not None else None)


class Evaluator:
    """Compare a closed window with the baseline and decide which columns drifted.

    Features form one family for the multiple-testing correction; the
    prediction, score and label are judged as a second family, so adding
    features never makes prediction drift harder to detect.
    """

    def __init__(self, config: Config, baseline: Baseline):
        self.config = config
        self.baseline = baseline
        drift = config.drift
        self.policies = {}
        for _role, spec in config.drift_columns():
            defaults = drift.numeric if spec.type == "numeric" else drift.categorical
            method = spec.drift.effect_method or defaults.effect_method
            threshold = spec.drift.threshold
            if threshold is None and method == defaults.effect_method:
                threshold = defaults.threshold
            # Otherwise None: each effect method has its own calibrated default (detectors.FeaturePolicy).
            self.policies[spec.name] = FeaturePolicy(
                effect_method=method, effect_threshold=threshold,
                min_events=spec.drift.min_events or drift.min_events,
            )
        self.features = [spec.name for role, spec in config.schema.columns() if role == "feature"]
        self.alpha = drift.alpha  # the per-window level; the pipeline sets it from a false-page budget
        self.outputs = [spec.name for role, spec in config.drift_columns() if role != "feature"]

    def _compare(self, name: str, window: Window) -> dict:
        profile = self.baseline.profiles[name]
        acc = window.accumulators[name]
        if isinstance(profile, CategoricalProfile):
            result = compare_categorical(profile, acc, self.policies[name])
        else:
            result = compare_numeric(profile, acc, self.policies[name])
        result["distribution"] = distribution(acc)
        return result

    def evaluate(self, window: Window, complete: bool = True) -> dict:
        """The window result (the shape documented in docs/DESIGN.md)."""
        alpha = self.alpha
        features = decide({name: self._compare(name, window) for name in self.features}, alpha=alpha)
        outputs = decide({name: self._compare(name, window) for name in self.outputs}, alpha=alpha)
        start, end = window.bounds()
        if window.events == 0:
            status = "empty"
        elif window.events < self.config.drift.min_events:
            status = "insufficient_data"
        else:
            status = "ok"
        info = {"index": window.index, "start": iso(start), "end": iso(end), "events": window.events,
                "invalid": window.invalid, "status": status, "complete": complete}
        if window.offsets:
            info["offsets"] = {k: list(v) for k, v in sorted(window.offsets.items())}
        result = {
            "model": self.config.model,
            "baseline_fingerprint": self.baseline.fingerprint,
            "window": info,
            "drifted": sorted(name for name, r in features.items() if r["drift"]),
            "features": features,
        }
        for role, spec in self.config.drift_columns():
            if role != "feature":
                result[role] = outputs[spec.name]
        if window.estimator is not None:
            result["estimated_performance"] = ConfidenceBasedEstimator.metrics_from_counts(window.estimated)
        if window.multivariate is not None:
            result.update(window.multivariate.results(window.index))
        if window.by_segment:
            result["segments"] = {
                field: {value: self._segment_summary(sub) for value, sub in sorted(subs.items())}
                for field, subs in window.by_segment.items()}
        return result

    def _segment_summary(self, window: Window) -> dict:
        """Feature drift within one segment value (its own Holm family)."""
        if window.events < self.config.drift.min_events:
            return {"events": window.events, "status": "insufficient_data", "drifted": []}
        features = decide({name: compare_effect(self.baseline.profiles[name], window.accumulators[name],
                                                self.policies[name]) for name in self.features}, alpha=self.alpha)
        return {"events": window.events, "status": "ok",
                "drifted": sorted(name for name, r in features.items() if r["drift"]),
                "effects": {name: r["effect"]["value"] for name, r in features.items()}}
