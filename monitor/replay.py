"""`driftmon replay`: the daemon's processing without Kafka.

The same :class:`~monitor.pipeline.Pipeline` and :class:`~monitor.alerting.AlertEngine`
the daemon runs, fed from a file instead of a consumer. Every closed window (drift
and performance) comes out in the order the daemon would log it, and every
notification in the order the daemon would hand it to its sinks, so a config can be
tried on history before it pages anyone.
"""

from __future__ import annotations

from monitor.alerting import AlertEngine
from monitor.baseline import Baseline
from monitor.config import Config
from monitor.pipeline import Pipeline

__all__ = ["Replay", "advance_alerts", "alert_engine"]


def alert_engine(config: Config, baseline: Baseline, **kwargs) -> AlertEngine:
    """A fresh alert engine for ``baseline`` (its fingerprint; the columns' baseline missing ratios travel in
    the window results).

    The daemon, :class:`Replay` and the report's retraining verdict build theirs here; ``kwargs`` go to
    :class:`~monitor.alerting.AlertEngine` (the daemon's wall clock).
    """
    return AlertEngine(config, baseline.fingerprint, **kwargs)


def advance_alerts(alerts: AlertEngine, windows: list[dict], performance: list[dict]) -> list[dict]:
    """Notifications for windows closed together, in the daemon's order (performance first).

    Both the daemon and :class:`Replay` call this, so they send the same notifications in the
    same order for the same closed windows.
    """
    notes = []
    for result in performance:
        notes += alerts.observe_performance(result)
    for result in windows:
        notes += alerts.observe(result)
    return notes


class Replay:
    """Feed raw messages through the daemon's pipeline and alert engine.

    Time is the windows' event time (their ends), as in the daemon: with event times
    in the messages (``schema.timestamp``) the notifications and their repeats are exactly
    the daemon's, except ``starts_at``/``ends_at``, which the daemon takes from the wall
    clock (as Alertmanager needs them) and a replay from the windows' ends. Without event
    times a window has no end and the alert engine falls back to the wall clock, as the
    daemon does with broker times missing.

    Parameters
    ----------
    config : Config
        The daemon's configuration; its ``kafka`` and ``http`` sections are not used.
    baseline : Baseline
        The baseline the daemon would load (``config.baseline``).
    """

    def __init__(self, config: Config, baseline: Baseline):
        self.config = config
        self.baseline = baseline
        self.pipeline = Pipeline(config, baseline)
        self.alerts = alert_engine(config, baseline)
        self.windows = 0
        self.performance_windows = 0
        self.notifications = 0

    def _close(self, windows: list[dict]) -> tuple[list[dict], list[dict]]:
        performance = self.pipeline.take_performance()
        notes = advance_alerts(self.alerts, windows, performance)
        records = [{"kind": "performance", **r} for r in performance] + [{"kind": "drift", **r} for r in windows]
        self.windows += len(windows)
        self.performance_windows += len(performance)
        self.notifications += len(notes)
        return records, notes

    def process(self, values: list[bytes]) -> tuple[list[dict], list[dict]]:
        """One batch of raw prediction messages -> (closed windows tagged with ``kind``, notifications)."""
        windows, _batch = self.pipeline.process(values)
        return self._close(windows)

    def flush(self) -> tuple[list[dict], list[dict]]:
        """Evaluate the open drift window as incomplete (the end of the file)."""
        last = self.pipeline.flush()
        return self._close([] if last is None else [last])
