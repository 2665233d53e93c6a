"""Tumbling windows: bookkeeping plus a list of window detectors, evaluated against the baseline when they close.

What a window measures is its detectors' business (:mod:`detectors.window`, built from the config by
:mod:`monitor.registry`): the window feeds them every batch, merges, checkpoints and evaluates them
without knowing what they are, and keeps only what every window has (index, bounds, event counts,
offsets).
"""

from __future__ import annotations

import math

from detectors.window import FeatureDrift, WindowContext, distribution
from monitor.baseline import Baseline
from monitor.config import Config
from monitor.decode import Batch
from monitor.registry import feature_policies
from monitor.values import iso

__all__ = ["Window", "Evaluator", "distribution", "iso"]


class Window:
    """One open window: its detectors plus bookkeeping.

    Parameters
    ----------
    baseline : Baseline
        The baseline the detectors compare with.
    index : int
        Sequence number of this window (0, 1, ...), stable across restarts.
    start, end : float or None
        Bounds in epoch seconds for time windows; None for count windows.
    detectors : list, optional
        Window detectors (see :mod:`detectors.window`); default: univariate drift of every column
        of the baseline.
    """

    def __init__(self, baseline: Baseline, index: int = 0, start: float | None = None, end: float | None = None,
                 detectors: list | None = None):
        self.baseline = baseline
        self.index = index
        self.start = start
        self.end = end
        if detectors is None:
            detectors = [FeatureDrift(baseline.profiles, {}, [n for n, r in baseline.roles.items() if r == "feature"],
                                      {r: n for n, r in baseline.roles.items() if r != "feature"})]
        self.detectors = list(detectors)
        self._reset()

    def _reset(self) -> None:
        self.events = 0
        self.invalid = 0  # messages rejected while this window was open
        self.first_time = math.inf
        self.last_time = -math.inf
        self.offsets: dict[str, list[int]] = {}  # "topic:partition" -> [first, last] offset in this window

    def detector(self, key: str):
        """The detector with this checkpoint key, or None."""
        return next((d for d in self.detectors if d.key == key), None)

    @property
    def accumulators(self) -> dict:
        """Column name -> its histogram or category counts (the univariate detector's)."""
        return self.detector(FeatureDrift.key).accumulators

    def update(self, batch: Batch) -> "Window":
        """Add the rows of a batch (already cut to this window)."""
        if batch.n == 0:
            return self
        for detector in self.detectors:
            detector.update(batch)
        self.events += batch.n
        if batch.timestamps is not None:
            lo, hi = float(batch.timestamps.min()), float(batch.timestamps.max())
            if not math.isnan(lo):
                self.first_time = min(self.first_time, lo)
                self.last_time = max(self.last_time, hi)
        return self

    def merge(self, other: "Window") -> "Window":
        """Add another partial window of the same period (another worker's, another chunk's). Returns self.

        Counts, histograms and offsets add exactly, so the merged window evaluates as one process that
        saw every event would (the domain classifier's sample is a sample of the union).
        """
        if (self.index, self.start, self.end) != (other.index, other.start, other.end):
            raise ValueError(f"cannot merge window {other.index} ({other.start}..{other.end}) into "
                             f"window {self.index} ({self.start}..{self.end})")
        if [d.key for d in self.detectors] != [d.key for d in other.detectors]:
            raise ValueError("cannot merge windows with different detectors")
        for mine, theirs in zip(self.detectors, other.detectors):
            mine.merge(theirs)
        self.events += other.events
        self.invalid += other.invalid
        self.first_time = min(self.first_time, other.first_time)
        self.last_time = max(self.last_time, other.last_time)
        for key, (first, last) in other.offsets.items():
            self.add_offsets(key, first, last)
        return self

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
            **{d.key: d.state_dict() for d in self.detectors},
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
        for detector in self.detectors:
            if detector.key in state:
                detector.load_state_dict(state[detector.key])
        return self

    def fresh(self, index: int, start: float | None = None, end: float | None = None) -> "Window":
        """An empty window with twins of the same detectors."""
        return Window(self.baseline, index, start, end, [d.fresh() for d in self.detectors])


class Evaluator:
    """Evaluate a closed window: its bookkeeping plus the sections of each detector's result.

    Parameters
    ----------
    config : Config
    baseline : Baseline
    """

    def __init__(self, config: Config, baseline: Baseline):
        self.config = config
        self.baseline = baseline
        self.policies = feature_policies(config)
        self.alpha = config.drift.alpha  # the per-window level; the pipeline sets it from a false-page budget

    def evaluate(self, window: Window, complete: bool = True) -> dict:
        """The window result (the shape documented in docs/DESIGN.md)."""
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
        result = {"model": self.config.model, "baseline_fingerprint": self.baseline.fingerprint, "window": info}
        context = WindowContext(index=window.index, events=window.events, alpha=self.alpha)
        for detector in window.detectors:
            result.update(detector.result(context).sections())
        return result
