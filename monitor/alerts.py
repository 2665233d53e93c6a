"""Drift alerts: the webhook payload and its delivery off the consuming thread."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from monitor import __version__
from monitor.config import Webhook, parse_duration

__all__ = ["drift_payload", "WebhookSender", "DriftAlerter"]

log = logging.getLogger(__name__)


def drift_payload(result: dict, status: str = "firing") -> dict:
    """The JSON body posted to webhooks for a window (firing: its drifted features; resolved: none)."""
    drifted = []
    for name in result["drifted"] if status == "firing" else []:
        r = result["features"][name]
        drifted.append({
            "name": name,
            "method": r["effect"]["method"],
            "score": r["effect"]["value"],
            "threshold": r["effect"]["threshold"],
            "p_value": r["test"]["p_value_adjusted"],
            "test": r["test"]["method"],
        })
    drifted.sort(key=lambda f: -(f["score"] or 0.0))
    window = {k: result["window"][k] for k in ("index", "start", "end", "events")}
    if "offsets" in result["window"]:
        window["offsets"] = result["window"]["offsets"]
    model = result["model"]
    if status == "firing":
        top = ", ".join(f"{f['name']} ({f['method']} {f['score']:.3g} >= {f['threshold']:.3g})" for f in drifted[:5])
        more = f" and {len(drifted) - 5} more" if len(drifted) > 5 else ""
        summary = f"{model}: {len(drifted)} feature(s) drifted in window {window['index']}: {top}{more}"
    else:
        summary = f"{model}: no feature drift in window {window['index']}; resolved"
    return {
        "status": status,
        "alert": "feature_drift",
        "model": model,
        "features": drifted,
        "window": window,
        "baseline_fingerprint": result["baseline_fingerprint"],
        "summary": summary,
        "driftmon_version": __version__,
    }


class WebhookSender:
    """POST JSON payloads to webhooks from a background thread, with a few retries.

    A bounded queue keeps a receiver that is down from growing memory; what does not fit
    is counted as dropped and logged. (Durable delivery is the outbox's job.)

    Parameters
    ----------
    webhooks : list of Webhook
    max_queue : int
    retries : int
        Attempts after the first, with exponential backoff from 0.5 s.
    """

    def __init__(self, webhooks: list[Webhook], max_queue: int = 1000, retries: int = 3):
        self.webhooks = webhooks
        self.max_queue = max_queue
        self.retries = retries
        self.sent: Counter = Counter()  # (sink, alert) -> n
        self.failures: Counter = Counter()  # (sink, reason) -> n
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="driftmon-webhooks", daemon=True)
        self._thread.start()

    def submit(self, payload: dict) -> None:
        for hook in self.webhooks:
            try:
                self._queue.put_nowait((hook, payload))
            except queue.Full:
                self.failures[("webhook", "dropped")] += 1
                log.error("webhook queue full (%d); dropped a %s notification", self.max_queue, payload["alert"])

    def pending(self) -> int:
        return self._queue.qsize()

    def _post(self, hook: Webhook, payload: dict) -> None:
        body = json.dumps(payload, allow_nan=False).encode()
        request = urllib.request.Request(
            hook.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"driftmon/{__version__}"},
        )
        with urllib.request.urlopen(request, timeout=parse_duration(hook.timeout)) as response:
            response.read()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                hook, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            for attempt in range(self.retries + 1):
                try:
                    self._post(hook, payload)
                    self.sent[("webhook", payload["alert"])] += 1
                    break
                except urllib.error.HTTPError as exc:
                    reason = f"http_{exc.code // 100}xx"
                except (urllib.error.URLError, OSError) as exc:
                    reason = "timeout" if "timed out" in str(exc) else "connection"
                self.failures[("webhook", reason)] += 1
                if attempt < self.retries and not self._stop.wait(0.5 * 2**attempt):
                    continue
                log.warning("webhook %s failed (%s); giving up on this notification", hook.url, reason)
                break
            self._queue.task_done()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=1.0)


class DriftAlerter:
    """Fire on a window with drift, resolve on the next clean one (the full lifecycle is issue 3)."""

    def __init__(self, sender: WebhookSender):
        self.sender = sender
        self.firing = False

    def observe(self, result: dict) -> None:
        if result["window"]["status"] != "ok":
            return
        if result["drifted"]:
            self.firing = True
            self.sender.submit(drift_payload(result, "firing"))
        elif self.firing:
            self.firing = False
            self.sender.submit(drift_payload(result, "resolved"))

    def stats(self) -> dict:
        return {
            "firing": {"feature_drift": int(self.firing)},
            "sent": dict(self.sender.sent),
            "failures": dict(self.sender.failures),
            "pending": self.sender.pending(),
        }
