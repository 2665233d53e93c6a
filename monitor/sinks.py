"""Notification sinks: generic webhook (optionally HMAC-signed), Slack, PagerDuty, Alertmanager, Kafka.

Each sink turns driftmon's notification (the generic payload) into its receiver's
format and sends it, raising :class:`DeliveryError` with a bounded reason label
on failure. Delivery threads (one per sink) drain the outbox with exponential
backoff and jitter, off the consuming thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timezone

from monitor import __version__
from monitor.config import ConfigError, KafkaConfig, Sink, read_secret
from monitor.outbox import Outbox

__all__ = ["DeliveryError", "Dispatcher", "make_sink"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Driftmon-Signature"


class DeliveryError(Exception):
    """A failed send. ``reason`` is a metric label; ``retry`` says whether trying again can help."""

    def __init__(self, reason: str, message: str, retry: bool = True):
        super().__init__(message)
        self.reason = reason
        self.retry = retry


class HttpSink:
    """POST JSON to a URL."""

    def __init__(self, cfg: Sink):
        self.cfg = cfg
        self.name = cfg.name
        self.timeout = cfg.timeout_seconds

    def url(self) -> str:
        return self.cfg.url

    def body(self, note: dict) -> object:
        return note

    def headers(self, body: bytes) -> dict:
        return {}

    def send(self, note: dict) -> None:
        self.post(self.body(note))

    def post(self, obj: object) -> None:
        body = json.dumps(obj, allow_nan=False, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"driftmon/{__version__}",
                   **self.headers(body)}
        request = urllib.request.Request(self.url(), data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            # 4xx means the receiver will never take this body, except for throttling and timeouts.
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise DeliveryError(f"http_{exc.code // 100}xx", f"HTTP {exc.code} from {self.name}", retry) from None
        except (urllib.error.URLError, OSError) as exc:
            text = str(getattr(exc, "reason", exc))
            reason = "timeout" if "timed out" in text else "connection"
            raise DeliveryError(reason, f"{self.name}: {text}") from None


class WebhookSink(HttpSink):
    """driftmon's own JSON payload; with a secret, an HMAC-SHA256 of the body in ``X-Driftmon-Signature``."""

    def __init__(self, cfg: Sink):
        super().__init__(cfg)
        secret = read_secret(cfg.hmac_secret_env, cfg.hmac_secret_file, "alerts.sinks.hmac_secret_env", required=True)
        self.secret = secret.encode() if secret else None

    def headers(self, body: bytes) -> dict:
        if self.secret is None:
            return {}
        return {SIGNATURE_HEADER: "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()}


class SlackSink(HttpSink):
    """Slack incoming-webhook format."""

    def body(self, note: dict) -> dict:
        if note["status"] == "resolved":
            lines = [f":white_check_mark: *RESOLVED* {note['summary']}"]
        else:
            icon = ":rotating_light:" if note["severity"] == "critical" else ":warning:"
            lines = [f"{icon} *FIRING* [{note['severity']}] {note['summary']}"]
        for f in note.get("features", [])[:10]:
            lines.append(f"• `{f['name']}` {f['method']} {f['score']:.3g} (threshold {f['threshold']:.3g})")
        lines.append(f"<{note['runbook_url']}|runbook> · dedup `{note['dedup_key']}`")
        return {"text": "\n".join(lines)}


class PagerDutySink(HttpSink):
    """PagerDuty Events API v2: trigger and resolve, keyed by the dedup key."""

    DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"

    def __init__(self, cfg: Sink):
        super().__init__(cfg)
        self.routing_key = read_secret(cfg.routing_key_env, cfg.routing_key_file, "alerts.sinks.routing_key_env",
                                       required=True)

    def url(self) -> str:
        return self.cfg.url or self.DEFAULT_URL

    def body(self, note: dict) -> dict:
        event = {"routing_key": self.routing_key, "dedup_key": note["dedup_key"],
                 "event_action": "trigger" if note["status"] == "firing" else "resolve"}
        if note["status"] == "firing":
            event["payload"] = {
                "summary": note["summary"][:1024],
                "source": f"driftmon/{note['model']}",
                "severity": note["severity"],
                "component": note["model"],
                "group": note["alert"],
                "class": note["alert"],
                "custom_details": {k: note[k] for k in ("subject", "features", "window", "baseline_fingerprint",
                                                        "flapping", "flap", "evidence", "idempotency_key",
                                                        "config_hash") if k in note},
            }
            event["links"] = [{"href": note["runbook_url"], "text": "runbook"}]
        return event


def _am_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class AlertmanagerSink(HttpSink):
    """Alertmanager v2 API (``/api/v2/alerts``), so pages follow the team's Alertmanager routing.

    As Prometheus does: a firing alert's ``endsAt`` is ``alertmanager_ttl`` ahead, and every active alert
    is re-sent every ``alertmanager_resend`` on the wall clock (:meth:`offer`, then :meth:`resend` from
    the delivery thread), so it stays active exactly as long as driftmon holds it firing. Resolved
    alerts are re-sent for :attr:`RESOLVED_RESEND` seconds, so a resolve that Alertmanager did not
    take (its clock behind ours) still lands. The identity (labels) includes ``severity``; when an
    alert escalates, the warning alert is resolved in the same request that fires the critical one.
    """

    RESOLVED_RESEND = 15 * 60.0  # Prometheus' resolvedRetention

    def __init__(self, cfg: Sink):
        super().__init__(cfg)
        self.ttl = cfg.alertmanager_ttl_seconds
        self._lock = threading.Lock()
        self._offered: dict[str, dict] | None = None  # dedup key -> the engine's firing alert, at the last tick
        self._resolved: dict[tuple, dict] = {}  # labels -> resolved alert, re-sent until RESOLVED_RESEND passed

    def url(self) -> str:
        return self.cfg.url.rstrip("/") + "/api/v2/alerts"

    @staticmethod
    def labels(note: dict, severity: str | None = None) -> dict:
        alertname = "Driftmon" + "".join(part.title() for part in note["alert"].split("_"))
        labels = {"alertname": alertname, "model": note["model"], "severity": severity or note["severity"],
                  "alert": note["alert"], "subject": note["subject"]}
        if note["alert"] in ("feature_drift", "data_quality") and note["subject"] not in ("invalid_messages",):
            labels["feature"] = note["subject"].split(":")[0]
        return labels

    def alerts(self, note: dict, now: float) -> list[dict]:
        """The Alertmanager alerts for one notification, with wall-clock times (``now`` is the send time)."""
        starts = min(_parse_time(note["starts_at"]) or now, now)
        if note["status"] == "resolved":
            # endsAt must not be in Alertmanager's future, or it keeps the alert until its TTL
            ends = min(_parse_time(note["ends_at"]) or now, now)
        else:
            ends = now + self.ttl
        annotations = {"summary": note["summary"], "description": note["description"],
                       "runbook_url": note["runbook_url"], "dedup_key": note["dedup_key"]}
        if note.get("flapping"):
            annotations["flapping"] = "true"
        out = [{"labels": self.labels(note), "annotations": annotations, "startsAt": _am_time(starts),
                "endsAt": _am_time(ends), "generatorURL": note["runbook_url"]}]
        if note["status"] == "firing" and note.get("escalated_from"):
            out.insert(0, {**out[0], "labels": self.labels(note, note["escalated_from"]), "endsAt": _am_time(now)})
        return out

    def body(self, note: dict) -> list:
        return self.alerts(note, time.time())

    def send(self, note: dict) -> None:
        body = self.body(note)
        self.post(body)
        self._remember(body, time.time())

    def _remember(self, alerts: list[dict], now: float) -> None:
        with self._lock:
            for alert in alerts:
                key = tuple(sorted(alert["labels"].items()))
                if _parse_time(alert["endsAt"]) <= now:
                    self._resolved[key] = alert
                else:
                    self._resolved.pop(key, None)  # firing again (a new episode with the same labels)

    def offer(self, notes: list[dict]) -> None:
        """The engine's firing alerts now (wall-clock tick): the delivery thread re-sends them."""
        with self._lock:
            self._offered = {n["dedup_key"]: n for n in notes}

    def offered(self) -> bool:
        """Whether a resend is waiting."""
        with self._lock:
            return self._offered is not None

    def supersede(self, dedup_key: str) -> None:
        """A newer notification for this alert is queued: the offered copy must not overtake it."""
        with self._lock:
            if self._offered is not None:
                self._offered.pop(dedup_key, None)

    def resend(self, pending: set[str]) -> bool:
        """Re-send the offered alerts (except those with notifications still queued) and recent resolves.

        Returns False when nothing was offered since the last call.
        """
        with self._lock:
            offered, self._offered = self._offered, None
            if offered is None:
                return False
            now = time.time()
            body = [a for key, n in offered.items() if key not in pending for a in self.alerts(n, now)
                    if _parse_time(a["endsAt"]) > now]
            firing = {tuple(sorted(a["labels"].items())) for a in body}
            for key, alert in list(self._resolved.items()):
                if now - _parse_time(alert["endsAt"]) > self.RESOLVED_RESEND:
                    del self._resolved[key]
                elif key not in firing and alert["annotations"]["dedup_key"] not in pending:
                    body.append(alert)
        if body:
            self.post(body)
        return True


class KafkaSink:
    """Produce notifications to a topic, keyed by the idempotency key (or dedup key)."""

    def __init__(self, cfg: Sink, kafka: KafkaConfig | None):
        if kafka is None:
            raise ConfigError("alerts.sinks", "a kafka sink needs the `kafka` section for its brokers")
        self.cfg = cfg
        self.name = cfg.name
        self.kafka = kafka
        self._producer = None

    def send(self, note: dict) -> None:
        from monitor.kafka_client import ProduceError, make_producer

        try:
            if self._producer is None:
                self._producer = make_producer(self.kafka)
            key = (note.get("idempotency_key") or note["dedup_key"]).encode()
            body = json.dumps(note, allow_nan=False, sort_keys=True).encode()
            self._producer.send(self.cfg.topic, body, key=key, wait_s=self.cfg.timeout_seconds)
        except ProduceError as exc:
            raise DeliveryError("kafka", f"{self.name}: {exc}") from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout_s=5)


def make_sink(cfg: Sink, kafka: KafkaConfig | None = None):
    kinds = {"webhook": WebhookSink, "slack": SlackSink, "pagerduty": PagerDutySink,
             "alertmanager": AlertmanagerSink}
    if cfg.type == "kafka":
        return KafkaSink(cfg, kafka)
    return kinds[cfg.type](cfg)


class Dispatcher:
    """Enqueue notifications in the outbox and deliver them, one thread per sink.

    Parameters
    ----------
    sinks : list of Sink
    outbox : Outbox
    kafka : KafkaConfig, optional
        Brokers for kafka sinks.
    backoff_initial, backoff_max : float
        Seconds; retry n waits min(max, initial * 2**n) with full jitter.
    seed : int
        Seed of the jitter.
    """

    def __init__(self, sinks: list[Sink], outbox: Outbox, kafka: KafkaConfig | None = None,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0, seed: int = 0):
        self.configs = sinks
        self.outbox = outbox
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.seed = seed
        self.sinks = [make_sink(cfg, kafka) for cfg in sinks]  # secrets are checked here, at start
        self.sent: Counter = Counter()  # (sink, alert) -> n
        self.failures: Counter = Counter()  # (sink, reason) -> n
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unmarked: set[int] = set()  # rows delivered whose outbox update failed (a full disk)

    def submit(self, notes: list[dict]) -> None:
        """Make notifications durable in the outbox (on the caller's thread) and wake the senders."""
        for note in notes:
            targets = [cfg.name for cfg in self.configs if note["alert"] in cfg.kinds()]
            if targets:
                self.outbox.put(targets, note)
            for sink in self.sinks:
                if isinstance(sink, AlertmanagerSink):
                    sink.supersede(note["dedup_key"])
        if notes:
            with self._wake:
                self._wake.notify_all()

    def refresh(self, sink_name: str, active: list[dict]) -> None:
        """Hand the currently firing alerts to an Alertmanager sink for its wall-clock resend."""
        for cfg, sink in zip(self.configs, self.sinks):
            if cfg.name == sink_name and isinstance(sink, AlertmanagerSink):
                sink.offer([n for n in active if n["alert"] in cfg.kinds()])
        with self._wake:
            self._wake.notify_all()

    def _resend(self, sink) -> None:
        """Re-send an Alertmanager sink's active alerts, skipping alerts with notifications still queued
        (those go first, in order); a failure is counted, and the next tick tries again."""
        if not isinstance(sink, AlertmanagerSink) or not sink.offered():
            return
        try:
            sink.resend(self.outbox.pending_keys(sink.name))
        except DeliveryError as exc:
            self.failures[(sink.name, exc.reason)] += 1
            log.warning("%s: re-sending active alerts failed (%s); the next tick tries again", sink.name, exc)
        except Exception as exc:  # a bug must not kill the delivery thread
            self.failures[(sink.name, "error")] += 1
            log.exception("%s: unexpected error re-sending active alerts: %s", sink.name, exc)

    def start(self) -> "Dispatcher":
        for i, sink in enumerate(self.sinks):
            thread = threading.Thread(target=self._run, args=(sink, random.Random(self.seed + i)),
                                      name=f"driftmon-sink-{sink.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _wait(self, seconds: float) -> None:
        with self._wake:
            self._wake.wait(timeout=max(0.0, min(seconds, 1.0)))

    def _run(self, sink, rng: random.Random) -> None:
        while not self._stop.is_set():
            try:
                self._step(sink, rng)
            except sqlite3.Error:  # the outbox cannot be written (a full disk; counted there): try again
                self._wait(1.0)   # later; a notification sent but not marked is sent again (at least once)

    def _step(self, sink, rng: random.Random) -> None:
        """One delivery attempt of a sink's oldest pending notification (or a wait)."""
        head = self.outbox.head(sink.name)
        if head is None:
            self._resend(sink)
            self._wait(1.0)
            return
        row_id, note, attempts, next_attempt = head
        if row_id in self._unmarked:  # sent, but marking it failed: mark it, do not send it again
            self.outbox.done(row_id)
            self._unmarked.discard(row_id)
            return
        delay = next_attempt - time.time()
        if delay > 0:
            self._resend(sink)  # alerts with nothing queued stay active while a queued one backs off
            self._wait(delay)
            return
        try:
            sink.send(note)
        except DeliveryError as exc:
            self.failures[(sink.name, exc.reason)] += 1
            if not exc.retry:
                log.error("%s rejected %s (%s); dropping it", sink.name, note["notification_id"], exc)
                self.outbox.done(row_id)
                return
            backoff = min(self.backoff_max, self.backoff_initial * 2 ** min(attempts, 30))
            self.outbox.retry_later(row_id, time.time() + rng.uniform(0.5, 1.0) * backoff)
            if attempts == 0 or attempts % 10 == 0:
                log.warning("%s: delivery of %s failed (%s); retrying with backoff", sink.name,
                            note["notification_id"], exc)
            return
        except Exception as exc:  # a bug in one sink must not kill its thread silently
            self.failures[(sink.name, "error")] += 1
            log.exception("%s: unexpected error sending %s: %s", sink.name, note["notification_id"], exc)
            self.outbox.retry_later(row_id, time.time() + self.backoff_max)
            return
        self.sent[(sink.name, note["alert"])] += 1
        self._unmarked.add(row_id)
        self.outbox.done(row_id)
        self._unmarked.discard(row_id)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to empty; True if it did."""
        deadline = time.monotonic() + timeout
        while self.outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.outbox.pending() == 0

    def close(self, timeout: float = 2.0) -> None:
        """Try to deliver what is pending for up to ``timeout`` seconds, then stop; the rest stays in the outbox."""
        if self.sinks:
            self.drain(timeout)
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for sink in self.sinks:
            if hasattr(sink, "close"):
                sink.close()
