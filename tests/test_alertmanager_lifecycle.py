"""Alert semantics end to end: `driftmon run` on a real broker, a real Alertmanager, recording receivers.

What the Alertmanager holds (its API) and what it notifies (a recording webhook receiver) are checked
after the daemon's own notifications are delivered, so no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests.daemon_proc import DaemonProcess
from tests.helpers import alertmanager as run_alertmanager
from tests.helpers import read_jsonl, write_jsonl, write_setup
from tests.receiver import Receiver
from tests.test_daemon_integration import produce
from tests.test_replay_integration import assert_same, comparable

pytestmark = pytest.mark.integration


@pytest.fixture
def alertmanager(tmp_path, receiver):
    """Alertmanager 0.25 with a short resolve_timeout, notifying the receiver at /am."""
    with run_alertmanager(tmp_path, receiver.url + "/am", ["alertname", "model", "subject"],
                          resolve_timeout="5s") as url:
        yield url


def active(am_url: str) -> list[dict]:
    """The alerts Alertmanager holds unresolved now."""
    with urllib.request.urlopen(am_url + "/api/v2/alerts", timeout=5) as r:
        return json.loads(r.read())


def scaled(messages: list[bytes], factor: float) -> list[bytes]:
    """car_value times ``factor``: a drift of chosen strength in one feature."""
    out = []
    for m in messages:
        d = json.loads(m)
        d["car_value"] = round(d["car_value"] * factor, 2)
        out.append(json.dumps(d, separators=(",", ":")).encode())
    return out


def stream(pattern: list, size: int, start: float, seed: int = 7) -> list[bytes]:
    """Messages for consecutive windows: "B" drifted (car_value, salary_range, debt ratio), "C" clean,
    a float: car_value scaled by it. Event times run at 1000 messages a second from ``start``."""
    synth = car_loan(seed=seed)
    out = []
    for i, w in enumerate(pattern):
        t = start + i * size / 1000.0
        if w == "B":
            out += synth.messages(size, drift_at=0, start_time=t, id_prefix=f"w{i}")
        elif w == "C":
            out += synth.messages(size, start_time=t, id_prefix=f"w{i}")
        else:
            out += scaled(synth.messages(size, start_time=t, id_prefix=f"w{i}"), w)
    return out


def start_daemon(tmp_path, broker, receiver, am_url, size, ttl="60s", resend="1s", **alerts):
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    kafka = {"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": f"driftmon-{topic}",
             "max_poll_interval_ms": 6000, "session_timeout_ms": 6000, "commit_interval": "200ms"}
    sinks = [{"type": "alertmanager", "name": "am", "url": am_url, "alertmanager_ttl": ttl,
              "alertmanager_resend": resend, "timeout": "2s"},
             {"type": "webhook", "name": "hook", "url": receiver.url + "/hook"}]
    port = free_port()
    path, config = write_setup(tmp_path, car_loan(seed=1), window={"size": size}, kafka=kafka,
                               http={"port": port}, state={"dir": "state", "checkpoint_interval": "1s"},
                               alerts={"repeat_interval": "1h", "sinks": sinks, **alerts})
    daemon = DaemonProcess(path, port, str(tmp_path / "daemon.log")).start()
    return topic, path, daemon


def logged_windows(daemon: DaemonProcess) -> int:
    path = os.path.join(os.path.dirname(daemon.config_path), "state", "windows.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(1 for line in fh if line.strip())


def delivered(daemon: DaemonProcess, windows: int, timeout: float = 120) -> None:
    """Wait until ``windows`` windows are emitted and every notification left the outbox.

    A window is counted in /status when it closes, but its notifications reach the outbox only once the
    checkpoint holding them is durable; the window log is written after that, so it is what we wait on.
    """
    daemon.wait(lambda: daemon.status()["windows_evaluated"] >= windows, timeout, f"{windows} windows")
    daemon.wait(lambda: logged_windows(daemon) >= windows, timeout, f"{windows} windows emitted")
    daemon.wait(lambda: daemon.metrics()[("driftmon_outbox_pending", (("model", "car-loan"),))] == 0, 60,
                "an empty outbox")


def hook(receiver: Receiver, alert: str | None = None) -> list[dict]:
    return [n for n in receiver.payloads("/hook") if alert is None or n["alert"] == alert]


def am_notified(receiver: Receiver) -> list[tuple]:
    """(status, alertname, subject, severity) of every alert in every Alertmanager notification."""
    return [(a["status"], a["labels"]["alertname"], a["labels"]["subject"], a["labels"]["severity"])
            for x in receiver.payloads("/am") for a in x["alerts"]]


def test_escalation_then_resolve_leaves_no_active_alert(tmp_path, kafka_broker, receiver, alertmanager):
    # 4000-message windows: car_value x1.07 is a warning (effect 1.6-1.8 x its threshold, significantly above it under the material-drift test), x1.3 critical (~7 x)
    topic, _, daemon = start_daemon(tmp_path, kafka_broker, receiver, alertmanager, size=4000)
    try:
        produce(kafka_broker.bootstrap, topic, stream([1.07, 1.07], 4000, time.time()))
        delivered(daemon, 2)
        assert [(a["labels"]["subject"], a["labels"]["severity"]) for a in active(alertmanager)] == [
            ("car_value", "warning")]
        produce(kafka_broker.bootstrap, topic, stream([1.3], 4000, time.time(), seed=8))
        delivered(daemon, 3)
        assert [(a["labels"]["subject"], a["labels"]["severity"]) for a in active(alertmanager)] == [
            ("car_value", "critical")]  # the warning alert was resolved in the same request
        produce(kafka_broker.bootstrap, topic, stream(["C"] * 3, 4000, time.time(), seed=9))
        delivered(daemon, 6)
        # the TTL is 60 s: an alert left behind would still be active here
        assert active(alertmanager) == []
        notes = [(n["status"], n["severity"], n.get("escalated_from")) for n in hook(receiver, "feature_drift")]
        assert notes == [("firing", "warning", None), ("firing", "critical", "warning"), ("resolved", "critical", None)]
        got = receiver.wait_for(lambda p: ("resolved", "DriftmonFeatureDrift", "car_value", "critical")
                                in am_notified(receiver), 30, path="/am")
        assert got
        assert ("resolved", "DriftmonFeatureDrift", "car_value", "warning") in am_notified(receiver)
    finally:
        daemon.close()


def test_producer_clocks_ahead_still_resolve(tmp_path, kafka_broker, receiver, alertmanager):
    topic, _, daemon = start_daemon(tmp_path, kafka_broker, receiver, alertmanager, size=1000)
    try:
        # every event time 5 s (and more, up to 10 s) ahead of the wall clock
        produce(kafka_broker.bootstrap, topic, stream(["B", "B", "C", "C", "C"], 1000, time.time() + 5))
        delivered(daemon, 5)
        fired = [n for n in hook(receiver, "feature_drift") if n["subject"] == "car_value"]
        assert [n["status"] for n in fired] == ["firing", "resolved"]
        assert fired[1]["window"]["end"] > fired[1]["ends_at"]  # event time ahead; the resolve on the wall clock
        assert active(alertmanager) == []  # the TTL is 60 s: a resolve with a future endsAt would be ignored
        receiver.wait_for(lambda p: ("resolved", "DriftmonFeatureDrift", "car_value", "critical")
                          in am_notified(receiver), 30, path="/am")
    finally:
        daemon.close()


def test_stalled_stream_produces_no_resolve_while_firing(tmp_path, kafka_broker, receiver, alertmanager):
    topic, _, daemon = start_daemon(tmp_path, kafka_broker, receiver, alertmanager, size=1000, ttl="15s",
                                    resend="1s")
    try:
        messages = stream(["B", "B", "B"], 1000, time.time())
        produce(kafka_broker.bootstrap, topic, messages[:2500])  # two windows, then half of one: it stalls
        delivered(daemon, 2)
        names = {a["labels"]["subject"] for a in active(alertmanager)}
        assert "car_value" in names
        # no window closes for more than twice the TTL; every check finds the alerts still active
        stalled_until = time.monotonic() + 35
        while time.monotonic() < stalled_until:
            assert {a["labels"]["subject"] for a in active(alertmanager)} == names
            time.sleep(1)
        assert daemon.status()["windows_evaluated"] == 2
        assert not [x for x in am_notified(receiver) if x[0] == "resolved"]
        # the stream comes back clean: now they resolve
        produce(kafka_broker.bootstrap, topic, messages[2500:] + stream(["C"] * 3, 1000, time.time(), seed=9))
        delivered(daemon, 6)
        assert active(alertmanager) == []
    finally:
        daemon.close()


def replay_alerts(path: str, messages: list[bytes], tmp_path) -> list[dict]:
    logs, out, alerts = tmp_path / "logs.jsonl", tmp_path / "windows.jsonl", tmp_path / "alerts.jsonl"
    write_jsonl(logs, messages)
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--config", path, "--input", str(logs),
                           "--out", str(out), "--alerts", str(alerts), "--no-flush"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return read_jsonl(alerts)


def test_flapping_feature_pages_once_as_intermittent_and_holds(tmp_path, kafka_broker, receiver, alertmanager):
    topic, path, daemon = start_daemon(tmp_path, kafka_broker, receiver, alertmanager, size=1000)
    messages = stream(["B", "C"] * 10, 1000, 1.7e9)
    try:
        produce(kafka_broker.bootstrap, topic, messages)
        delivered(daemon, 20)
        for feature in ("car_value", "salary_range", "debt_to_income_ratio"):
            notes = [n for n in hook(receiver, "feature_drift") if n["subject"] == feature]
            # never two drifted windows in a row, so no page without flap detection; with it, exactly one
            assert [(n["status"], n["flapping"], n["window"]["index"]) for n in notes] == [("firing", True, 6)]
            assert "intermittently" in notes[0]["summary"] and notes[0]["flap"]["bad_windows"] == 4
        held = {a["labels"]["subject"]: a for a in active(alertmanager)
                if a["labels"]["alertname"] == "DriftmonFeatureDrift"}
        assert set(held) == {"car_value", "salary_range", "debt_to_income_ratio"}
        assert all(a["annotations"]["flapping"] == "true" for a in held.values())
        assert not [x for x in am_notified(receiver) if x[0] == "resolved" and x[1] == "DriftmonFeatureDrift"]
        metrics = daemon.metrics()
        assert metrics[("driftmon_alerts_flapping", (("alert", "feature_drift"), ("model", "car-loan")))] == 3
        assert metrics[("driftmon_alerts_firing", (("alert", "feature_drift"), ("model", "car-loan")))] == 3
        code, _ = daemon.terminate(timeout=30)
        assert code == 0
    finally:
        daemon.close()
    # the backtest sends the same notifications
    got, want = comparable(hook(receiver)), comparable(replay_alerts(path, messages, tmp_path))
    assert_same(sorted(got, key=lambda n: n["notification_id"]), sorted(want, key=lambda n: n["notification_id"]))


def test_drift_episode_with_one_clean_window_is_one_retraining_trigger(tmp_path, kafka_broker, receiver,
                                                                        alertmanager):
    topic, path, daemon = start_daemon(tmp_path, kafka_broker, receiver, alertmanager, size=1000)
    # 3 of 8 features drift (37.5 % of the weight >= 30 %): sustained after 3 windows; one clean window at 5
    messages = stream(["B"] * 5 + ["C"] + ["B"] * 6 + ["C"] * 22, 1000, 1.7e9)
    try:
        produce(kafka_broker.bootstrap, topic, messages)
        delivered(daemon, 34)
        code, _ = daemon.terminate(timeout=30)
        assert code == 0
    finally:
        daemon.close()
    triggers = hook(receiver, "retrain_recommended")
    # one trigger (no repeat within repeat_interval), its resolve, one key
    assert [n["status"] for n in triggers] == ["firing", "resolved"]
    assert len({n["idempotency_key"] for n in triggers}) == 1
    first, last = triggers
    # it fires with the prediction alert, critical at window 1, before any feature has drifted for K windows
    assert first["window"]["index"] == 1 and "critical prediction drift" in first["summary"]
    pred = first["evidence"]["prediction"]
    assert pred["firing"] and pred["severity"] == "critical" and pred["score"] >= pred["threshold"]
    assert {f["name"] for f in first["features"]} == {"car_value", "salary_range", "debt_to_income_ratio"}
    assert all(f["drifting_now"] and not f["sustained"] and f["score"] >= f["threshold"] and f["weight"] == 1.0
               for f in first["features"])
    assert [w["index"] for w in first["evidence"]["windows"]] == [0, 1]
    assert all(w["offsets"] for w in first["evidence"]["windows"])  # Kafka offsets: the training cut-off
    assert first["config_hash"].startswith("sha256:") and first["baseline_fingerprint"].startswith("sha256:")
    # the clean window 5 ended nothing: the resolve comes only after the feature and prediction alerts resolved
    resolved = {(n["alert"], n["subject"]): n["window"]["index"] for n in hook(receiver) if n["status"] == "resolved"}
    assert last["window"]["index"] >= resolved[("prediction_drift", "prediction")] > 12
    # the backtest sends the same notifications (offsets and wall-clock times aside)
    got, want = comparable(hook(receiver)), comparable(replay_alerts(path, messages, tmp_path))
    assert_same(sorted(got, key=lambda n: n["notification_id"]), sorted(want, key=lambda n: n["notification_id"]))
