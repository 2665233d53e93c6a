"""The scale-out part of monitor.kafka_client on a real Apache Kafka broker, the same contract on both clients.

What scale-out's exactly-once rests on: a second transactional producer of the same id fences the first
(its commit raises FencedError and its records are never read), ``read_to_end`` sees only committed
records, compacted topics are created with their configs, and the group consumer seeks where it is told.
"""

from __future__ import annotations

import time
import uuid

import pytest

from monitor.config import KafkaConfig
from monitor.kafka_client import (FencedError, create_topics, make_group_consumer, make_producer,
                                  make_transactional_producer, read_to_end)
from tests.test_daemon_integration import CLIENTS

pytestmark = pytest.mark.integration


def _cfg(broker, client: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=broker.bootstrap, topic="unused", group_id=f"g-{uuid.uuid4().hex[:8]}",
                       session_timeout_ms=6000, client=client)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_second_transactional_producer_fences_the_first_and_readers_see_only_commits(kafka_broker, client):
    cfg = _cfg(kafka_broker, client)
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    configs = {topic: {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}}
    assert create_topics(cfg, {topic: 1}, configs=configs) == [topic]
    assert create_topics(cfg, {topic: 1}, configs=configs) == []  # already there: left alone
    assert list(read_to_end(cfg, topic)) == []

    first = make_transactional_producer(cfg, topic)
    second = None
    try:
        first.init()
        first.begin()
        first.send(topic, b"committed", key=b"m")
        first.commit()
        first.begin()
        first.send(topic, b"stale", key=b"m")  # the open transaction of a stalled owner
        second = make_transactional_producer(cfg, topic)
        second.init()  # a take-over: fences the first and aborts its open transaction
        with pytest.raises(FencedError):
            first.commit()
        second.begin()
        second.send(topic, b"taken over", key=b"m")
        second.commit()
    finally:
        first.close()
        if second is not None:
            second.close()
    records = list(read_to_end(cfg, topic))
    assert [(r.key, r.value) for r in records] == [(b"m", b"committed"), (b"m", b"taken over")]
    assert records[0].offset < records[1].offset


@pytest.mark.parametrize("client", CLIENTS)
def test_the_group_consumer_reads_what_was_acknowledged_and_seeks(kafka_broker, client):
    cfg = _cfg(kafka_broker, client)
    topic = f"partials-{uuid.uuid4().hex[:8]}"
    create_topics(cfg, {topic: 1})
    producer = make_producer(cfg, compression="gzip")
    outcomes: list = []
    for i in range(3):
        producer.send_async(topic, b"v%d" % i, None, outcomes.append, key=b"m")
    producer.flush(30.0)
    producer.close()
    assert outcomes == [None, None, None]

    events: list = []
    consumer = make_group_consumer(cfg, cfg.group_id, [topic], on_assign=lambda p: events.append(("assign", p)),
                                   on_revoke=lambda p: events.append(("revoke", p)))
    try:
        assert consumer.partitions(topic) == 1

        def read(n: int) -> list:
            got, deadline = [], time.monotonic() + 60
            while len(got) < n and time.monotonic() < deadline:
                got += consumer.poll(timeout_ms=500, max_records=10)
            return got

        first = read(3)
        assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in first] == \
            [(topic, 0, i, b"m", b"v%d" % i) for i in range(3)]
        assert ("assign", [(topic, 0)]) in events
        consumer.seek(topic, 0, 1)
        assert [r.value for r in read(2)] == [b"v1", b"v2"]
        consumer.seek(topic, 0, None)  # the beginning
        assert [r.value for r in read(3)] == [b"v0", b"v1", b"v2"]
    finally:
        consumer.close()
