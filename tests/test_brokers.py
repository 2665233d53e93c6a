"""Contract tests of the broker harness: what the daemon relies on works on both brokers.

Each test runs against Apache Kafka and Tansu (the ``broker`` fixture is parametrized).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from tests import brokers

pytestmark = pytest.mark.integration

N = 1000


def _messages(n: int = N) -> list[dict]:
    return [{"id": f"req-{i:05d}", "seq": i, "car_value": 1000.0 + i * 0.5,
             "salary_range": ["low", "mid", "high"][i % 3], "y_pred": i % 2}
            for i in range(n)]


def _produce(bootstrap: str, topic: str, messages: list[dict], partition: int | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, json.dumps(m).encode(), partition=partition)
                   for m in messages]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)  # raises if any send failed
    finally:
        producer.close(timeout=10)


def _consumer(bootstrap: str, topic: str, group_id: str, config: dict, **extra) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group_id,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         **config, **extra)


def _value(record) -> dict:
    return json.loads(record.value)


def _consume(consumer: KafkaConsumer, want: int, timeout_s: float = 60.0) -> list:
    """Poll until ``want`` records arrived (or the timeout passed); returns the records."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
    return got


def _no_more(consumer: KafkaConsumer, seconds: float = 1.5) -> list:
    extra: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            extra.extend(records)
    return extra


def test_roundtrip_exact_count_and_content_with_explicit_commit(broker, topic, group_id,
                                                                group_consumer_config):
    sent = _messages()
    _produce(broker.bootstrap, topic, sent)
    tp = TopicPartition(topic, 0)

    consumer = _consumer(broker.bootstrap, topic, group_id, group_consumer_config)
    try:
        got = _consume(consumer, N)
        got += _no_more(consumer)
        assert len(got) == N
        assert [_value(r) for r in got] == sent
        assert [r.offset for r in got] == list(range(N))
        assert consumer.committed(tp) is None  # auto-commit is off: nothing committed yet
        consumer.commit()
        assert consumer.committed(tp) == N
    finally:
        consumer.close(autocommit=False)

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets = admin.list_group_offsets({group_id: [tp]})[group_id]
    finally:
        admin.close()
    assert offsets[tp].offset == N


def test_second_consumer_in_group_resumes_from_committed_offset(broker, topic, group_id,
                                                                group_consumer_config):
    sent = _messages()
    _produce(broker.bootstrap, topic, sent)
    tp = TopicPartition(topic, 0)
    half = 400

    first = _consumer(broker.bootstrap, topic, group_id, group_consumer_config)
    try:
        got = _consume(first, half)
        assert len(got) >= half
        assert [_value(r) for r in got[:half]] == sent[:half]
        first.commit({tp: OffsetAndMetadata(half, "", -1)})
        assert first.committed(tp) == half
    finally:
        first.close(autocommit=False)

    second = _consumer(broker.bootstrap, topic, group_id, group_consumer_config)
    try:
        got = _consume(second, N - half)
        got += _no_more(second)
        assert [r.offset for r in got] == list(range(half, N))
        assert [_value(r) for r in got] == sent[half:]
        second.commit()
        assert second.committed(tp) == N
    finally:
        second.close(autocommit=False)


def test_multi_partition_topic_delivers_every_message_once(broker, topic_factory, group_id,
                                                           group_consumer_config):
    topic = topic_factory(partitions=3)
    sent = _messages()
    for p in range(3):
        _produce(broker.bootstrap, topic, sent[p::3], partition=p)

    consumer = _consumer(broker.bootstrap, topic, group_id, group_consumer_config)
    try:
        got = _consume(consumer, N)
        got += _no_more(consumer)
        assert sorted(_value(r)["seq"] for r in got) == list(range(N))
        assert {r.partition for r in got} == {0, 1, 2}
        for p in range(3):  # order holds within each partition
            assert [_value(r) for r in got if r.partition == p] == sent[p::3]
        consumer.commit()
        for p in range(3):
            assert consumer.committed(TopicPartition(topic, p)) == len(sent[p::3])
    finally:
        consumer.close(autocommit=False)


# -- the harness itself ----------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_context_manager_starts_and_stops_and_cleans_up():
    with brokers.TansuBroker() as b:
        port, workdir = b.port, b.workdir
        assert b.bootstrap == f"127.0.0.1:{port}"
        assert _port_open(port)
    assert not _port_open(port)
    assert not workdir.exists()


def test_start_failure_reports_the_log_tail():
    class Broken(brokers.TansuBroker):
        def _command(self):
            return super()._command() + ["--no-such-option"]

    b = Broken()
    with pytest.raises(brokers.BrokerStartError) as e:
        b.start()
    try:
        assert "exited with code" in str(e.value)
        assert "--no-such-option" in str(e.value)  # from the broker's own output
        assert str(b.log_path) in str(e.value)
    finally:
        shutil.rmtree(b.log_path.parent, ignore_errors=True)


def test_missing_kafka_jars_tell_to_run_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("DRIFTMON_CACHE", str(tmp_path))
    with pytest.raises(brokers.BrokerToolMissing, match="scripts/setup.sh"):
        brokers.KafkaBroker()


def test_cluster_ids_never_look_like_options():
    ids = {brokers._cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_tansu_binary_is_executable():
    path = brokers.tansu_binary()
    assert os.access(path, os.X_OK)


def test_kafka_server_properties_override(tmp_path):
    with brokers.KafkaBroker(server_properties={"auto.create.topics.enable": "true"}) as b:
        text = (b.workdir / "server.properties").read_text()
        assert "auto.create.topics.enable=true" in text
        producer = KafkaProducer(bootstrap_servers=b.bootstrap)
        try:
            assert producer.send("auto-created", b"x").get(timeout=30).offset == 0
        finally:
            producer.close(timeout=5)
