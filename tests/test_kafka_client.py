"""The scale-out part of monitor.kafka_client on a real Apache Kafka broker, the same contract on both clients.

What scale-out's exactly-once rests on: a second transactional producer of the same id fences the first
(its commit raises FencedError and its records are never read), ``read_to_end`` sees only committed
records, compacted topics are created with their configs, and the group consumer seeks where it is told.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest

from monitor.config import KafkaConfig
from monitor.kafka_client import (FencedError, ProduceTimeoutError, create_topics, fence, make_group_consumer,
                                  make_producer, make_transactional_producer, read_to_end)
from tests.test_daemon_integration import CLIENTS

pytestmark = pytest.mark.integration


def _cfg(broker, client: str, topic: str = "unused") -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=broker.bootstrap, topic=topic, group_id=f"g-{uuid.uuid4().hex[:8]}",
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


@pytest.mark.parametrize("init_producer_id_version", [None, 3])
def test_kafka_python_the_old_owners_own_epoch_bump_fences_it_never_the_new_owner(kafka_broker,
                                                                                  init_producer_id_version):
    """After a take-over the old owner's next batch fails with INVALID_PRODUCER_EPOCH and kafka-python 3.0 bumps
    the epoch by itself (KIP-360: InitProducerId with its producer id and epoch). Kafka refuses it with
    PRODUCER_FENCED from InitProducerId v4 on, and with INVALID_PRODUCER_EPOCH below (Kafka 2.5 and 2.6 have no
    v4; here the old owner's client is held to v3), to which kafka-python would initialize the id afresh and
    fence the new owner (``_refuse_own_init``). Either way the old owner is fenced and the new owner commits."""
    cfg = _cfg(kafka_broker, "kafka-python")
    topic = kafka_broker.create_topic(f"join-{uuid.uuid4().hex[:8]}", partitions=1)
    # a handler of its own: whatever levels and filters earlier tests left on the session's handlers
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    manager_log = logging.getLogger("kafka.producer.transaction_manager")
    manager_log.addHandler(handler)
    level = manager_log.level
    manager_log.setLevel(logging.WARNING)  # whatever an earlier test set "kafka" to
    old = fence(cfg, topic)
    new = None
    try:
        manager = old._producer._transaction_manager
        if init_producer_id_version is not None:
            versions = old._producer._sender._client._manager.broker_version_data.api_versions
            versions[22] = (versions[22][0], init_producer_id_version)  # 22: InitProducerId
        old.begin()
        old.send(topic, b"before", key=b"k", partition=0)
        old._producer.flush()  # the partition is in its transaction
        epoch = manager.producer_id_and_epoch
        new = fence(cfg, topic)  # the take-over: aborts the old owner's transaction under a later epoch
        old.send(topic, b"after", key=b"k", partition=0)
        old._producer.flush()  # refused: INVALID_PRODUCER_EPOCH, and kafka-python bumps the epoch
        deadline = time.monotonic() + 60
        while not manager.has_fatal_error() or manager.is_bumping_epoch():
            assert time.monotonic() < deadline, "the epoch bump was not answered within 60 s"
            time.sleep(0.05)
        assert any(m.startswith("Bumping producer epoch") for m in seen)  # the path under test was taken
        assert manager.has_fatal_error() and manager.producer_id_and_epoch == epoch  # not initialized again
        with pytest.raises(FencedError):
            old.commit()
        new.begin()
        new.send(topic, b"new owner", key=b"k", partition=0)
        new.commit()
    finally:
        manager_log.removeHandler(handler)
        manager_log.setLevel(level)
        old.close()
        if new is not None:
            new.close()
    assert [r.value for r in read_to_end(cfg, topic)] == [b"new owner"]


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


@pytest.mark.parametrize("client", CLIENTS)
def test_a_transaction_commits_the_source_groups_offsets_and_a_fenced_one_does_not(kafka_broker, client):
    """Scale-out with labels commits the source group's offsets inside each cut's transaction, with the
    source's ``group_metadata()`` (the group id on kafka-python, the consumer's group metadata on
    confluent-kafka): a committed transaction moves the group's offset; a fenced producer's never does, whether
    it was fenced with its offsets already in its open transaction or sends them after the take-over."""
    from kafka import KafkaConsumer, TopicPartition

    from monitor.kafka_client import make_source

    topic = f"source-{uuid.uuid4().hex[:8]}"
    changelog = f"changelog-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(kafka_broker, client, topic)
    create_topics(cfg, {topic: 1, changelog: 1})
    source = make_source(cfg, lambda: {}).start()
    # read_committed: its offset fetch asks for stable offsets (the broker answers once the transaction's
    # markers are written), so it never sees a pending transactional commit
    checker = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=cfg.group_id,
                            enable_auto_commit=False, isolation_level="read_committed")
    tp = TopicPartition(topic, 0)
    first = second = third = None
    try:
        deadline = time.monotonic() + 60
        while not source.assigned and time.monotonic() < deadline:  # a member of the group's generation
            source.poll(timeout_ms=200)
        assert source.assigned
        first = make_transactional_producer(cfg, f"{changelog}.0")
        first.init()
        first.begin()
        first.send(changelog, b"cut 1", key=b"k", partition=0)
        first.send_offsets({(topic, 0): 2}, source.group_metadata())
        first.commit()
        assert checker.committed(tp) == 2
        first.begin()
        first.send(changelog, b"stale", key=b"k", partition=0)
        first.send_offsets({(topic, 0): 5}, source.group_metadata())  # a zombie's cut, still open
        second = make_transactional_producer(cfg, f"{changelog}.0")
        second.init()  # the partition's new owner: fences the zombie and aborts its transaction
        with pytest.raises(FencedError):
            first.commit()
        assert checker.committed(tp) == 2  # the aborted offsets never count
        second.begin()
        second.send(changelog, b"cut 2", key=b"k", partition=0)
        second.send_offsets({(topic, 0): 3}, source.group_metadata())
        second.commit()
        assert checker.committed(tp) == 3
        # a zombie's whole cut after the take-over: its offsets or its commit fail, and nothing moves
        third = make_transactional_producer(cfg, f"{changelog}.0")
        third.init()
        second.begin()
        second.send(changelog, b"zombie", key=b"k", partition=0)
        with pytest.raises(FencedError):
            second.send_offsets({(topic, 0): 4}, source.group_metadata())
            second.commit()
        assert checker.committed(tp) == 3
        # a zombie that keeps sending: once its producer knows it is fenced, every call says so (kafka-python
        # raises KafkaError("Cannot perform send ...", ProducerFencedError()) then: that is FencedError too,
        # or the worker would retry under a new epoch and fence the partition's new owner)
        zombie = make_transactional_producer(cfg, f"{changelog}.0")
        zombie.init()
        third.close()
        third = make_transactional_producer(cfg, f"{changelog}.0")
        third.init()
        zombie.begin()
        with pytest.raises(FencedError):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the fencing surfaces on the producer's own thread first
                zombie.send(changelog, b"zombie", key=b"k", partition=0)
                time.sleep(0.1)
            zombie.commit()
        zombie.close()
    finally:
        for producer in (first, second, third):
            if producer is not None:
                producer.close()
        checker.close()
        source.close()
    assert [r.value for r in read_to_end(cfg, changelog)] == [b"cut 1", b"cut 2"]


@pytest.mark.parametrize("client", CLIENTS)
def test_offsets_of_a_member_that_left_the_generation_are_refused_as_fenced(kafka_broker, client):
    """A transaction's offsets go with the consumer's group metadata (member id, generation: KIP-447): the group metadata of a generation the group has left is refused, and that is a
    :class:`FencedError` (the worker rejoins), not an error after which it would take the transactional id
    again and fence the partition's new owner."""
    from monitor.kafka_client import make_source

    topic = f"source-{uuid.uuid4().hex[:8]}"
    changelog = f"changelog-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(kafka_broker, client, topic)
    create_topics(cfg, {topic: 2, changelog: 1})
    first = make_source(cfg, lambda: {}).start()
    second = producer = None
    try:
        deadline = time.monotonic() + 60
        while not first.assigned and time.monotonic() < deadline:
            first.poll(timeout_ms=200)
        assert first.assigned
        stale, rebalances = first.group_metadata(), first.rebalances  # the first generation's
        second = make_source(cfg, lambda: {}).start()  # joins: the group moves to a new generation
        deadline = time.monotonic() + 60
        while not (second.assigned and first.assigned and first.rebalances > rebalances) \
                and time.monotonic() < deadline:
            first.poll(timeout_ms=100)
            second.poll(timeout_ms=100)
        assert second.assigned and first.assigned and first.rebalances > rebalances
        producer = make_transactional_producer(cfg, f"{changelog}.0")
        producer.init()
        producer.begin()
        producer.send(changelog, b"stale cut", key=b"k", partition=0)
        with pytest.raises(FencedError, match="(?i)generation"):  # kafka-python: at the commit
            producer.send_offsets({(topic, 0): 1}, stale)
            producer.commit()
        producer.close()
        producer = make_transactional_producer(cfg, f"{changelog}.0")  # the current generation's offsets commit
        producer.init()
        producer.begin()
        producer.send(changelog, b"cut", key=b"k", partition=0)
        owned = next(iter(first.assigned)).partition
        producer.send_offsets({(topic, owned): 1}, first.group_metadata())
        producer.commit()
    finally:
        if producer is not None:
            producer.close()
        for source in (first, second):
            if source is not None:
                source.close()
    assert [r.value for r in read_to_end(cfg, changelog)] == [b"cut"]


class _FailingConsumer:
    """Stands in for kafka-python's consumer while the broker is down: ``poll`` raises ``errors`` in turn."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.polls = 0

    def poll(self, timeout_ms, max_records):
        self.polls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {}


def test_a_retriable_error_out_of_poll_is_an_idle_poll_and_any_other_is_raised(caplog):
    """kafka-python 3 can raise a connection error out of poll during an outage (a metadata refresh while
    it validates offsets): the daemon must see an idle poll and go on, not die; a refusal is raised. The log
    has the runbook's two lines: the first failure (not each new error), then the recovery."""
    import logging

    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, TopicAuthorizationFailedError

    from monitor.kafka_client import KafkaSource

    caplog.set_level(logging.INFO, logger="monitor.kafka_client")
    source = KafkaSource(KafkaConfig(bootstrap_servers="127.0.0.1:1", topic="t", group_id="g"), dict)
    source._consumer = _FailingConsumer([KafkaConnectionError("111 ECONNREFUSED"), KafkaTimeoutError("metadata")])
    assert source.poll(timeout_ms=1) == [] and source.poll(timeout_ms=1) == []
    assert source.poll_retries.failures == 2
    assert source.poll(timeout_ms=1) == [] and source.poll_retries.failures == 0 and source._consumer.polls == 3
    first = str(KafkaConnectionError("111 ECONNREFUSED"))
    assert [r.getMessage() for r in caplog.records if r.name == "monitor.kafka_client"] == [
        f"poll failed, retrying while the broker is unreachable: {first}",
        "poll works again after 2 failed polls",
    ]
    source._consumer = _FailingConsumer([TopicAuthorizationFailedError("denied")])
    with pytest.raises(TopicAuthorizationFailedError):
        source.poll(timeout_ms=1)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_transactional_init_is_bounded_by_the_timeout_it_is_given(own_broker, client):
    """``init(timeout_s)`` gives up after ``timeout_s`` when the broker does not answer, on both clients
    (kafka-python's own init_transactions() waits for the producer's max_block_ms, 60 s, instead)."""
    producer = make_transactional_producer(_cfg(own_broker, client), f"txn-{uuid.uuid4().hex[:8]}")
    own_broker.halt()  # the producer exists; its transaction coordinator will not be found
    started = time.monotonic()
    try:
        with pytest.raises(ProduceTimeoutError):
            producer.init(timeout_s=2.0)
        elapsed = time.monotonic() - started
    finally:
        producer.close(timeout_s=1.0)
        own_broker.restart()
    assert elapsed < 30, f"init(timeout_s=2) took {elapsed:.1f} s (kafka-python's max_block_ms is 60 s)"
    fence(_cfg(own_broker, client), f"txn-{uuid.uuid4().hex[:8]}", timeout_s=60).close()  # a live broker: fine


@pytest.mark.parametrize("client", CLIENTS)
def test_a_commit_that_timed_out_while_the_broker_was_stopped_commits_once_on_the_same_producer(own_broker, client):
    """A cut's commit times out while the broker is stopped (SIGSTOP: its outcome is unknown, as for a worker
    stopped inside its commit); once the broker runs again, the same call on the same producer (same epoch, no
    new ``init``) finishes it: its records are committed once, and the next transaction follows on that
    producer (monitor/join_changelog.py, ``PartitionLog.settle``)."""
    import signal

    from monitor.join_changelog import STATE_KEY, PartitionLog

    cfg = _cfg(own_broker, client)
    changelog = own_broker.create_topic(f"join-{uuid.uuid4().hex[:8]}", partitions=1)
    partials = own_broker.create_topic(f"partials-{uuid.uuid4().hex[:8]}", partitions=1)
    log = PartitionLog(cfg, changelog, 0, group=lambda: None)

    def write(seq: int, timeout_s: float = 30.0) -> None:
        log.write(partials, b"m", [{"seq": seq}], {f"id{seq}": {"seq": seq}}, {"seq": seq}, {}, timeout_s=timeout_s)

    try:
        log.fence()
        write(1)
        producer = log.producer
        own_broker.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ProduceTimeoutError):
                write(2, timeout_s=2.0)  # nothing can finish while the broker is stopped
            assert log.in_doubt == "commit" and log.producer is producer
        finally:
            own_broker.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 120
        while True:  # a broker just woken may take a while: the commit stays in doubt meanwhile
            try:
                committed = log.settle(timeout_s=10.0)
                break
            except ProduceTimeoutError:
                assert time.monotonic() < deadline, "the commit was not finished within 120 s"
        assert committed is True and log.in_doubt is None and log.producer is producer
        write(3)
        assert log.producer is producer
    finally:
        log.close()
    states = [json.loads(r.value)["seq"] for r in read_to_end(cfg, changelog, 0) if r.key == STATE_KEY]
    ids = [r.key for r in read_to_end(cfg, changelog, 0) if r.key != STATE_KEY]
    sent = [json.loads(r.value)["seq"] for r in read_to_end(cfg, partials, 0)]
    assert states == [1, 2, 3] and sent == [1, 2, 3] and ids == [b"id1", b"id2", b"id3"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_partition_held_while_restoring_and_assigned_again_once_restored_is_consumed(kafka_broker, client):
    """A partition held (paused) while its state is restored, revoked before it was resumed and assigned to
    the same member again once restored (no longer held) is consumed. librdkafka keeps an application's
    pause across a rebalance, so the confluent-kafka source resumes what it does not hold at each assignment
    (without it: a partition restored between the revocation and the next assignment stayed paused, its cuts
    never came; seen in test_labels_a_stalled_worker_that_wakes_up_is_fenced on confluent-kafka)."""
    from kafka import KafkaProducer

    from monitor.kafka_client import make_source

    topic = f"held-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(kafka_broker, client, topic)
    kafka_broker.create_topic(topic, partitions=2)
    holding = {f"{topic}:0", f"{topic}:1"}
    first = make_source(cfg, dict, held=lambda: set(holding)).start()
    second = None
    try:
        deadline = time.monotonic() + 60
        while len(first.assigned) < 2:
            assert time.monotonic() < deadline, "no assignment within 60 s"
            first.poll(timeout_ms=200)
        holding.clear()  # restored meanwhile; its resume_held never came (a rebalance is under way)
        second = make_source(cfg, dict, held=set).start()
        deadline = time.monotonic() + 60
        while not (len(first.assigned) == 1 and len(second.assigned) == 1):
            assert time.monotonic() < deadline, "no rebalance within 60 s"
            first.poll(timeout_ms=100)
            second.poll(timeout_ms=100)
        (own,) = first.assigned
        producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        try:
            for i in range(20):
                producer.send(topic, b"%d" % i, partition=i % 2)
            producer.flush(10.0)
        finally:
            producer.close()
        got: dict = {}
        deadline = time.monotonic() + 60
        while sum(got.values()) < 20 and time.monotonic() < deadline:
            for source in (first, second):
                for batch in source.poll(timeout_ms=100):
                    got[(source is first, batch.partition)] = got.get((source is first, batch.partition), 0) \
                        + len(batch.values)
        assert got == {(True, own.partition): 10, (False, 1 - own.partition): 10}
    finally:
        first.close()
        if second is not None:
            second.close()
