"""Notification delivery to real receivers: HTTP webhooks, Alertmanager, Kafka; outbox durability."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest

from monitor.config import Sink, parse_config
from monitor.outbox import Outbox
from monitor.sinks import SIGNATURE_HEADER, Dispatcher
from tests.helpers import alertmanager as run_alertmanager


def note(i: int, key: str = "m/feature_drift/x", status: str = "firing", alert: str = "feature_drift") -> dict:
    return {
        "status": status, "alert": alert, "model": "m", "subject": key.split("/")[-1], "severity": "warning",
        "dedup_key": key, "notification_id": f"{key}#1.{i}", "starts_at": "2026-01-01T00:00:00.000Z",
        "ends_at": "2026-01-01T01:00:00.000Z" if status == "resolved" else None,
        "runbook_url": "https://example/runbook.md#driftmon-feature-drift",
        "window": {"index": i, "start": None, "end": None, "events": 10}, "baseline_fingerprint": "sha256:f",
        "features": [{"name": "x", "method": "wasserstein", "score": 0.3, "threshold": 0.1, "p_value": 1e-6,
                      "test": "ks"}],
        "summary": f"m: feature x drifted #{i}", "description": f"m: feature x drifted #{i}",
    }


def dispatcher(tmp_path, sinks, name="outbox.sqlite", **kw):
    outbox = Outbox(str(tmp_path / name), kw.pop("max_pending", 1000))
    return Dispatcher(sinks, outbox, backoff_initial=0.05, backoff_max=0.2, **kw), outbox


def test_webhook_hmac_signature_verifies(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret-key")
    d, _ = dispatcher(tmp_path, [Sink(type="webhook", name="hook", url=receiver.url + "/h",
                                      hmac_secret_env="HOOK_SECRET")])
    d.start()
    d.submit([note(1)])
    assert d.drain(10)
    d.close()
    [req] = receiver.requests
    expected = "sha256=" + hmac.new(b"s3cret-key", req["body"], hashlib.sha256).hexdigest()
    assert req["headers"][SIGNATURE_HEADER] == expected
    tampered = req["body"].replace(b"drifted", b"Drifted")
    assert hmac.new(b"s3cret-key", tampered, hashlib.sha256).hexdigest() != expected[7:]
    assert json.loads(req["body"])["notification_id"] == "m/feature_drift/x#1.1"
    assert d.sent[("hook", "feature_drift")] == 1


def test_missing_hmac_secret_fails_at_start(tmp_path, monkeypatch):
    from monitor.config import ConfigError

    monkeypatch.delenv("NOPE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="NOPE_SECRET"):
        dispatcher(tmp_path, [Sink(type="webhook", url="http://127.0.0.1:1/", hmac_secret_env="NOPE_SECRET")])


def test_receiver_down_then_up_loses_nothing_and_keeps_order(tmp_path, receiver):
    receiver.status = 503
    d, outbox = dispatcher(tmp_path, [Sink(type="webhook", name="hook", url=receiver.url + "/h")])
    d.start()
    keys = ["m/feature_drift/a", "m/feature_drift/b"]
    d.submit([note(i, keys[i % 2], "resolved" if i >= 8 else "firing") for i in range(10)])
    deadline = time.monotonic() + 30
    while d.failures[("hook", "http_5xx")] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.failures[("hook", "http_5xx")] >= 2  # it kept trying, with backoff
    assert receiver.requests == [] and outbox.pending() == 10
    receiver.status = 200
    assert d.drain(15)
    d.close()
    got = receiver.payloads()
    assert [g["notification_id"] for g in got] == [note(i, keys[i % 2])["notification_id"] for i in range(10)]
    assert d.sent[("hook", "feature_drift")] == 10


def test_restart_with_pending_notifications_delivers_them_as_queued(tmp_path, receiver):
    receiver.status = 503
    d, outbox = dispatcher(tmp_path, [Sink(type="webhook", name="hook", url=receiver.url + "/h")])
    d.start()
    queued = [note(i) for i in range(5)]
    d.submit(queued)
    time.sleep(0.3)
    d.close(timeout=0.2)
    outbox.close()
    receiver.status = 200
    d2, outbox2 = dispatcher(tmp_path, [Sink(type="webhook", name="hook", url=receiver.url + "/h")])
    assert outbox2.pending() == 5
    d2.start()
    assert d2.drain(10)
    d2.close()
    assert receiver.payloads() == json.loads(json.dumps(queued))


def test_outbox_dedupes_and_caps(tmp_path, receiver):
    d, outbox = dispatcher(tmp_path, [Sink(type="webhook", name="hook", url=receiver.url + "/h")], max_pending=3)
    d.submit([note(1), note(1)])  # the same notification re-created after a crash
    assert outbox.pending() == 1
    d.start()
    assert d.drain(10)
    d.submit([note(1)])  # already delivered: its tombstone still dedupes it
    assert outbox.pending() == 0
    d.close()
    receiver.status = 503
    d2, outbox2 = dispatcher(tmp_path, [Sink(type="webhook", name="hook", url=receiver.url + "/h")], "o2.sqlite",
                             max_pending=3)
    d2.submit([note(i) for i in range(10, 15)])
    assert outbox2.pending() == 3 and outbox2.dropped == 2
    assert len(receiver.requests) == 1


def test_slack_and_pagerduty_formats(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("PD_KEY", "R0UTING")
    d, _ = dispatcher(tmp_path, [
        Sink(type="slack", name="slack", url=receiver.url + "/slack"),
        Sink(type="pagerduty", name="pd", url=receiver.url + "/pd", routing_key_env="PD_KEY"),
    ])
    d.start()
    d.submit([note(1), note(2, status="resolved")])
    assert d.drain(10)
    d.close()
    slack = receiver.payloads("/slack")
    assert len(slack) == 2 and "FIRING" in slack[0]["text"] and "`x` wasserstein 0.3" in slack[0]["text"]
    assert "RESOLVED" in slack[1]["text"]
    trigger, resolve = receiver.payloads("/pd")
    assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "R0UTING"
    assert trigger["dedup_key"] == "m/feature_drift/x" == resolve["dedup_key"]
    assert trigger["payload"]["severity"] == "warning" and trigger["payload"]["source"] == "driftmon/m"
    assert resolve["event_action"] == "resolve" and "payload" not in resolve


def test_sink_kind_filter(tmp_path, receiver):
    d, outbox = dispatcher(tmp_path, [Sink(type="webhook", name="retrain-only", url=receiver.url + "/r",
                                           alerts=["retrain_recommended"])])
    d.submit([note(1), note(2, "m/retrain_recommended/model", alert="retrain_recommended")])
    assert outbox.pending() == 1


# ---- a real Alertmanager ---------------------------------------------------------------------------

@pytest.fixture
def alertmanager(tmp_path, receiver):
    with run_alertmanager(tmp_path, receiver.url + "/am", ["alertname", "model", "feature"]) as url:
        yield url


@pytest.mark.integration
def test_alertmanager_routes_driftmon_alerts(tmp_path, receiver, alertmanager):
    d, _ = dispatcher(tmp_path, [Sink(type="alertmanager", name="am", url=alertmanager)])
    d.start()
    d.submit([note(1)])
    assert d.drain(10)
    got = receiver.wait_for(lambda p: any(x["status"] == "firing" for x in p), path="/am")
    [alert] = got[0]["alerts"]
    assert alert["labels"]["alertname"] == "DriftmonFeatureDrift"
    assert alert["labels"]["model"] == "m" and alert["labels"]["feature"] == "x"
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"].endswith("#driftmon-feature-drift")
    assert alert["annotations"]["summary"] == "m: feature x drifted #1"
    # and the resolve reaches the receiver through Alertmanager's routing too
    resolved = note(2, status="resolved")
    resolved["ends_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    d.submit([resolved])
    got = receiver.wait_for(lambda p: any(x["status"] == "resolved" for x in p), path="/am", timeout=30)
    d.close()
    assert any(a["labels"]["feature"] == "x" for x in got if x["status"] == "resolved" for a in x["alerts"])


@pytest.mark.integration
def test_kafka_sink_keys_retraining_triggers(tmp_path, broker):
    from kafka import KafkaConsumer

    topic = f"retrain-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    config = parse_config({"model": "m", "baseline": "b", "window": {"size": 10},
                           "schema": {"features": [{"name": "x", "type": "numeric"}]},
                           "kafka": {"bootstrap_servers": broker.bootstrap, "topic": "p", "group_id": "g"}})
    outbox = Outbox(str(tmp_path / "o.sqlite"))
    d = Dispatcher([Sink(type="kafka", name="trigger", topic=topic)], outbox, config.kafka,
                   backoff_initial=0.05, backoff_max=0.5)
    d.start()
    trigger = note(1, "m/retrain_recommended/model", alert="retrain_recommended")
    trigger["idempotency_key"] = "abc123"
    d.submit([note(0), trigger])  # the feature alert is filtered out: kafka sinks default to retraining triggers
    assert d.drain(30)
    d.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    records = list(consumer)
    consumer.close()
    assert [(r.key, json.loads(r.value)["alert"]) for r in records] == [(b"abc123", "retrain_recommended")]


def am_alerts(url: str) -> list[dict]:
    """Alerts Alertmanager holds active (unresolved) now."""
    import urllib.request

    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as r:
        return json.loads(r.read())


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not met within {timeout} s")


@pytest.mark.integration
def test_alertmanager_escalation_then_resolve_leaves_no_active_alert(tmp_path, receiver, alertmanager):
    from monitor.alerting import AlertEngine
    from tests.test_alerting import make_config, result

    engine = AlertEngine(make_config(), "sha256:abc", clock=time.time)
    d, _ = dispatcher(tmp_path, [Sink(type="alertmanager", name="am", url=alertmanager)])
    d.start()
    # warning, then critical (the identity label changes), then three clean windows
    stream = [result(0, {"car_value": 0.15}), result(1, {"car_value": 0.15}), result(2, {"car_value": 0.35}),
              result(3), result(4), result(5)]
    for i, r in enumerate(stream):
        d.submit(engine.observe(r))
        assert d.drain(10)
        if i == 1:
            wait_until(lambda: [a["labels"]["severity"] for a in am_alerts(alertmanager)] == ["warning"], 15,
                       "warning alert active")
        if i == 2:
            wait_until(lambda: [a["labels"]["severity"] for a in am_alerts(alertmanager)] == ["critical"], 15,
                       "only the critical alert active")
    wait_until(lambda: am_alerts(alertmanager) == [], 15, "no active alert after the resolve")
    got = receiver.wait_for(lambda p: any(x["status"] == "resolved" and any(a["labels"]["severity"] == "critical"
                                                                           for a in x["alerts"]) for x in p),
                            path="/am", timeout=30)
    d.close()
    resolved = {a["labels"]["severity"] for x in got for a in x["alerts"] if a["status"] == "resolved"}
    assert resolved == {"warning", "critical"}  # the warning alert did not stay behind as a ghost


@pytest.mark.integration
def test_alertmanager_resend_keeps_an_alert_active_past_its_ttl(tmp_path, receiver, alertmanager):
    from monitor.alerting import AlertEngine
    from tests.test_alerting import make_config, result

    engine = AlertEngine(make_config(), "sha256:abc", clock=time.time)
    sink = Sink(type="alertmanager", name="am", url=alertmanager, alertmanager_ttl="8s",
                alertmanager_resend="1s", timeout="1s")
    d, _ = dispatcher(tmp_path, [sink])
    d.start()
    for i in range(2):
        d.submit(engine.observe(result(i, {"car_value": 0.15})))
    assert d.drain(10)
    wait_until(lambda: am_alerts(alertmanager), 15, "alert active")
    # no window closes for more than two TTLs; the wall-clock resend alone keeps the alert active
    deadline = time.monotonic() + 18
    while time.monotonic() < deadline:
        d.refresh("am", engine.active())
        time.sleep(0.5)
        assert [a["labels"]["alertname"] for a in am_alerts(alertmanager)] == ["DriftmonFeatureDrift"]
    d.close()
    assert not [x for x in receiver.payloads("/am") if x["status"] == "resolved"]
    # once driftmon stops sending it, the TTL expires it, as Prometheus' alerts do
    wait_until(lambda: am_alerts(alertmanager) == [], 30, "alert expired after the TTL")


def test_alertmanager_ttl_must_outlast_missed_resends():
    from monitor.config import ConfigError

    with pytest.raises(ValueError, match="alertmanager_ttl"):
        Sink(type="alertmanager", url="http://am:9093", alertmanager_ttl="2m", alertmanager_resend="1m")
    Sink(type="alertmanager", url="http://am:9093", alertmanager_ttl="5m", alertmanager_resend="1m")
    tree = {"model": "m", "baseline": "b", "window": {"size": 10},
            "schema": {"features": [{"name": "x", "type": "numeric"}]},
            "alerts": {"sinks": [{"type": "alertmanager", "url": "http://am:9093", "alertmanager_ttl": "1m"}]}}
    with pytest.raises(ConfigError, match="alertmanager_ttl"):
        parse_config(tree)


def test_check_config_rejects_a_ttl_that_can_resolve_a_firing_alert(tmp_path, capsys):
    import yaml

    from monitor.cli import main

    tree = {"model": "m", "baseline": "b.json", "window": {"size": 10},
            "schema": {"features": [{"name": "x", "type": "numeric"}]},
            "alerts": {"sinks": [{"type": "alertmanager", "url": "http://am:9093", "alertmanager_ttl": "90s",
                                  "alertmanager_resend": "30s"}]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["check-config", "--config", str(path), "--no-baseline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alertmanager_ttl" in err[0] and "alertmanager_resend" in err[0]
    tree["alerts"]["sinks"][0]["alertmanager_ttl"] = "2m"
    path.write_text(yaml.safe_dump(tree))
    assert main(["check-config", "--config", str(path), "--no-baseline"]) == 0


def test_resend_never_overtakes_a_queued_notification(receiver):
    from monitor.sinks import AlertmanagerSink

    sink = AlertmanagerSink(Sink(type="alertmanager", name="am", url=receiver.url))
    a, b = note(1, "m/feature_drift/a"), note(1, "m/feature_drift/b")
    sink.offer([a, b])
    assert sink.resend(pending={"m/feature_drift/a"})  # a's newer notification is still in the outbox
    [body] = receiver.payloads("/api/v2/alerts")
    assert [x["labels"]["subject"] for x in body] == ["b"]
    assert not sink.resend(pending=set())  # nothing offered since
    sink.offer([a, b])
    sink.supersede("m/feature_drift/b")  # a notification for b was queued after the tick
    resolved = note(2, "m/feature_drift/c", status="resolved")
    resolved["ends_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    sink.send(resolved)
    assert sink.resend(pending=set())
    body = receiver.payloads("/api/v2/alerts")[-1]
    # a is re-sent firing; c, resolved a moment ago, is re-sent resolved (Prometheus' 15 minutes)
    assert [(x["labels"]["subject"], x["endsAt"] > x["startsAt"]) for x in body] == [("a", True), ("c", True)]
    assert body[1]["endsAt"] <= time.strftime("%Y-%m-%dT%H:%M:%S.999Z", time.gmtime())


def test_outbox_lists_each_undelivered_notification_once(tmp_path):
    from monitor.outbox import Outbox

    box = Outbox(str(tmp_path / "outbox.sqlite"))
    notes = [{"notification_id": f"m/feature_drift/x#1.{i}", "alert": "feature_drift", "dedup_key": "m/x"}
             for i in range(3)]
    for note in notes:
        box.put(["a", "b"], note)
    row, _, _, _ = box.head("a")
    box.done(row)  # the first reached sink a, not sink b: still undelivered
    row, _, _, _ = box.head("b")
    box.done(row)
    assert [n["notification_id"] for n in box.undelivered()] == [n["notification_id"] for n in notes[1:]]
    box.close()
