"""The alert lifecycle: from window results to firing, repeated and resolved notifications.

Every alert has a stable dedup key (model/kind/subject). It fires after
``fire_after`` consecutive bad windows, re-notifies at most every
``repeat_interval`` while firing (or at once when it escalates to critical),
and resolves after ``resolve_after`` consecutive clean windows. A subject whose
state changes in at least ``flapping.high`` of its last ``flapping.windows``
windows is flapping: it fires once as intermittent and holds until the share
falls to ``flapping.low`` (see docs/alerting.md).

The lifecycle runs on the windows (event time), so a replay of the same stream
gives the same notifications as the live daemon; only ``starts_at``/``ends_at``
come from the engine's clock (the wall clock in the daemon).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from monitor.config import ALERT_KINDS, Config
from monitor.registry import LABELLED, Episode, alert_specs, findings
from monitor.values import iso

__all__ = ["AlertEngine", "Evidence", "collect_evidence", "performance_evidence", "window_end_seconds"]


class Evidence:
    """What one window says about one alert subject."""

    __slots__ = ("bad", "ratio", "details")

    def __init__(self, bad: bool, ratio: float, details: dict):
        self.bad = bad
        self.ratio = ratio  # evidence / threshold; >= critical_ratio is critical
        self.details = details


def _ratio(value, threshold) -> float:
    if value is None or not threshold:
        return 0.0
    return float(value) / float(threshold)


def collect_evidence(result: dict, config: Config) -> dict[tuple, Evidence]:
    """(kind, subject) -> Evidence for every alert subject this window speaks about: what the registered
    detectors declare (monitor/registry.py), in registry order, then the window's share of invalid messages."""
    out: dict[tuple, Evidence] = {}
    for f in findings(config, result):
        out[(f.kind, f.subject)] = Evidence(f.bad, f.ratio, f.details)
    dq = config.alerts.data_quality
    window = result["window"]
    invalid = window.get("invalid", 0)
    seen = window["events"] + invalid
    if seen:
        share = invalid / seen
        out[("data_quality", "invalid_messages")] = Evidence(
            share >= dq.invalid_ratio, _ratio(share, dq.invalid_ratio),
            {"name": "invalid_messages", "check": "invalid", "value": share, "threshold": dq.invalid_ratio})
    return out


def performance_evidence(result: dict, config: Config) -> dict[tuple, Evidence]:
    """(kind, subject) -> Evidence from a performance window (see docs/performance.md): what the labelled
    windows' detectors declare (monitor/registry.py LABELLED), then the error-rate detector's change (ADWIN
    watches the error stream across windows, so it is the tracker's, not a window detector's)."""
    out: dict[tuple, Evidence] = {}
    for f in findings(config, result, LABELLED):
        out[(f.kind, f.subject)] = Evidence(f.bad, f.ratio, f.details)
    errors = result.get("error_rate")
    if errors is not None:
        out[("performance_drop", "error_rate")] = Evidence(
            bool(errors["drift_detected"]), 2.0 if errors["drift_detected"] else 0.0,
            {"metric": "error_rate", "value": errors["estimate"], "test": "adwin", "detections": errors["detections"]})
    return out


def window_end_seconds(result: dict) -> float:
    """The window's end as Unix time (now, when the window has no event times)."""
    end = result["window"].get("end")
    if end is None:
        return time.time()
    return datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp()


class _State:
    """One alert subject's lifecycle. ``history`` holds its last judged windows (True = bad) for flapping."""

    __slots__ = ("kind", "subject", "bad", "good", "firing", "severity", "starts_at", "last_sent", "episode", "seq", "details",
                 "first_window", "window", "history", "flapping", "sustained")

    def __init__(self, kind: str = "", subject: str = ""):
        self.kind = kind
        self.subject = subject
        self.bad = 0  # consecutive bad windows
        self.good = 0  # consecutive clean windows
        self.firing = False
        self.severity = None
        self.starts_at = None  # when it fired, on the engine's clock (wall clock in the daemon)
        self.last_sent = None  # event time of the last notification (repeat_interval)
        self.episode = None  # event time (ISO) of the window that fired it: the episode's identity
        self.seq = 0
        self.details = None
        self.first_window = None
        self.window = None  # the last window that spoke about it (index, start, end, events, offsets)
        self.history = []
        self.flapping = False
        self.sustained = False  # bad for retrain.windows windows in a row since its last clean spell

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict) -> "_State":
        s = cls()
        for k in cls.__slots__:
            if k in d:
                setattr(s, k, d[k])
        if isinstance(s.episode, int):  # a checkpoint from before episodes were named by event time
            s.episode = f"{s.episode}"
        return s


#: Sections of docs/runbook.md (GitHub anchors) of the engine's own kinds (the detectors' kinds declare theirs
#: in monitor/registry.py); data-quality notifications link to the section of their check.
_RUNBOOK_ANCHOR = {
    "retrain_recommended": "driftmonretrainrecommended",
    "data_quality": "driftmoninvalidmessageshigh",
    "data_quality:missing": "driftmonfeaturemissingratiohigh",
    "data_quality:out_of_range": "driftmonfeatureoutofrangeratiohigh",
    "data_quality:unseen": "driftmonfeatureunseencategories",
}


class AlertEngine:
    """Turn window results into notifications, with dedup, repeat, flapping and resolve.

    Parameters
    ----------
    config : Config
    baseline_fingerprint : str
    clock : callable, optional
        Returns the time (Unix seconds) put in ``starts_at``/``ends_at``: the daemon passes ``time.time``,
        as Prometheus does. Without it they are the windows' ends (event time), which makes a replay
        reproducible. The lifecycle itself (fire, repeat, resolve) always runs on the windows.
    """

    def __init__(self, config: Config, baseline_fingerprint: str, clock: Callable[[], float] | None = None):
        self.config = config
        self.baseline_fingerprint = baseline_fingerprint
        self.clock = clock
        self.alerts = config.alerts
        self.config_hash = config.hash()
        self.repeat_seconds = self.alerts.repeat_interval_seconds
        self.weights = {f.name: f.weight for f in config.schema.features}
        self.key_features = {f.name for f in config.schema.features if f.key}
        self._reset()

    def _reset(self) -> None:
        self.states: dict[str, _State] = {}
        self.recent = deque(maxlen=max(self.alerts.retrain.windows, self.alerts.fire_after) + 1)

    # ---- lifecycle ----------------------------------------------------------------------------------

    def dedup_key(self, kind: str, subject: str) -> str:
        return f"{self.config.model}/{kind}/{subject}"

    def _wall(self, event_time: float) -> float:
        return event_time if self.clock is None else self.clock()

    def observe(self, result: dict) -> list[dict]:
        """Advance every alert with one window's result; return the notifications to send, in order."""
        now = window_end_seconds(result)
        info = _window_info(result)
        self.recent.append(info)
        evidence = collect_evidence(result, self.config)
        out = []
        for (kind, subject), ev in evidence.items():
            out += self._step(kind, subject, ev, now, info)
        retrain = self._retrain_evidence(evidence)
        if retrain is not None:
            # Its inputs carry the hysteresis already (a feature counts until its own alert resolves),
            # so the trigger fires and ends with them, without a second delay, and does not flap.
            out += self._step("retrain_recommended", "model", retrain, now, info, fire_after=1, resolve_after=1,
                              flap=False)
        return out

    def observe_performance(self, result: dict) -> list[dict]:
        """Advance performance, fairness and label-drift alerts with one labelled window's result."""
        now = window_end_seconds(result)
        info = _window_info(result)
        out = []
        for (kind, subject), ev in performance_evidence(result, self.config).items():
            out += self._step(kind, subject, ev, now, info)
        return out

    def _severity(self, ratio: float) -> str:
        return "critical" if ratio >= self.alerts.critical_ratio else "warning"

    def _flap(self, st: _State, bad: bool) -> None:
        """Nagios-style flap detection: the share of state changes between consecutive judged windows."""
        policy = self.alerts.flapping
        st.history.append(bool(bad))
        del st.history[:-policy.windows]
        h = st.history
        share = sum(a != b for a, b in zip(h, h[1:])) / (policy.windows - 1)
        if not st.flapping and share >= policy.high and sum(h) >= policy.min_bad * policy.windows:
            st.flapping = True
        elif st.flapping and share <= policy.low:
            st.flapping = False

    def _step(self, kind, subject, ev: Evidence, now: float, window: dict, fire_after: int | None = None,
              resolve_after: int | None = None, flap: bool = True) -> list[dict]:
        fire_after = self.alerts.fire_after if fire_after is None else fire_after
        resolve_after = self.alerts.resolve_after if resolve_after is None else resolve_after
        key = self.dedup_key(kind, subject)
        st = self.states.get(key)
        if st is None:
            if not ev.bad:
                return []  # nothing to remember about a subject that was never bad
            st = self.states[key] = _State(kind, subject)
        if flap:
            self._flap(st, ev.bad)
        st.window = window
        if ev.bad:
            st.bad += 1
            st.good = 0
            st.details = ev.details
            if st.bad == 1:
                st.first_window = window.get("index")
            if st.bad >= self.alerts.retrain.windows:
                st.sustained = True
            severity = self._severity(ev.ratio)
            if not st.firing:
                # A flapping subject fires on its next bad window: one "intermittent drift" page.
                if st.bad >= fire_after or st.flapping:
                    st.firing, st.severity, st.starts_at = True, severity, self._wall(now)
                    st.episode, st.seq = iso(now), 0
                    return [self._notify(kind, subject, st, "firing", now)]
                return []
            # Severity only rises within an episode: Alertmanager's identity includes it, and the sink
            # resolves the warning alert when the critical one replaces it.
            escalated = severity == "critical" and st.severity == "warning"
            if escalated:
                st.severity = "critical"
                return [self._notify(kind, subject, st, "firing", now, escalated_from="warning")]
            if now - st.last_sent >= self.repeat_seconds:
                return [self._notify(kind, subject, st, "firing", now)]
            return []
        st.good += 1
        st.bad = 0
        if st.good < resolve_after or st.flapping:
            return []  # a flapping alert holds until the flapping ends
        st.sustained = False
        out = []
        if st.firing:
            st.firing = False
            out.append(self._notify(kind, subject, st, "resolved", now))
            st.severity, st.episode, st.seq, st.details, st.starts_at = None, None, 0, None, None
        if not any(st.history):
            del self.states[key]  # nothing left to remember: the next episode starts clean
        return out

    def _retrain_evidence(self, evidence: dict) -> Evidence | None:
        policy = self.alerts.retrain
        sustained = []
        for name in self.weights:
            st = self.states.get(self.dedup_key("feature_drift", name))
            if st is not None and st.sustained:
                sustained.append(name)
        total = sum(self.weights.values()) or 1.0
        share = sum(self.weights[n] for n in sustained) / total
        keys = sorted(set(sustained) & self.key_features)
        pred = evidence.get(("prediction_drift", "prediction"))
        pred_state = self.states.get(self.dedup_key("prediction_drift", "prediction"))
        # A single noisy window must not start a retraining: the prediction alert itself must be firing
        # (and then its own hysteresis, not one clean window, ends it).
        critical_prediction = bool(policy.on_critical_prediction_drift and pred_state is not None
                                   and pred_state.firing and pred_state.severity == "critical")
        have_any = any(k[0] == "feature_drift" for k in evidence) or pred is not None
        if not have_any:
            return None  # an empty or thin window says nothing either way
        bad = share >= policy.drift_weight_share or bool(keys) or critical_prediction
        # Every feature in sustained drift, and for context those drifting in this window without it yet
        # (they do not count towards the share).
        features = []
        for name in self.weights:
            st = self.states.get(self.dedup_key("feature_drift", name))
            now_ev = evidence.get(("feature_drift", name))
            drifting_now = bool(now_ev is not None and now_ev.bad)
            if st is None or not (name in sustained or drifting_now):
                continue
            features.append({**(st.details or {"name": name}), "weight": self.weights[name],
                             "sustained": name in sustained, "drifting_now": drifting_now,
                             "firing": st.firing, "severity": st.severity})
        features.sort(key=lambda d: (not d["sustained"], -(d.get("score") or 0.0)))
        prediction = None
        if pred_state is not None and pred_state.details is not None:
            prediction = {**pred_state.details, "firing": pred_state.firing, "severity": pred_state.severity,
                          "drifting_now": bool(pred is not None and pred.bad)}
        elif pred is not None:
            prediction = {**pred.details, "firing": False, "severity": None, "drifting_now": bool(pred.bad)}
        reasons = []
        if share >= policy.drift_weight_share:
            reasons.append(f"{share:.0%} of the feature weight in sustained drift (policy {policy.drift_weight_share:.0%})")
        if keys:
            reasons.append(f"key feature(s) in sustained drift: {', '.join(keys)}")
        if critical_prediction:
            reasons.append(f"critical prediction drift ({prediction['method']} {prediction['score']:.3g} >= "
                           f"{prediction['threshold']:.3g})")
        ratio = max(share / policy.drift_weight_share, 2.0 if (keys or critical_prediction) else 0.0)
        return Evidence(bad, ratio, {"drift_weight_share": share, "sustained_features": features,
                                     "weights": {n: self.weights[n] for n in sustained}, "key_features": keys,
                                     "prediction": prediction, "critical_prediction_drift": critical_prediction,
                                     "reasons": reasons, "windows": list(self.recent)[-policy.windows:]})

    # ---- payloads -----------------------------------------------------------------------------------

    @staticmethod
    def _anchor(kind: str, subject: str) -> str:
        spec = alert_specs().get(kind)
        if spec is not None:
            return spec.anchor
        check = subject.rsplit(":", 1)[-1] if kind == "data_quality" and ":" in subject else None
        return _RUNBOOK_ANCHOR.get(f"{kind}:{check}", _RUNBOOK_ANCHOR[kind])

    def idempotency_key(self, episode: str) -> str:
        """One retraining episode's key: model, baseline and the event time it started (no counters)."""
        text = f"{self.config.model}|{self.baseline_fingerprint}|{episode}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _notify(self, kind, subject, st: _State, status, now, escalated_from: str | None = None) -> dict:
        st.last_sent = now
        st.seq += 1
        payload = self._payload(kind, subject, st, status, self._wall(now) if status == "resolved" else None)
        if escalated_from:
            payload["escalated_from"] = escalated_from
        return payload

    def _payload(self, kind, subject, st: _State, status, ends_at: float | None) -> dict:
        key = self.dedup_key(kind, subject)
        model = self.config.model
        details = st.details or {}
        window = dict(st.window or {})
        flap = self._flap_info(st)
        specs = alert_specs()
        payload = {
            "status": status,
            "alert": kind,
            "model": model,
            "subject": subject,
            "severity": st.severity,
            "dedup_key": key,
            "notification_id": f"{key}#{st.episode}.{st.seq}",
            "starts_at": iso(st.starts_at),
            "ends_at": iso(ends_at),
            "flapping": st.flapping,
            "runbook_url": f"{self.alerts.runbook_url}#{self._anchor(kind, subject)}",
            "window": window,
            "baseline_fingerprint": self.baseline_fingerprint,
            "features": [],
        }
        if flap is not None:
            payload["flap"] = flap
        intermittent = ""
        if st.flapping and flap is not None:
            intermittent = (f"; intermittent: bad in {flap['bad_windows']} of the last {flap['windows']} windows, "
                            f"state changed {flap['changes']} times")
        if kind in specs:  # worded by the detector's registry entry
            spec = specs[kind]
            firing = status == "firing"
            payload[spec.section] = ([details] if firing else []) if spec.listed else details
            payload["summary"] = (spec.summary(model, subject, details, firing, Episode(st.bad, st.flapping))
                                  + (intermittent if firing else ""))
        elif kind == "data_quality":  # the features' checks and the window's invalid share
            payload["check"] = details
            payload["summary"] = (f"{model}: data quality: {details.get('name')} {details.get('check')} share "
                                  f"{details.get('value', 0):.3g} >= {details.get('threshold', 0):.3g}" + intermittent
                                  if status == "firing" else f"{model}: data quality of {subject} recovered; resolved")
        else:
            evidence = details
            payload["features"] = evidence.get("sustained_features", [])
            payload["evidence"] = {
                "reasons": evidence.get("reasons", []),
                "drift_weight_share": evidence.get("drift_weight_share"),
                "weights": evidence.get("weights", {}),
                "key_features": evidence.get("key_features", []),
                "prediction": evidence.get("prediction"),
                "critical_prediction_drift": evidence.get("critical_prediction_drift", False),
                "windows": evidence.get("windows", []),
                "episode_start": st.episode,
            }
            payload["config_hash"] = self.config_hash
            payload["idempotency_key"] = self.idempotency_key(st.episode)
            payload["summary"] = (f"{model}: retraining recommended: {'; '.join(evidence.get('reasons', []))}"
                                  if status == "firing" else f"{model}: retraining no longer recommended; resolved")
        payload["description"] = payload["summary"]
        return payload

    def _flap_info(self, st: _State) -> dict | None:
        if not st.history:
            return None
        h = st.history
        return {"windows": len(h), "bad_windows": sum(h), "changes": sum(a != b for a, b in zip(h, h[1:])),
                "share": sum(a != b for a, b in zip(h, h[1:])) / (self.alerts.flapping.windows - 1)}

    # ---- what metrics, checkpoints and the Alertmanager resend read ----------------------------------

    def active(self) -> list[dict]:
        """The firing alerts as of now, each as its latest firing notification (for wall-clock resends)."""
        out = []
        for st in self.states.values():
            if st.firing:
                out.append(self._payload(st.kind, st.subject, st, "firing", None))
        return out

    def firing(self) -> dict[str, int]:
        """Alert kind -> number of alerts firing (every kind present, registered detectors' too, zeros included)."""
        counts = {kind: 0 for kind in (*ALERT_KINDS, *alert_specs())}
        for st in list(self.states.values()):  # a scrape thread reads while the consumer adds states
            if st.firing:
                counts[st.kind] += 1
        return counts

    def flapping(self) -> dict[str, int]:
        """Alert kind -> number of subjects flapping (every kind present, zeros included)."""
        counts = {kind: 0 for kind in (*ALERT_KINDS, *alert_specs())}
        for st in list(self.states.values()):  # likewise read by scrapes
            if st.flapping:
                counts[st.kind] += 1
        return counts

    def state_dict(self) -> dict:
        return {"states": {k: s.to_dict() for k, s in self.states.items()}, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> "AlertEngine":
        self._reset()
        self.states = {}
        prefix = f"{self.config.model}/"
        for key, d in state["states"].items():
            st = self.states[key] = _State.from_dict(d)
            if not st.kind:  # a checkpoint from before states knew their kind and subject
                st.kind, _, st.subject = key[len(prefix):].partition("/")
        self.recent.extend(state["recent"])
        return self


def _window_info(result: dict) -> dict:
    window = result["window"]
    info = {k: window.get(k) for k in ("index", "start", "end", "events")}
    if window.get("offsets"):
        info["offsets"] = window["offsets"]
    return info
