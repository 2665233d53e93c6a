"""Faults at run time on a real Apache Kafka broker: each ends with exact counts.

The broker of this module is its own (the tests stop and restart it). Each test produces a stream with
some invalid messages while `driftmon run` consumes it, injects a fault, and checks at the end that the
events over every window the daemon logged plus the open window of its last checkpoint equal the valid
messages produced, and its invalid counts the invalid ones: nothing lost, nothing counted twice. Poison
records (tombstones, deep nesting, ...) are the decoder's tests; here invalid records are ordinary ones.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from monitor.synth import car_loan
from tests.daemon_proc import DaemonProcess, counted
from tests.helpers import fill_disk, mount_tmpfs
from tests.test_daemon_integration import CLIENTS, group_caught_up, setup_daemon

pytestmark = pytest.mark.integration

BAD = [b"{not json", b'{"id": "x", "car_value": "cheap"}']


def stream(n: int, seed: int) -> tuple[list[bytes], int]:
    """``n`` valid messages with an invalid one before every 500th; returns (messages, invalid count)."""
    messages = car_loan(seed=seed).messages(n)
    for i in range(0, n, 500):
        messages.insert(i, BAD[(i // 500) % 2])
    return messages, len(range(0, n, 500))


class Producer(threading.Thread):
    """Produce at a steady rate, riding out a broker outage (idempotent, long delivery timeout)."""

    def __init__(self, bootstrap: str, topic: str, messages: list[bytes], rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.errors: list[str] = []

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=10, acks="all",
                                 delivery_timeout_ms=300_000, max_block_ms=300_000)
        started = time.monotonic()
        for i, m in enumerate(self.messages):
            producer.send(self.topic, value=m).add_errback(lambda exc: self.errors.append(repr(exc)))
            if i % 100 == 0:
                time.sleep(max(0.0, i / self.rate - (time.monotonic() - started)))
        producer.flush(timeout=300)
        producer.close(timeout=30)


def state_dir(daemon: DaemonProcess) -> str:
    return os.path.join(os.path.dirname(daemon.config_path), "state")


def assert_exact(daemon: DaemonProcess, valid: int, invalid: int) -> None:
    events, rejected = counted(state_dir(daemon))
    assert (events, rejected) == (valid, invalid), f"counted {events} valid / {rejected} invalid"


def test_harness_restarts_kafka_on_the_same_data(own_broker):
    """halt() + restart(): same address, the topic, its records and the group's committed offsets survive."""
    topic = own_broker.create_topic(f"restart-{time.monotonic_ns()}", partitions=1)
    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap, acks="all")
    for i in range(100):
        producer.send(topic, value=str(i).encode())
    producer.flush()
    producer.close()
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=own_broker.bootstrap, group_id=f"g-{topic}", enable_auto_commit=False)
    consumer.commit({tp: OffsetAndMetadata(60, "", -1)})
    consumer.close()
    bootstrap = own_broker.bootstrap
    own_broker.halt()
    assert not own_broker._port_open()
    own_broker.restart()
    assert own_broker.bootstrap == bootstrap
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"g-{topic}", enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    assert consumer.committed(tp) == 60
    consumer.assign([tp])
    consumer.seek(tp, 0)
    values = [r.value for r in consumer][:100]
    consumer.close()
    assert values == [str(i).encode() for i in range(100)]


def test_broker_stopped_for_60_s_and_restarted_mid_stream(tmp_path, own_broker):
    """The broker goes away for a minute under a steady stream: driftmon stays alive (/healthz), /status
    keeps answering, /readyz turns 503 with the reason after kafka.unavailable_after and 200 when the broker
    is back, and after the restart every message is counted exactly once."""
    # kafka-python only (kafka.client's default): a run costs a minute of outage, and this is about the
    # daemon's health signals; librdkafka's reconnects under an outage are not covered here.
    topic, path, config, daemon = setup_daemon(tmp_path, own_broker, partitions=2)
    messages, invalid = stream(24_000, seed=91)
    valid = len(messages) - invalid
    producer = Producer(own_broker.bootstrap, topic, messages, rate=600.0)
    try:
        daemon.start()
        daemon.wait(lambda: daemon.get("/readyz") == b"ready: baseline loaded and consuming\n", 60, "assignment")
        producer.start()
        daemon.wait(lambda: daemon.status()["messages_consumed"] >= 6000, 60, "6000 consumed")
        own_broker.halt()
        down_until = time.monotonic() + 60
        not_ready = []
        while time.monotonic() < down_until:  # health during the outage
            assert daemon.proc.poll() is None, daemon.log()
            assert daemon.get("/healthz") is not None  # alive: Kubernetes must not restart it
            status = daemon.status()  # answers (within the client's 5 s): it does not wait on the broker
            assert status is not None and status["model"] == "car-loan"
            if not status["ready"]:
                not_ready.append(status["ready_reason"])
            time.sleep(1.0)
        # out of service after kafka.unavailable_after (30 s), with the reason; the metric agrees
        assert not_ready and "unreachable" in not_ready[-1], not_ready[-1:]
        assert daemon.get("/readyz") is None  # 503
        assert daemon.metrics()[("driftmon_broker_up", (("model", "car-loan"),))] == 0
        own_broker.restart()
        producer.join(timeout=300)
        assert not producer.errors, producer.errors[:3]
        daemon.wait(lambda: group_caught_up(own_broker.bootstrap, config.kafka.group_id, topic, 2), 180,
                    "every message processed and committed after the restart")
        daemon.wait(lambda: daemon.get("/readyz") == b"ready: baseline loaded and consuming\n", 60, "ready again")
        assert daemon.metrics()[("driftmon_broker_up", (("model", "car-loan"),))] == 1
        assert daemon.terminate(timeout=30)[0] == 0
    finally:
        daemon.close()
    assert_exact(daemon, valid, invalid)


@pytest.mark.parametrize("client", CLIENTS)
def test_kill_9_five_times_in_a_row_mid_stream(tmp_path, own_broker, client):
    """kill -9 five times while the stream flows, each restart resuming from its checkpoint."""
    topic, path, config, daemon = setup_daemon(tmp_path, own_broker, partitions=2, client=client)
    messages, invalid = stream(60_000, seed=92)
    valid = len(messages) - invalid
    producer = Producer(own_broker.bootstrap, topic, messages, rate=800.0)  # 75 s: the kills come mid-stream
    runs = [daemon]
    try:
        daemon.start()
        producer.start()
        current = daemon
        caught_up = lambda: group_caught_up(own_broker.bootstrap, config.kafka.group_id, topic, 2)  # noqa: E731
        for kill in range(5):
            # some progress first (or, on a slow machine, the end of the stream)
            current.wait(lambda c=current: c.status()["messages_consumed"] > 200 or caught_up(), 90,
                         "progress before the kill")
            time.sleep(0.05 * kill)  # at different points inside windows and between checkpoints
            current.kill9()
            current = DaemonProcess(path, daemon.port, str(tmp_path / f"daemon-{kill + 2}.log")).start()
            runs.append(current)
        producer.join(timeout=300)
        assert not producer.errors, producer.errors[:3]
        current.wait(caught_up, 180, "every message processed and committed")
        assert "restored checkpoint" in current.log()
        assert current.terminate(timeout=30)[0] == 0
    finally:
        for d in runs:
            d.close()
    assert_exact(daemon, valid, invalid)


def test_disk_full_then_freed_loses_nothing(tmp_path, own_broker):
    """The state directory is a small tmpfs, filled mid-stream: driftmon keeps serving, counts the failed
    writes, commits nothing past its last durable checkpoint and pauses once a window waits; freed, it
    resumes by itself, and every message is counted exactly once."""
    # kafka-python only: the state directory's faults do not depend on the Kafka client.
    unmount = mount_tmpfs(tmp_path / "state", "2m")
    try:
        topic, path, config, daemon = setup_daemon(tmp_path, own_broker, partitions=1)
        messages, invalid = stream(12_000, seed=93)
        valid = len(messages) - invalid
        checkpoint = os.path.join(config.state.dir, "checkpoint.json")
        key = lambda name, **labels: (name, tuple(sorted({"model": "car-loan", **labels}.items())))  # noqa: E731
        try:
            daemon.start()
            Producer(own_broker.bootstrap, topic, messages[:4000], rate=5000.0).run()
            daemon.wait(lambda: daemon.status()["messages_consumed"] == 4000, 60, "4000 consumed")
            daemon.wait(lambda: daemon.status()["state"]["checkpoint"]["last_success"], 30, "a checkpoint")
            filler = fill_disk(config.state.dir)
            producer = Producer(own_broker.bootstrap, topic, messages[4000:], rate=2000.0)
            producer.start()
            status = daemon.wait(lambda: (s := daemon.status())["state"]["consumption_paused"] and s, 90,
                                 "consumption paused: a window waits for the disk")
            state = status["state"]
            assert state["checkpoint"]["failing"] and "No space left" in state["checkpoint"]["last_error"]
            assert state["windows_pending"] >= 1
            metrics = daemon.metrics()
            assert metrics[key("driftmon_state_write_failures_total", target="checkpoint")] >= 1
            assert metrics[key("driftmon_consumption_paused")] == 1
            assert daemon.get("/healthz") is not None and daemon.proc.poll() is None
            # nothing committed past the checkpoint on disk
            with open(checkpoint) as fh:
                saved = json.load(fh)["state"]["pipeline"]["positions"][f"{topic}:0"]
            consumer = KafkaConsumer(bootstrap_servers=own_broker.bootstrap, group_id=config.kafka.group_id,
                                     enable_auto_commit=False)
            committed = consumer.committed(TopicPartition(topic, 0))
            consumer.close()
            assert committed <= saved < status["messages_consumed"]
            time.sleep(3)  # still paused while full (a bounded state): consumption does not creep on
            assert daemon.status()["messages_consumed"] == status["messages_consumed"]

            os.remove(filler)
            daemon.wait(lambda: not (s := daemon.status()["state"])["consumption_paused"]
                        and not s["checkpoint"]["failing"], 60, "recovered by itself")
            producer.join(timeout=120)
            daemon.wait(lambda: group_caught_up(own_broker.bootstrap, config.kafka.group_id, topic, 1), 120,
                        "every message processed and committed")
            assert daemon.metrics()[key("driftmon_consumption_paused")] == 0
            assert daemon.terminate(timeout=30)[0] == 0
        finally:
            daemon.close()
        assert "Traceback" not in daemon.log()
        assert_exact(daemon, valid, invalid)
    finally:
        unmount()


def test_disk_full_under_the_label_join_store_then_freed_loses_nothing(tmp_path, own_broker):
    """Labels on their own topic: pending joins live in RocksDB on the state volume, a small tmpfs filled
    while labelled traffic flows. RocksDB refuses writes until it is reopened: driftmon keeps serving,
    counts the failures (target labels), pauses, and once freed reopens the store, rolls it back to the
    last durable checkpoint and reads again from there: matched/expired labels and window events exact."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import build_baseline
    from monitor.config import load_config
    from monitor.tansu import free_port
    from tests.helpers import read_jsonl
    from tests.labelled import config as labelled_config, label_messages, labelled, messages as predictions

    unmount = mount_tmpfs(tmp_path / "state", "8m")
    try:
        suffix = os.urandom(4).hex()
        preds_topic, labels_topic = f"preds-{suffix}", f"labels-{suffix}"
        own_broker.create_topic(preds_topic)
        own_broker.create_topic(labels_topic)
        pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
        tree = labelled_config(
            kafka={"bootstrap_servers": own_broker.bootstrap, "topic": preds_topic, "labels_topic": labels_topic,
                   "group_id": f"driftmon-{suffix}", "max_poll_interval_ms": 6000, "session_timeout_ms": 6000,
                   "commit_interval": "200ms", "max_poll_records": 200},
            window={"size": 2000}, labels={"window": 2000, "positive": "1", "ttl": "1h",
                                           "timestamp_path": "timestamp"},
            state={"dir": "state", "checkpoint_interval": "1s"})
        (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
        config = load_config(tmp_path / "driftmon.yaml")
        build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)
        cols = labelled(8000, seed=9)
        preds = predictions(cols, with_label=False)
        labels = label_messages(cols, delay=60.0)[:6000]  # 2000 predictions never get theirs
        labels = [labels[i] for i in np.random.default_rng(4).permutation(6000)]
        # past the TTL of every waiting prediction: they expire, and this label waits
        trigger = json.dumps({"id": "trigger", "timestamp": cols["timestamp"][0] + 3 * 3600, "y": 1}).encode()
        key = lambda name, **kv: (name, tuple(sorted({"model": "lender", **kv}.items())))  # noqa: E731
        daemon = DaemonProcess(str(tmp_path / "driftmon.yaml"), free_port(), str(tmp_path / "daemon.log"))
        try:
            daemon.start()
            Producer(own_broker.bootstrap, preds_topic, preds[:5000], rate=5000.0).run()
            Producer(own_broker.bootstrap, labels_topic, labels[:2000], rate=5000.0).run()
            daemon.wait(lambda: (s := daemon.status())["messages_consumed"] == 7000  # (labels are messages too)
                        and s["labels"]["received"] == 2000, 60, "the first predictions and labels")
            daemon.wait(lambda: daemon.status()["state"]["checkpoint"]["last_success"], 30, "a checkpoint")
            filler = fill_disk(config.state.dir)
            flows = [Producer(own_broker.bootstrap, preds_topic, preds[5000:], rate=1000.0),
                     Producer(own_broker.bootstrap, labels_topic, labels[2000:], rate=2000.0)]
            for flow in flows:
                flow.start()
            status = daemon.wait(lambda: (s := daemon.status())["state"]["consumption_paused"]
                                 and s["state"]["labels"]["failing"] and s, 90, "paused: the store refuses writes")
            assert "No space left" in status["state"]["labels"]["last_error"]
            metrics = daemon.metrics()
            assert metrics[key("driftmon_state_write_failures_total", target="labels")] >= 1
            assert metrics[key("driftmon_consumption_paused")] == 1
            assert daemon.get("/healthz") is not None and daemon.proc.poll() is None
            with open(os.path.join(config.state.dir, "checkpoint.json")) as fh:
                saved = json.load(fh)["state"]["pipeline"]["positions"]
            consumer = KafkaConsumer(bootstrap_servers=own_broker.bootstrap, group_id=config.kafka.group_id,
                                     enable_auto_commit=False)
            for topic in (preds_topic, labels_topic):  # nothing committed past the checkpoint on disk
                committed = consumer.committed(TopicPartition(topic, 0))
                assert committed is None or committed <= saved.get(f"{topic}:0", 0)
            consumer.close()

            os.remove(filler)
            daemon.wait(lambda: not (s := daemon.status()["state"])["consumption_paused"]
                        and not s["labels"]["failing"] and not s["checkpoint"]["failing"], 90,
                        "recovered by itself")
            for flow in flows:
                flow.join(timeout=120)
                assert not flow.errors
            for topic in (preds_topic, labels_topic):  # (before the trigger: it expires whatever waits)
                daemon.wait(lambda: group_caught_up(own_broker.bootstrap, config.kafka.group_id, topic, 1), 120,
                            f"{topic} processed and committed")
            assert daemon.status()["labels"]["received"] == 6000
            Producer(own_broker.bootstrap, labels_topic, [trigger], rate=1000.0).run()
            status = daemon.wait(lambda: (s := daemon.status())["labels"]["received"] == 6001 and s, 60,
                                 "the trigger label")
            assert status["labels"] == {"received": 6001, "matched": 6000, "expired": 2000, "pending": 1}
            daemon.wait(lambda: group_caught_up(own_broker.bootstrap, config.kafka.group_id, labels_topic, 1), 120,
                        "the trigger committed")
            assert daemon.metrics()[key("driftmon_consumption_paused")] == 0
            assert daemon.terminate(timeout=30)[0] == 0
        finally:
            daemon.close()
        assert "Traceback" not in daemon.log()
        assert_exact(daemon, 8000, 0)
        with open(os.path.join(config.state.dir, "checkpoint.json")) as fh:
            final = json.load(fh)["state"]["pipeline"]
        labelled_events = sum(w["window"]["labelled"]
                              for w in read_jsonl(os.path.join(config.state.dir, "performance.jsonl")))
        assert labelled_events + final["performance"]["labelled"] == 6000
        assert final["performance"]["join"]["matched"] == 6000 and final["performance"]["join"]["expired"] == 2000
    finally:
        unmount()
