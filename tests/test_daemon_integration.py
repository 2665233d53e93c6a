"""The daemon as users run it: a real broker, `driftmon run` as a process, HTTP, webhooks, signals."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests.daemon_proc import DaemonProcess, counted
from tests.helpers import read_jsonl, write_jsonl, write_setup

pytestmark = pytest.mark.integration

WINDOW = 1000


def produce(bootstrap: str, topic: str, messages: list[bytes], rate: float | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    started = time.monotonic()
    for i, m in enumerate(messages):
        producer.send(topic, value=m)
        if rate and i % 200 == 0:
            time.sleep(max(0.0, i / rate - (time.monotonic() - started)))
    producer.flush()
    producer.close()


#: The Kafka client libraries (kafka.client); the broker-facing tests run on each.
CLIENTS = ["kafka-python", "confluent-kafka"]


def setup_daemon(tmp_path, broker, receiver=None, partitions=1, client="kafka-python", **overrides):
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=partitions)
    kafka = {"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": f"driftmon-{topic}",
             "max_poll_interval_ms": 6000, "session_timeout_ms": 6000, "lag_interval": "1s",
             "commit_interval": "200ms", "client": client}
    alerts = {"webhooks": [{"url": receiver.url + "/hook"}]} if receiver else {}
    path, config = write_setup(tmp_path, car_loan(seed=1), window={"size": WINDOW}, kafka=kafka, alerts=alerts,
                               state={"dir": "state", "checkpoint_interval": "1s"}, **overrides)
    daemon = DaemonProcess(path, free_port(), str(tmp_path / "daemon.log"))
    return topic, path, config, daemon


@pytest.mark.parametrize("client", CLIENTS)
def test_daemon_metrics_status_webhooks_and_graceful_stop(tmp_path, client, broker, receiver):
    topic, path, config, daemon = setup_daemon(tmp_path, broker, receiver, client=client)
    messages = car_loan(seed=21).messages(6000, drift_at=3000)
    bad = [b"{not json", b'{"id": "x", "car_value": "cheap"}', b'{"car_value": 1.0}', b'{"id": "y", "car_value": NaN}']
    messages[100:100] = bad
    try:
        daemon.start()
        assert daemon.get("/readyz") is None or daemon.status()["ready"] in (True, False)
        produce(broker.bootstrap, topic, messages)
        status = daemon.wait_windows(6, timeout=90)
        assert daemon.wait(lambda: daemon.get("/readyz") == b"ready: baseline loaded and consuming\n", 10, "readyz")

        # /status: the latest window in the documented shape
        last = status["last_window"]
        assert last["window"]["events"] == WINDOW and last["window"]["index"] == 5
        assert "car_value" in last["drifted"]
        assert last["features"]["car_value"]["drift"] is True
        assert last["features"]["age"]["drift"] is False
        assert status["baseline"]["fingerprint"].startswith("sha256:")
        assert status["messages_invalid"] == {"not_json": 1, "wrong_type": 1, "missing_field": 1, "nan": 1}

        # /metrics, parsed with the Prometheus client's own parser
        m = daemon.wait(lambda: (x := daemon.metrics()) and
                        x.get(("driftmon_consumer_lag_messages", (("model", "car-loan"), ("partition", "0")))) == 0
                        and x, 20, "lag 0")
        key = lambda name, **labels: (name, tuple(sorted({"model": "car-loan", **labels}.items())))  # noqa: E731
        assert m[key("driftmon_messages_consumed_total")] == 6004
        assert m[key("driftmon_messages_invalid_total", reason="not_json")] == 1
        assert m[key("driftmon_messages_invalid_total", reason="nan")] == 1
        assert m[key("driftmon_windows_evaluated_total")] == 6
        assert m[key("driftmon_feature_drift_detected", feature="car_value")] == 1
        assert m[key("driftmon_feature_drift_detected", feature="region")] == 0
        assert m[key("driftmon_feature_drift_score", feature="car_value", method="wasserstein")] > 0.1
        assert m[key("driftmon_feature_missing_ratio", feature="car_value")] == 0
        assert key("driftmon_prediction_drift_score", method="psi") in m
        assert m[key("driftmon_last_window_end_timestamp_seconds")] > 1.7e9
        fp = status["baseline"]["fingerprint"]
        assert m[key("driftmon_build_info", version="0.1.0", baseline_fingerprint=fp)] == 1

        # webhook: a firing alert for the drifted window, posted to a real HTTP receiver
        # (fire_after 2: windows 3 and 4 drift, so it fires with window 4)
        is_car = lambda x: x["alert"] == "feature_drift" and x["subject"] == "car_value"  # noqa: E731
        got = receiver.wait_for(lambda p: any(is_car(x) for x in p), path="/hook")
        firing = next(x for x in got if is_car(x))
        assert firing["status"] == "firing" and firing["model"] == "car-loan"
        assert firing["baseline_fingerprint"] == fp
        assert firing["dedup_key"] == "car-loan/feature_drift/car_value"
        assert firing["severity"] in ("warning", "critical") and firing["runbook_url"].endswith("docs/runbook.md#driftmonfeaturedrift")
        assert firing["window"]["index"] == 4 and firing["window"]["events"] == WINDOW
        assert firing["starts_at"] and firing["ends_at"] is None
        [f] = firing["features"]
        assert f["name"] == "car_value" and f["method"] == "wasserstein"
        assert f["score"] >= f["threshold"] and f["p_value"] <= 0.01
        assert "car_value" in firing["summary"]
        assert not any(x["alert"] == "feature_drift" and x["subject"] == "age" for x in got)

        # SIGTERM: drain, commit, exit 0 within 10 s
        code, took = daemon.terminate(timeout=10)
        assert code == 0 and took < 10
    finally:
        daemon.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=config.kafka.group_id,
                             enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    assert consumer.committed(tp) == 6004
    consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_kill_9_mid_stream_loses_and_double_counts_nothing(tmp_path, client, broker):
    topic, path, config, daemon = setup_daemon(tmp_path, broker, client=client)
    total = 24_000
    messages = car_loan(seed=33).messages(total, drift_at=12_000)
    producer = threading.Thread(target=produce, args=(broker.bootstrap, topic, messages, 3000.0))
    try:
        daemon.start()
        producer.start()
        daemon.wait_windows(3, timeout=90)
        time.sleep(0.37)  # somewhere inside a window, between checkpoints
        daemon.kill9()
        restarted = DaemonProcess(path, daemon.port, str(tmp_path / "daemon2.log")).start()
        try:
            producer.join()
            restarted.wait_windows(total // WINDOW, timeout=120)
            assert "restored checkpoint" in restarted.log()
            code, _ = restarted.terminate()
            assert code == 0
        finally:
            restarted.close()
    finally:
        daemon.close()
    logged = read_jsonl(os.path.join(config.state.dir, "windows.jsonl"))
    assert [w["window"]["index"] for w in logged] == list(range(total // WINDOW))
    assert [w["window"]["events"] for w in logged] == [WINDOW] * (total // WINDOW)
    assert [w["window"]["offsets"][f"{topic}:0"] for w in logged] == [
        [i * WINDOW, (i + 1) * WINDOW - 1] for i in range(total // WINDOW)]

    # the same stream through `driftmon replay`: identical windows (statistics to float rounding)
    logs = tmp_path / "produced.jsonl"
    write_jsonl(logs, messages)
    from monitor.baseline import Baseline
    from monitor.pipeline import Pipeline

    replay = Pipeline(config, Baseline.load(config.baseline))
    expected = []
    for i in range(0, total, 777):
        expected += replay.process(messages[i:i + 777])[0]
    for got, want in zip(logged, expected):
        for name, r in want["features"].items():
            g = got["features"][name]
            assert g["events"] == r["events"] and g["drift"] == r["drift"]
            for stat, value in r["statistics"].items():
                assert g["statistics"][stat] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, stat)
    assert [w["drifted"] for w in logged] == [w["drifted"] for w in expected]


def test_notifications_pending_at_shutdown_are_sent_after_restart(tmp_path, broker, receiver):
    receiver.status = 503  # on-call's receiver is down
    topic, path, config, daemon = setup_daemon(tmp_path, broker, receiver)
    produce(broker.bootstrap, topic, car_loan(seed=5).messages(5000, drift_at=1000))
    try:
        daemon.start()
        daemon.wait_windows(5, timeout=90)
        def failures(m):
            return sum(v for (name, labels), v in m.items() if name == "driftmon_notification_failures_total")

        # queued first, tried and failed a moment later: wait for both rather than read them at one instant
        pending = daemon.wait(lambda: (m := daemon.metrics())[("driftmon_outbox_pending", (("model", "car-loan"),))]
                              and failures(m) >= 1 and m, 30, "pending notifications that failed to send")
        queued = pending[("driftmon_outbox_pending", (("model", "car-loan"),))]
        assert queued >= 1 and failures(pending) >= 1
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()
    assert receiver.payloads() == []
    receiver.status = 200
    restarted = DaemonProcess(path, free_port(), str(tmp_path / "daemon2.log")).start()
    try:
        got = receiver.wait_for(lambda p: len(p) >= queued, timeout=60)
        restarted.wait(lambda: restarted.metrics()[("driftmon_outbox_pending", (("model", "car-loan"),))] == 0,
                       20, "empty outbox")
    finally:
        restarted.close()
    assert len(got) == queued
    assert {x["alert"] for x in got} >= {"feature_drift"}
    assert len({x["notification_id"] for x in got}) == len(got)  # nothing sent twice


@pytest.mark.parametrize("client", CLIENTS)
def test_committed_offsets_never_run_ahead_of_the_checkpoint(tmp_path, client, broker):
    """Offsets are committed only once their events are in a checkpoint: a restart that loses the
    checkpoint's newer part (or finds none) re-reads events instead of skipping them."""
    topic, path, config, daemon = setup_daemon(tmp_path, broker, client=client)
    messages = car_loan(seed=44).messages(2000)
    checkpoint = os.path.join(config.state.dir, "checkpoint.json")
    try:
        daemon.start()
        produce(broker.bootstrap, topic, messages[:600])
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 600, 60, "600 consumed")
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=config.kafka.group_id,
                                 enable_auto_commit=False)

        def saved_position():
            with open(checkpoint) as fh:
                return json.load(fh)["state"]["pipeline"]["positions"][f"{topic}:0"]

        # waits on the conditions, not on a number of commit intervals passing
        daemon.wait(lambda: saved_position() == 600, 30, "a checkpoint of all 600")
        daemon.wait(lambda: consumer.committed(TopicPartition(topic, 0)) is not None, 30, "a commit")
        daemon.kill9()
        saved = saved_position()
        committed = consumer.committed(TopicPartition(topic, 0))
        consumer.close()
        assert committed is not None and committed <= saved == 600
        os.remove(checkpoint)  # the state is lost: the committed offsets are all there is
        restarted = DaemonProcess(path, daemon.port, str(tmp_path / "daemon2.log")).start()
        try:
            produce(broker.bootstrap, topic, messages[600:])
            restarted.wait_windows(1, timeout=60)
            first = restarted.status()["last_window"]["window"]["offsets"][f"{topic}:0"]
        finally:
            restarted.close()
    finally:
        daemon.close()
    assert first[0] == committed  # resumed exactly at the committed offset: nothing skipped


def replica_config(tmp_path, path, name: str) -> str:
    """Another replica of the daemon in `path`'s config: the same group, its own state directory."""
    home = tmp_path / name
    home.mkdir()
    text = open(path).read().replace("dir: state", f"dir: {home / 'state'}")
    replica = home / "driftmon.yaml"
    replica.write_text(text.replace("baseline: baseline.json", f"baseline: {tmp_path / 'baseline.json'}"))
    return str(replica)


def group_caught_up(bootstrap: str, group_id: str, topic: str, partitions: int) -> bool:
    """Whether the group's committed offsets reached the end of every partition (commits follow checkpoints)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = consumer.end_offsets(tps)
        return all(consumer.committed(tp) == ends[tp] for tp in tps)
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_replicas_share_the_group_and_rebalances_lose_and_double_count_nothing(tmp_path, client, kafka_broker):
    """Two daemons share a group on a 4-partition topic; mid-stream a third joins and one leaves.
    Each hand-over checkpoints and commits first (on kafka-python's IO thread, awaited), so the events
    over every replica's windows equal the valid messages produced, exactly."""
    partitions = 4
    topic, path, config, first = setup_daemon(tmp_path, kafka_broker, partitions=partitions, client=client)
    second = DaemonProcess(replica_config(tmp_path, path, "second"), free_port(), str(tmp_path / "second.log"))
    third = DaemonProcess(replica_config(tmp_path, path, "third"), free_port(), str(tmp_path / "third.log"))
    messages = car_loan(seed=61).messages(30_000)
    bad = [b"{not json", b'{"id": "x", "car_value": "cheap"}']
    for i in range(0, len(messages), 1000):
        messages.insert(i, bad[(i // 1000) % 2])  # spread over every partition (round robin without keys)
    ready = b"ready: baseline loaded and consuming\n"
    replicas = [first, second, third]
    consumed = lambda *ds: sum(d.status()["messages_consumed"] for d in ds)  # noqa: E731
    # 25 s of stream: the third replica joins and the second leaves while it flows
    producer = threading.Thread(target=produce, args=(kafka_broker.bootstrap, topic, messages, 1200.0))
    try:
        first.start()
        second.start()
        for d in (first, second):
            d.wait(lambda d=d: d.get("/readyz") == ready, 60, "an assignment")
        producer.start()
        first.wait(lambda: consumed(first, second) >= 6000, 60, "6000 consumed by two replicas")
        third.start()  # joins mid-stream: a rebalance
        third.wait(lambda: third.status()["messages_consumed"] > 0, 60, "the third replica consuming")
        third.wait(lambda: consumed(first, second, third) >= 18_000, 90, "18000 consumed")
        code, _ = second.terminate(timeout=30)  # leaves mid-stream: another rebalance
        assert code == 0
        producer.join()
        first.wait(lambda: group_caught_up(kafka_broker.bootstrap, config.kafka.group_id, topic, partitions),
                   120, "every partition processed and committed")
        for d in (first, third):
            assert d.terminate(timeout=30)[0] == 0
    finally:
        for d in replicas:
            d.close()
    logs = "\n".join(open(d.log_path, errors="replace").read() for d in replicas)
    assert "Cannot block" not in logs and "before the rebalance failed" not in logs
    assert logs.count("committed before the hand-over") >= 3  # the first two at the join, then the leave
    totals = [counted(os.path.join(os.path.dirname(d.config_path), "state")) for d in replicas]
    assert all(events > 0 for events, _ in totals), totals
    valid = len(messages) - len(range(0, 30_000, 1000))
    assert sum(events for events, _ in totals) == valid, totals
    assert sum(invalid for _, invalid in totals) == len(messages) - valid, totals


@pytest.mark.parametrize("client", CLIENTS)
def test_a_replica_left_without_partitions_stays_ready_and_says_so(tmp_path, client, kafka_broker):
    """A rebalance takes the only partition away from the first replica: it stays ready (an idle
    replica is healthy), /status and driftmon_assigned_partitions say it holds nothing, and it takes
    the partition back when the other replica leaves."""
    topic, path, config, first = setup_daemon(tmp_path, kafka_broker, client=client)
    second = DaemonProcess(replica_config(tmp_path, path, "second"), free_port(), str(tmp_path / "second.log"))
    third = DaemonProcess(replica_config(tmp_path, path, "third"), free_port(), str(tmp_path / "third.log"))
    # The range assignor gives the partition to the group's first member by member id, which starts
    # with the client id: the second replica, joining later, takes it from the first; the third joins idle.
    for daemon, client_id in ((first, "z-driftmon"), (second, "a-driftmon"), (third, "zz-driftmon")):
        text = open(daemon.config_path).read()
        open(daemon.config_path, "w").write(text.replace("kafka:\n", f"kafka:\n  client_id: {client_id}\n", 1))
    ready = b"ready: baseline loaded and consuming\n"
    model = (("model", "car-loan"),)

    def holds(d, partitions):
        status = d.status()
        return status is not None and status["kafka"]["assigned_partitions"] == partitions and status

    try:
        first.start()
        first.wait(lambda: first.get("/readyz") == ready and holds(first, [0]), 60, "the partition")
        assert first.metrics()[("driftmon_assigned_partitions", model)] == 1
        second.start()
        second.wait(lambda: holds(second, [0]), 90, "the partition moved to the second replica")
        status = first.wait(lambda: holds(first, []), 60, "the first replica idle")
        idle = f"ready: idle, no partition of {topic} assigned (more replicas than partitions, or a " \
               "rebalance under way)\n"
        assert first.get("/readyz") == idle.encode() and status["ready"] is True
        assert status["ready_reason"] == idle.strip()
        assert first.metrics()[("driftmon_assigned_partitions", model)] == 0
        assert second.metrics()[("driftmon_assigned_partitions", model)] == 1
        assert first.get("/healthz") == b"ok\n"
        produce(kafka_broker.bootstrap, topic, car_loan(seed=81).messages(500))
        second.wait(lambda: second.status()["messages_consumed"] == 500, 60, "500 consumed by the owner")
        assert first.status()["messages_consumed"] == 0
        # a replica that joins a group with no partition left for it is ready at once, idle
        third.start()
        third.wait(lambda: third.get("/readyz") == idle.encode(), 90, "the third ready, idle")
        assert holds(third, []) and third.metrics()[("driftmon_assigned_partitions", model)] == 0
        second.wait(lambda: holds(second, [0]), 60, "the second keeping the partition")
        assert second.terminate(timeout=30)[0] == 0
        first.wait(lambda: first.get("/readyz") == ready and holds(first, [0]), 90, "the partition back")
        assert first.metrics()[("driftmon_assigned_partitions", model)] == 1
        assert holds(third, [])
        for d in (first, third):
            assert d.terminate(timeout=30)[0] == 0
    finally:
        for d in (first, second, third):
            d.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_rejected_messages_go_to_the_dead_letter_topic_with_their_reason(tmp_path, client, broker):
    dlq = f"dlq-{uuid.uuid4().hex[:8]}"
    broker.create_topic(dlq)
    topic, path, config, daemon = setup_daemon(tmp_path, broker, client=client)
    text = open(path).read().replace("commit_interval: 200ms", f"commit_interval: 200ms\n  dead_letter_topic: {dlq}")
    open(path, "w").write(text)
    messages = car_loan(seed=71).messages(50)
    messages[10:10] = [b"{broken", b'{"id": "q", "car_value": "x"}']
    try:
        daemon.start()
        produce(broker.bootstrap, topic, messages)
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 52, 60, "52 consumed")
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()
    consumer = KafkaConsumer(dlq, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    records = list(consumer)
    consumer.close()
    assert [r.value for r in records] == [b"{broken", b'{"id": "q", "car_value": "x"}']
    assert [dict(r.headers)["driftmon-reason"] for r in records] == [b"not_json", b"wrong_type"]
    assert [dict(r.headers)["driftmon-source"] for r in records] == [f"{topic}:0:10".encode(), f"{topic}:0:11".encode()]


def test_time_window_closes_on_the_clock_when_traffic_stops(tmp_path, broker):
    topic, path, config, daemon = setup_daemon(tmp_path, broker)
    text = open(path).read().replace("window:\n  size: 1000", "window:\n  duration: 2s")
    open(path, "w").write(text)
    try:
        daemon.start()
        daemon.wait(lambda: daemon.get("/readyz") == b"ready: baseline loaded and consuming\n", 60, "assignment")
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=10)
        producer.partitions_for(topic)  # connected before the clock is read
        # The 300 events span 0.3 s of event time starting on a window boundary, so they fall in one
        # 2 s window whatever the wall clock says (a start at "now" can straddle a boundary). The next
        # boundary is less than 2 s ahead, so the clock closes that window soon after.
        start = (int(time.time()) // 2 + 1) * 2.0
        for m in car_loan(seed=81).messages(300, start_time=start, rate=1000.0):
            producer.send(topic, value=m)
        producer.flush()
        producer.close()
        status = daemon.wait_windows(2, timeout=30)  # no more traffic: the clock closes them
        windows = read_jsonl(os.path.join(config.state.dir, "windows.jsonl"))
    finally:
        daemon.close()
    seconds = lambda iso: datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()  # noqa: E731
    assert [w["window"]["events"] for w in windows[:2]] == [300, 0]
    assert all(w["window"]["status"] == "empty" and w["drifted"] == [] for w in windows[1:])
    starts = [seconds(w["window"]["start"]) for w in windows]
    assert starts == [start + 2 * i for i in range(len(windows))] and status["open_window"]["events"] == 0
