"""A false-alarm budget in time: the per-window level that keeps drift pages within ``alerts.false_pages_per_week``.

On-call counts false pages per week; a test has a level per window. Between them stand
the window rate, the number of families of tests that page, and the alert hysteresis.

The bound. In a window where no feature's effect exceeds its threshold, Holm holds the
chance that a family flags anything at ``alpha``; write ``p_j`` for the chance that
subject ``j`` is flagged, so ``sum_j p_j <= alpha``. Windows hold disjoint events, so
(given the baseline) their flags are independent. A drift alert pages when its subject
is bad in ``fire_after`` (k) consecutive windows, or, once flapping, in at least
``ceil(flapping.min_bad * flapping.windows)`` (m) of the last ``flapping.windows`` (N)
windows with the window at hand bad. So a subject starts a page in a given window with
chance at most ``p_j^k + C(N - 1, m - 1) p_j^m``, and a family at most
``alpha^k + C(N - 1, m - 1) alpha^m`` (the sum of powers is largest when one subject holds
all of ``alpha``: the least favourable case, one feature sitting exactly at its
threshold). A retraining trigger needs a feature bad in ``retrain.windows`` (K)
consecutive windows: ``alpha^K`` more per window. With ``R`` windows a week and ``F``
families, false pages per week are at most
``R * (F * (alpha^k + C(N-1, m-1) alpha^m) + alpha^K)``; driftmon solves that for
``alpha`` at the budget.

Families that page: the features (one Holm family per drift window), the outputs
(prediction, score and label drift, one more family) and label drift in labelled windows
(its own window rate). Segment families are reported, not paged, so they do not count.
The rate is observed: each closed window's span in event time feeds an exponentially
weighted mean of the window interval (time windows know theirs exactly).
"""

from __future__ import annotations

import math

from monitor.config import Config

__all__ = ["AlphaBudget", "alpha_for_budget", "pages_per_window_bound"]

WEEK_SECONDS = 7 * 86400.0
MAX_ALPHA = 0.5


def pages_per_window_bound(alpha: float, fire_after: int, flap_windows: int, flap_min_bad: int,
                           retrain_windows: int, families: float) -> float:
    """Upper bound on false pages started per window (see the module docstring)."""
    flap = math.comb(flap_windows - 1, flap_min_bad - 1) * alpha**flap_min_bad if flap_min_bad >= 1 else 0.0
    return families * (alpha**fire_after + flap) + alpha**retrain_windows


def alpha_for_budget(pages_per_week: float, streams: list[tuple[float, float]], fire_after: int, flap_windows: int,
                     flap_min_bad: int, retrain_windows: int) -> float:
    """The largest per-window ``alpha`` whose bound stays within ``pages_per_week``.

    Parameters
    ----------
    streams : list of (windows_per_week, families)
        Each window stream (drift windows, labelled windows) with the number of paging families it carries.

    Examples
    --------
    >>> round(alpha_for_budget(1.0, [(2016.0, 2.0)], 2, 20, 4, 3), 5)
    0.01573
    """
    if not pages_per_week > 0:
        raise ValueError(f"pages_per_week must be > 0, got {pages_per_week!r}")

    def pages(alpha: float) -> float:
        total = 0.0
        for rate, families in streams:
            if rate > 0 and families > 0:
                total += rate * pages_per_window_bound(alpha, fire_after, flap_windows, flap_min_bad,
                                                       retrain_windows, families)
        return total

    if pages(MAX_ALPHA) <= pages_per_week:
        return MAX_ALPHA
    lo, hi = 0.0, MAX_ALPHA
    for _ in range(80):  # bisection: the bound is increasing in alpha
        mid = (lo + hi) / 2.0
        if pages(mid) <= pages_per_week:
            lo = mid
        else:
            hi = mid
    return lo


class AlphaBudget:
    """Derive the per-window level from ``alerts.false_pages_per_week`` and the observed window rate.

    Parameters
    ----------
    config : Config
    smoothing : float
        Weight of each new window's interval in the running mean.
    """

    def __init__(self, config: Config, smoothing: float = 0.1):
        self.config = config
        self.smoothing = smoothing
        alerts = config.alerts
        self.pages_per_week = alerts.false_pages_per_week
        self.fire_after = alerts.fire_after
        self.flap_windows = alerts.flapping.windows
        self.flap_min_bad = max(1, math.ceil(alerts.flapping.min_bad * alerts.flapping.windows))
        self.retrain_windows = alerts.retrain.windows
        has_outputs = any(role != "feature" for role, _spec in config.drift_columns())
        self.families = {"drift": 1.0 + (1.0 if has_outputs else 0.0),
                         "labels": 1.0 if config.schema.label is not None and config.schema.prediction is not None
                         else 0.0}
        self.fixed = {"drift": config.window.duration_seconds}
        self._reset()

    def _reset(self) -> None:
        self.interval: dict[str, float | None] = {"drift": self.fixed["drift"], "labels": None}
        self._solved: tuple | None = None  # (streams, alpha) of the last solve: most windows change nothing

    @property
    def enabled(self) -> bool:
        return self.pages_per_week is not None

    def observe(self, stream: str, start: float | None, end: float | None) -> "AlphaBudget":
        """Count one closed window of ``stream`` ("drift" or "labels") spanning ``start``..``end`` (event time)."""
        if stream == "drift" and self.fixed["drift"] is not None:
            return self
        if start is None or end is None or not end > start:
            return self  # no event times (or one instant): nothing to learn the rate from
        span = float(end - start)
        old = self.interval.get(stream)
        self.interval[stream] = span if old is None else (1 - self.smoothing) * old + self.smoothing * span
        return self

    def windows_per_week(self, stream: str) -> float | None:
        interval = self.interval.get(stream)
        return None if not interval else WEEK_SECONDS / interval

    def alpha(self) -> float:
        """The per-window level now (``drift.alpha`` until a window rate is known, or without a budget)."""
        if not self.enabled:
            return self.config.drift.alpha
        streams = [(rate, self.families[s]) for s in ("drift", "labels")
                   if (rate := self.windows_per_week(s)) is not None]
        if not streams:
            return self.config.drift.alpha
        if self._solved is None or self._solved[0] != streams:
            self._solved = (streams, alpha_for_budget(self.pages_per_week, streams, self.fire_after,
                                                      self.flap_windows, self.flap_min_bad, self.retrain_windows))
        return self._solved[1]

    def state_dict(self) -> dict:
        return {"interval": dict(self.interval)}

    def load_state_dict(self, state: dict) -> "AlphaBudget":
        self._reset()
        for stream, value in (state or {}).get("interval", {}).items():
            if stream in self.interval and not (stream == "drift" and self.fixed["drift"] is not None):
                self.interval[stream] = value
        return self
