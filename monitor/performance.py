"""Labelled predictions: the label join, realized performance per window, segments, fairness.

Predictions wait for their labels in :class:`~monitor.join.LabelJoin` (or
carry them inline). Every ``labels.window`` labelled predictions close a
performance window, evaluated against the baseline's performance: metric
values, one-sided drop tests, per-segment metrics, group fairness and label
drift. A sequential detector (ADWIN) watches the per-prediction error stream
across windows for drops that happen inside one.

With ``labels.window_duration`` the windows are event-time windows instead
(:class:`LabelledWindow`): a joined prediction counts in the window of its join
time, ``max(prediction time, label time)``, and a window closes once both the
predictions and the labels have moved past its end. Such windows merge (scale-out,
``monitor/cluster.py``); count windows do not.
"""

from __future__ import annotations

import math

import numpy as np

from detectors import (ClassificationAccumulator, ConfidenceBasedEstimator, ErrorRateDetector, GroupAccumulator,
                       RegressionAccumulator)
from detectors.window import WindowContext
from monitor.config import Column, Config, Feature, FieldRef, SchemaConfig
from monitor.decode import MAX_MESSAGE_BYTES, Decoder
from monitor.join import LabelJoin
from monitor.registry import build_labelled_detectors
from monitor.values import category_name, iso

__all__ = ["LabelledWindow", "PerformanceTracker", "baseline_performance", "DELAY_BUCKETS"]

#: Label delay histogram buckets, in seconds (a click in seconds, a repaid loan in months).
DELAY_BUCKETS = (1, 10, 60, 300, 1800, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 90 * 86400, math.inf)

_DEFAULT_METRICS = {"classification": ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece"),
                    "regression": ("mae", "rmse", "mape", "r2")}


def _task(config: Config) -> str:
    return "regression" if config.schema.prediction.type == "numeric" else "classification"


def baseline_performance(config: Config, label, prediction, score=None, positive=None) -> dict:
    """Performance of the model on labelled baseline data, and the score calibration for estimation."""
    task = _task(config)
    out = {"task": task}
    if task == "classification":
        labels = [category_name(v) for v in label]
        preds = [category_name(v) for v in prediction]
        classes = sorted({v for v in labels if v is not None})
        if positive is None and len(classes) == 2:
            counts = {c: labels.count(c) for c in classes}
            positive = min(classes, key=lambda c: (counts[c], c))  # the minority class, as usual
        acc = ClassificationAccumulator(positive=positive)
        sc = None if score is None or positive is None else np.asarray(score, dtype=float)
        acc.update(labels, preds, sc)
        out["positive"] = positive
        if sc is not None:
            y = np.array([1 if v == positive else (0 if v is not None else -1) for v in labels])
            ok = (y >= 0) & ~np.isnan(sc)
            est = ConfidenceBasedEstimator(positive=1).fit(sc[ok], y[ok])
            out["estimator"] = est.state_dict()
    else:
        acc = RegressionAccumulator()
        acc.update(np.asarray(label, dtype=float), np.asarray(prediction, dtype=float))
    out["metrics"] = acc.metrics()
    out["n"] = acc.n
    return out


class PerformanceTracker:
    """Join labels to predictions and evaluate labelled windows.

    Parameters
    ----------
    config : Config
    baseline : Baseline
        Supplies the label profile, the baseline performance and the segment values.
    """

    def __init__(self, config: Config, baseline):
        self.config = config
        self.baseline = baseline
        self.task = _task(config)
        perf = baseline.extras.get("performance") or {}
        self.reference = perf.get("metrics", {})
        self.positive = config.labels.positive or perf.get("positive")
        self.metrics = tuple(config.performance.metrics or _DEFAULT_METRICS[self.task])
        self.label_name = config.schema.label.name
        self.pred_name = config.schema.prediction.name
        self.score_name = config.schema.score.name if config.schema.score else None
        self.segment_values = baseline.extras.get("segments", {})
        self.attributes = [a.name for a in config.fairness.attributes] if config.fairness else []
        # Extra fields carried in each waiting row, after prediction, score and time: segments, then attributes.
        self.extras = list(self.segment_values) + [a for a in self.attributes if a not in self.segment_values]
        self.join = LabelJoin(config.labels.ttl_seconds, config.labels.max_pending)
        self.label_decoder = None
        if config.labels_on_topic:
            label = config.schema.label
            column = Column(name=label.name, type=label.type, path=label.path)
            schema = SchemaConfig(
                features=[Feature(name=label.name, type=label.type, path=label.path)],
                id=FieldRef(path=config.labels.id_path or config.schema.id.path or "id"),
                timestamp=FieldRef(path=config.labels.timestamp_path) if config.labels.timestamp_path else None)
            max_bytes = config.kafka.max_message_bytes if config.kafka is not None else MAX_MESSAGE_BYTES
            self.label_decoder = Decoder(schema, columns=[("label", column)], max_bytes=max_bytes)
        # The error stream has no order across partitions: scale-out has no ADWIN (error_rate is null).
        self.errors = ErrorRateDetector(delta=config.performance.error_delta) \
            if self.task == "classification" and not config.cluster.enabled else None
        self.duration = config.labels.window_duration_seconds  # None: count windows
        self.open: dict[float, LabelledWindow] = {}  # event-time windows: start -> window
        self.closed_until = -math.inf  # end of the last closed event-time window
        self.prediction_time = -math.inf  # the latest prediction event time (joins with a later one close windows)
        self.label_time = -math.inf  # the same for labels (from the labels topic)
        self.late = 0  # joins for a window already closed: counted in the oldest open window
        self.delay_counts = [0] * len(DELAY_BUCKETS)
        self.delay_sum = 0.0
        self.alpha = config.drift.alpha  # the label-drift level, from the false-page budget when there is one
        self.reference_groups = {}  # attribute -> the baseline's GroupAccumulator (labelled data's group rates)
        for attr, state in (baseline.extras.get("fairness") or {}).items():
            self.reference_groups[attr] = GroupAccumulator(state["favourable"], max_groups=int(state["max_groups"])
                                                           ).load_state_dict(state)
        self.budget = None  # monitor.budget.AlphaBudget, shared with the pipeline
        self.index = 0
        self.windows_evaluated = 0
        self.last_result: dict | None = None
        self._new_window()

    def _new_window(self) -> None:
        # The labelled window's detectors (monitor/registry.py LABELLED): fresh twins of the prototypes.
        if not hasattr(self, "prototypes"):
            self.prototypes = build_labelled_detectors(self.config, self.baseline, self)
        self.detectors = [d.fresh() for d in self.prototypes]
        self.labelled = 0
        self.first_time = math.inf
        self.last_time = -math.inf

    # ---- input ----------------------------------------------------------------------------------

    def on_predictions(self, batch) -> list[dict]:
        """Feed a decoded prediction batch; returns the performance windows it closed."""
        if batch.n == 0:
            return []
        cols = batch.columns
        times = batch.timestamps if batch.timestamps is not None else np.full(batch.n, np.nan)
        self._times(times, labels=False)
        if self.label_decoder is None:
            # Labels inline: straight from the columns, no per-row tuples (the hot path of labelled replays).
            labels = _names(cols[self.label_name]) if self.task == "classification" else \
                np.asarray(cols[self.label_name], dtype=float)
            keep = _present(labels)
            n = int(keep.sum())
            self.join.received += n
            self.join.matched += n
            if n == 0:
                return self._close_passed() if self.duration is not None else []
            columns = {"pred": cols[self.pred_name], "label": labels,
                       "score": cols[self.score_name] if self.score_name else None, "time": times,
                       "delay": np.zeros(batch.n), **{e: cols[e] for e in self.extras}}
            if n < batch.n:
                columns = {k: None if v is None else _take(v, keep) for k, v in columns.items()}
            return self._add_columns(columns, n)
        if batch.ids is None:
            return self._close_passed() if self.duration is not None else []
        # Python numbers, not numpy scalars: the on-disk join encodes every waiting row (msgpack calls a hook per
        # numpy scalar, which took 0.8 us of a row's encoding)
        score = _listed(cols[self.score_name]) if self.score_name else [None] * batch.n
        rows = [list(r) for r in zip(_listed(cols[self.pred_name]), (None if s != s else s for s in score),
                                     times.tolist(), *(_listed(cols[e]) for e in self.extras))]
        results = self._add(self.join.add_predictions(batch.ids, times.tolist(), rows))
        return results + self._close_passed() if self.duration is not None else results

    def on_labels(self, values: list[bytes], times: np.ndarray | None):
        """Feed raw label messages; returns (closed performance windows, decoded batch)."""
        batch = self.label_decoder.decode(values)
        if batch.n == 0:
            return [], batch
        if batch.timestamps is None or np.isnan(batch.timestamps).any():
            if callable(times):
                times = times()
            fallback = np.asarray(times, dtype=float)[batch.valid] if times is not None else np.full(batch.n, np.nan)
            batch.timestamps = fallback if batch.timestamps is None else np.where(
                np.isnan(batch.timestamps), fallback, batch.timestamps)
        self._times(batch.timestamps, labels=True)
        labels = batch.columns[self.label_name]
        labels = labels.tolist() if isinstance(labels, np.ndarray) else labels
        keep = [i for i, v in enumerate(labels) if v is not None and not (isinstance(v, float) and math.isnan(v))]
        matched = self.join.add_labels([batch.ids[i] for i in keep], batch.timestamps[keep].tolist(),
                                       [labels[i] for i in keep])
        self.join.expire()
        results = self._add(matched)
        return (results + self._close_passed() if self.duration is not None else results), batch

    def _add(self, matched: list) -> list[dict]:
        """Joined (row, label, delay) tuples from the label join, as columns."""
        if not matched:
            return []
        rows, labels, delays = zip(*matched)
        fields = list(zip(*rows))
        columns = {"pred": list(fields[0]), "score": np.array([np.nan if v is None else v for v in fields[1]], float),
                   "time": np.array(fields[2], dtype=float), "delay": np.array(delays, dtype=float),
                   "label": _names(labels) if self.task == "classification" else
                   np.array([np.nan if v is None else float(v) for v in labels]),
                   **{e: list(fields[3 + j]) for j, e in enumerate(self.extras)}}
        return self._add_columns(columns, len(matched))

    def _add_columns(self, columns: dict, n: int) -> list[dict]:
        if self.duration is not None:
            return self._add_timed(columns, n)
        results = []
        size = self.config.labels.window
        start = 0
        while start < n:
            stop = min(n, start + size - self.labelled)
            part = columns if (start, stop) == (0, n) else \
                {k: None if v is None else v[start:stop] for k, v in columns.items()}
            self._update(part, stop - start)
            start = stop
            if self.labelled >= size:
                results.append(self._close())
        return results

    def _add_timed(self, columns: dict, n: int) -> list[dict]:
        """Event-time windows: each joined row goes to the window of its join time (prediction time + delay)."""
        joined = np.asarray(columns["time"], dtype=float) + np.asarray(columns["delay"], dtype=float)
        keys = np.floor(joined / self.duration)
        floor = self.closed_until / self.duration if math.isfinite(self.closed_until) else -math.inf
        late = ~(keys >= floor)  # a closed window, or no time: the oldest open window takes it
        if late.any():
            self.late += int(late.sum())
            first = min(self.open) / self.duration if self.open else (
                floor if math.isfinite(floor) else np.nanmin(keys, initial=np.inf))
            keys = np.where(late, first if math.isfinite(first) else 0.0, keys)
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            part = columns if rows.size == n else {k: None if v is None else _take(v, keys == key)
                                                   for k, v in columns.items()}
            start = float(key) * self.duration
            window = self.open.get(start)
            if window is None:
                window = self.open[start] = self.new_labelled(start)
            self._update(part, int(rows.size), window)
        return self._close_passed()

    def _close_passed(self) -> list[dict]:
        """Close the event-time windows that predictions and labels have both moved past."""
        mark = self.prediction_time if self.label_decoder is None else min(self.prediction_time, self.label_time)
        results = []
        for start in sorted(self.open):
            window = self.open[start]
            if not window.end <= mark:
                break
            results.append(self._close_window(start))
        return results

    def _close_window(self, start: float) -> dict:
        window = self.open.pop(start)
        self.closed_until = max(self.closed_until, window.end)
        return self._close(window)

    def tick(self, now: float) -> list[dict]:
        """Close event-time windows whose end plus ``window.grace`` has passed on the clock (idle streams)."""
        if self.duration is None:
            return []
        grace = self.config.window.grace_seconds
        return [self._close_window(s) for s in sorted(self.open) if self.open[s].end + grace <= now]

    def _times(self, times, labels: bool) -> None:
        finite = np.asarray(times, dtype=float)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            if labels:
                self.label_time = max(self.label_time, float(finite.max()))
            else:
                self.prediction_time = max(self.prediction_time, float(finite.max()))

    def _update(self, cols: dict, n: int, window: "LabelledWindow | None" = None) -> None:
        """Add ``n`` labelled predictions given as columns (pred, label, score, time, delay, extras), to
        ``window`` (event-time windows) or the count window."""
        if n == 0:
            return
        delays = np.asarray(cols["delay"], dtype=float)
        finite = delays[~np.isnan(delays)]
        if finite.size:
            binned = np.bincount(np.searchsorted(DELAY_BUCKETS, finite), minlength=len(DELAY_BUCKETS))
            self.delay_counts = [a + int(b) for a, b in zip(self.delay_counts, binned)]
        self.delay_sum += float(finite.sum())
        times = np.asarray(cols["time"], dtype=float)
        target = self if window is None else window
        if np.isfinite(times).any():
            target.first_time = min(target.first_time, float(np.nanmin(times)))
            target.last_time = max(target.last_time, float(np.nanmax(times)))
        if self.task == "classification":
            labels = cols["label"]
            preds = _names(cols["pred"])
            scores = None
            if self.score_name and self.positive is not None and cols["score"] is not None:
                scores = np.asarray(cols["score"], dtype=float)
            both = _present(labels) & _present(preds)
            if self.errors is not None:
                self.errors.update((labels[both] != preds[both]).astype(np.int8))
        else:
            labels = np.asarray(cols["label"], dtype=float)
            preds = np.array([np.nan if p is None else float(p) for p in cols["pred"]])
            scores = None
        batch = LabelledBatch(n, {"label": labels, "pred": preds, "score": scores,
                                  **{e: _names(cols[e]) for e in self.extras}})
        for detector in target.detectors:
            detector.update(batch)
        target.labelled += n

    # ---- evaluation ------------------------------------------------------------------------------

    def _close(self, window: "LabelledWindow | None" = None) -> dict:
        """Evaluate the count window, or the event-time ``window``."""
        w = self if window is None else window
        if self.budget is not None and self.budget.enabled:
            finite = math.isfinite(w.first_time) and math.isfinite(w.last_time)
            self.budget.observe("labels", w.first_time if finite else None, w.last_time if finite else None)
            self.alpha = self.budget.alpha()
        context = WindowContext(index=self.index, events=w.labelled, alpha=self.alpha)
        bounds = (w.first_time, w.last_time) if window is None else (window.start, window.end)
        result = {
            "model": self.config.model,
            "baseline_fingerprint": self.baseline.fingerprint,
            "window": {"index": self.index, "labelled": w.labelled, "start": iso(bounds[0]), "end": iso(bounds[1])},
        }
        for detector in w.detectors:  # their sections, in registry order (monitor/registry.py LABELLED)
            result.update(detector.result(context).sections())
        result["error_rate"] = None if self.errors is None else {
            "estimate": self.errors.estimate, "detections": self.errors.detections,
            "drift_detected": bool(self.errors.drift_detected)}
        self.index += 1
        self.windows_evaluated += 1
        self.last_result = result
        if window is None:
            self._new_window()
        return result

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "join": self.join.state_dict(),
            "by_segment": {}, "groups": {}, "label_acc": None,  # the layout before the protocol, when not configured
            **{d.key: d.state_dict() for d in self.detectors},
            "errors": None if self.errors is None else self.errors.state_dict(),
            "labelled": self.labelled,
            "first_time": None if math.isinf(self.first_time) else self.first_time,
            "last_time": None if math.isinf(self.last_time) else self.last_time,
            "delay_counts": self.delay_counts, "delay_sum": self.delay_sum,
            "index": self.index, "windows_evaluated": self.windows_evaluated, "last_result": self.last_result,
            **({} if self.duration is None else self.timed_state()),
        }

    def timed_state(self) -> dict:
        """The event-time windows' part of the state (open windows, the streams' times, late joins)."""
        fin = lambda t: t if math.isfinite(t) else None  # noqa: E731
        return {"open": [w.state_dict() for _s, w in sorted(self.open.items())],
                "closed_until": fin(self.closed_until), "prediction_time": fin(self.prediction_time),
                "label_time": fin(self.label_time), "late": self.late}

    def load_timed_state(self, state: dict) -> None:
        inf = lambda t, sign: sign * math.inf if t is None else t  # noqa: E731
        self.open = {}
        for ws in state.get("open", []):
            window = self.new_labelled(ws["start"]).load_state_dict(ws)
            self.open[window.start] = window
        self.closed_until = inf(state.get("closed_until"), -1)
        self.prediction_time = inf(state.get("prediction_time"), -1)
        self.label_time = inf(state.get("label_time"), -1)
        self.late = state.get("late", 0)

    def new_labelled(self, start: float) -> "LabelledWindow":
        """An empty event-time window at ``start`` (fresh twins of the labelled detectors)."""
        return LabelledWindow([d.fresh() for d in self.prototypes], start, start + self.duration)

    def load_state_dict(self, state: dict) -> "PerformanceTracker":
        self._new_window()
        self.join.load_state_dict(state["join"])
        for detector in self.detectors:
            if state.get(detector.key) is not None:
                detector.load_state_dict(state[detector.key])
        if self.errors is not None and state["errors"] is not None:
            self.errors.load_state_dict(state["errors"])
        self.labelled = state["labelled"]
        self.first_time = math.inf if state["first_time"] is None else state["first_time"]
        self.last_time = -math.inf if state["last_time"] is None else state["last_time"]
        self.delay_counts, self.delay_sum = list(state["delay_counts"]), state["delay_sum"]
        self.index, self.windows_evaluated = state["index"], state["windows_evaluated"]
        self.last_result = state["last_result"]
        if self.duration is not None:
            self.load_timed_state(state)
        return self


class LabelledWindow:
    """One event-time window of joined predictions: the labelled detectors and the bookkeeping, mergeable.

    Two windows of the same period from different partitions merge exactly (the detectors' accumulators
    add: ``tests/test_detectors_merge.py``), which is what scale-out needs.
    """

    def __init__(self, detectors: list, start: float, end: float):
        self.detectors = detectors
        self.start = start
        self.end = end
        self.labelled = 0
        self.first_time = math.inf
        self.last_time = -math.inf

    def merge(self, other: "LabelledWindow") -> "LabelledWindow":
        if (other.start, other.end) != (self.start, self.end):
            raise ValueError(f"cannot merge the window at {other.start} into the one at {self.start}")
        for mine, theirs in zip(self.detectors, other.detectors, strict=True):
            mine.merge(theirs)
        self.labelled += other.labelled
        self.first_time = min(self.first_time, other.first_time)
        self.last_time = max(self.last_time, other.last_time)
        return self

    def state_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "labelled": self.labelled,
                "first_time": self.first_time if math.isfinite(self.first_time) else None,
                "last_time": self.last_time if math.isfinite(self.last_time) else None,
                "detectors": {d.key: d.state_dict() for d in self.detectors}}

    def load_state_dict(self, state: dict) -> "LabelledWindow":
        self.start, self.end, self.labelled = state["start"], state["end"], state["labelled"]
        self.first_time = math.inf if state["first_time"] is None else state["first_time"]
        self.last_time = -math.inf if state["last_time"] is None else state["last_time"]
        for detector in self.detectors:
            if state["detectors"].get(detector.key) is not None:
                detector.load_state_dict(state["detectors"][detector.key])
        return self


class LabelledBatch:
    """Joined predictions as columns, what the labelled window detectors update with (detectors/labelled.py)."""

    __slots__ = ("n", "columns")

    def __init__(self, n: int, columns: dict):
        self.n = n
        self.columns = columns


def _names(values) -> np.ndarray:
    """Category names of a column as an object array (None for missing; 1.0 and 1 are "1"), vectorized."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        values = values.tolist()
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iu":
            return values.astype(str).astype(object)
        values = values.tolist()
    kinds = set(map(type, values))
    if kinds <= {str}:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    if kinds <= {int}:
        try:
            return np.array(values, dtype=np.int64).astype(str).astype(object)
        except OverflowError:
            pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return _NAME(out) if len(values) else out


_NAME = np.frompyfunc(category_name, 1, 1)


def _listed(column):
    """A column as a list of Python objects (a numpy array's values as Python numbers)."""
    return column.tolist() if isinstance(column, np.ndarray) else column


def _present(values: np.ndarray) -> np.ndarray:
    """Rows with a value: not None (object arrays of names) and not NaN (float arrays)."""
    if values.dtype == object:
        return values != None  # noqa: E711 (elementwise)
    return ~np.isnan(values)


def _take(values, keep: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[keep]
    return [v for v, k in zip(values, keep.tolist()) if k]
