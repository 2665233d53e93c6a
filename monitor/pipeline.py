"""The processing pipeline shared by the daemon and `driftmon replay`: decode, window, evaluate."""

from __future__ import annotations

from collections import Counter

import numpy as np

from monitor.baseline import Baseline
from monitor.budget import AlphaBudget
from monitor.config import Config
from monitor.decode import MAX_MESSAGE_BYTES, Batch, Decoder
from monitor.performance import PerformanceTracker
from monitor.registry import build_detectors
from monitor.window import Evaluator, Window

__all__ = ["Pipeline"]


class Pipeline:
    """Turn batches of raw messages into evaluated windows.

    The pipeline holds no I/O: callers feed it raw message values and receive
    window results. Everything it holds is in :meth:`state_dict`, so a daemon
    that restores a checkpoint and re-reads from the checkpoint's offsets
    produces the same windows as one that never stopped.

    Parameters
    ----------
    config : Config
    baseline : Baseline
    """

    def __init__(self, config: Config, baseline: Baseline, background: bool = False):
        self.config = config
        self.baseline = baseline
        # The window detectors from the config (monitor/registry.py): every window holds fresh twins of these.
        # background (the daemon): the domain classifier is fitted off the consuming thread
        self.detectors = build_detectors(config, baseline, background)
        mv = next((d for d in self.detectors if d.key == "multivariate"), None)
        self.multivariate = None if mv is None else mv.state  # its runner's counts are metrics
        max_bytes = config.kafka.max_message_bytes if config.kafka is not None else MAX_MESSAGE_BYTES
        self.decoder = Decoder(config.schema, columns=config.drift_columns(), extra=config.extra_columns(),
                               max_bytes=max_bytes)
        self.evaluator = Evaluator(config, baseline)
        self.size = config.window.size
        self.duration = config.window.duration_seconds
        self.tracker = None
        if config.schema.label is not None and config.schema.prediction is not None:
            self.tracker = PerformanceTracker(config, baseline)
        self.budget = AlphaBudget(config)  # the per-window level from alerts.false_pages_per_week
        if self.tracker is not None:
            self.tracker.budget = self.budget
        self.performance: list[dict] = []  # closed performance windows, drained by take_performance()
        self.window = self._new_window(0)
        self.consumed = 0
        self.invalid: Counter = Counter()
        self.late = 0
        self.windows_evaluated = 0
        self.last_result: dict | None = None
        self.positions: dict[str, int] = {}  # "topic:partition" -> next offset to read

    def _new_window(self, index: int, start: float | None = None, end: float | None = None) -> Window:
        return Window(self.baseline, index, start, end, [d.fresh() for d in self.detectors])

    def take_performance(self) -> list[dict]:
        """Performance windows closed since the last call."""
        out, self.performance = self.performance, []
        return out

    # ---- feeding -------------------------------------------------------------------------------

    def process(self, values: list[bytes], times: np.ndarray | None = None,
                source: str | None = None, offsets: np.ndarray | None = None) -> tuple[list[dict], Batch]:
        """Process one batch of raw message values.

        Parameters
        ----------
        values : list of bytes
            Raw JSON messages (None for a tombstone). Each becomes one valid event or one invalid
            one counted by reason; no content makes this raise.
        times : ndarray or callable returning one, optional
            Per-message broker timestamps in epoch seconds; the event time where the message has none
            (a callable is called only then).
        source, offsets : str and ndarray, optional
            Partition key and per-message offsets, recorded in window results and checkpoints.

        Returns
        -------
        (results, batch)
            The windows this batch closed (oldest first), and the decoded batch.
        """
        batch = self.decoder.decode(values)
        self.consumed += len(values)
        self.invalid.update(batch.invalid)
        self.window.invalid += len(batch.rejected)
        if batch.n and times is not None:
            missing = None if batch.timestamps is None else np.isnan(batch.timestamps)
            if missing is None or missing.any():
                valid_times = np.asarray(times() if callable(times) else times, dtype=np.float64)[batch.valid]
                if missing is None:
                    batch.timestamps = valid_times
                else:
                    batch.timestamps[missing] = valid_times[missing]
        valid_offsets = None if offsets is None else np.asarray(offsets)[batch.valid]
        results = self._route(batch, source, valid_offsets)
        if self.tracker is not None:
            self.performance += self.tracker.on_predictions(batch)
        if source is not None and offsets is not None and len(offsets):
            self.positions[source] = int(offsets[-1]) + 1
        return results, batch

    def process_labels(self, values: list[bytes], times: np.ndarray | None = None,
                       source: str | None = None, offsets: np.ndarray | None = None) -> Batch:
        """Process one batch of raw label messages (from `kafka.labels_topic`)."""
        results, batch = self.tracker.on_labels(values, times)
        self.performance += results
        self.consumed += len(values)
        self.invalid.update(batch.invalid)
        if source is not None and offsets is not None and len(offsets):
            self.positions[source] = int(offsets[-1]) + 1
        return batch

    def _feed(self, batch: Batch, start: int, stop: int, source, offsets) -> None:
        if stop <= start:
            return
        self.window.update(batch.slice(start, stop) if (start, stop) != (0, batch.n) else batch)
        if source is not None and offsets is not None:
            self.window.add_offsets(source, int(offsets[start]), int(offsets[stop - 1]))

    def _route(self, batch: Batch, source, offsets) -> list[dict]:
        results = []
        if self.size is not None:
            start = 0
            while start < batch.n:
                stop = min(batch.n, start + self.size - self.window.events)
                self._feed(batch, start, stop, source, offsets)
                start = stop
                if self.window.events >= self.size:
                    results.append(self._close(next_start=None))
            return results
        if batch.n == 0:
            return results
        ts = batch.timestamps
        if ts is None or np.isnan(ts).any():
            raise ValueError("time windows need an event time on every message (schema.timestamp or broker time)")
        keys = np.floor(ts / self.duration).astype(np.int64)
        if self.window.start is None:
            self._open_at(int(keys[0]))
        current = int(round(self.window.start / self.duration))
        start = 0
        while start < batch.n:
            ahead = np.flatnonzero(keys[start:] > current)
            stop = batch.n if ahead.size == 0 else start + int(ahead[0])
            self.late += int(np.count_nonzero(keys[start:stop] < current))
            self._feed(batch, start, stop, source, offsets)
            if stop < batch.n:
                current = int(keys[stop])
                results.append(self._close(next_start=current * self.duration))
            start = stop
        return results

    def _open_at(self, key: int) -> None:
        self.window.start = key * self.duration
        self.window.end = (key + 1) * self.duration

    def _close(self, next_start: float | None, complete: bool = True) -> dict:
        if self.budget.enabled:
            self.budget.observe("drift", *self.window.bounds())
            self.evaluator.alpha = self.budget.alpha()
        result = self.evaluator.evaluate(self.window, complete=complete)
        self.windows_evaluated += 1
        self.last_result = result
        if next_start is not None:
            self.window = self.window.fresh(self.window.index + 1, next_start, next_start + self.duration)
        else:
            self.window = self.window.fresh(self.window.index + 1)
        return result

    # ---- time --------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[dict]:
        """Close time windows whose end (plus grace) has passed on the wall clock.

        Called by the daemon only while the consumer is idle, so that a backlog
        of old events closes its windows by event time instead of the clock.
        """
        results = []
        if self.duration is None:
            return results
        if self.window.start is None:
            # No event yet: the first event opens the window, so a backlog of old events that arrives
            # after an idle start is not lumped into a window of the wall clock.
            return results
        while self.window.end + self.config.window.grace_seconds <= now:
            results.append(self._close(next_start=self.window.end))
        return results

    def flush(self) -> dict | None:
        """Evaluate the open window as incomplete (end of a replay); None when it is empty."""
        if self.window.events == 0:
            return None
        return self._close(next_start=None, complete=False)

    # ---- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "window": self.window.state_dict(),
            "positions": dict(self.positions),
            "windows_evaluated": self.windows_evaluated,
            "last_result": self.last_result,
            "performance": None if self.tracker is None else self.tracker.state_dict(),
            "budget": self.budget.state_dict(),
        }

    def load_state_dict(self, state: dict) -> "Pipeline":
        self.window = self._new_window(0).load_state_dict(state["window"])
        if self.tracker is not None and state.get("performance") is not None:
            self.tracker.load_state_dict(state["performance"])
        self.positions = {k: int(v) for k, v in state["positions"].items()}
        self.windows_evaluated = int(state["windows_evaluated"])
        self.last_result = state["last_result"]
        self.budget.load_state_dict(state.get("budget"))
        if self.budget.enabled:
            self.evaluator.alpha = self.budget.alpha()
            if self.tracker is not None:
                self.tracker.alpha = self.evaluator.alpha
        return self
