"""Held partitions across an eager rebalance, on both sources (monitor.kafka_client), with in-memory consumers.

The consumers below model the one thing at stake: both client libraries keep a partition's pause flag when an
assignment gives it back (librdkafka across unassign() and assign(), kafka-python 3 for a partition in both
assignments). tests/test_kafka_client.py's test_a_partition_held_while_restoring_and_assigned_again_once_restored...
runs the same race on a real broker with the real libraries.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from kafka import TopicPartition

from monitor.config import KafkaConfig
from monitor.kafka_client import ConfluentSource, KafkaSource

TOPIC = "predictions"
KEYS = [f"{TOPIC}:0", f"{TOPIC}:1"]


class _Librdkafka:
    """confluent_kafka.Consumer's assignment and pause calls: the pause flag lives on the partition object,
    which outlives unassign() (as librdkafka's toppar does)."""

    def __init__(self):
        self.assignment_ = set()
        self.paused_ = set()
        self.sought = {}

    def assign(self, partitions):
        self.assignment_ = {(p.topic, p.partition) for p in partitions}

    def unassign(self):
        self.assignment_ = set()

    def assignment(self):
        from confluent_kafka import TopicPartition as TP

        return [TP(t, p) for t, p in sorted(self.assignment_)]

    def pause(self, partitions):
        self.paused_ |= {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions):
        self.paused_ -= {(p.topic, p.partition) for p in partitions}

    def seek(self, tp):
        from confluent_kafka import KafkaException

        if (tp.topic, tp.partition) not in self.assignment_:
            raise KafkaException("Local: Erroneous state")
        self.sought[(tp.topic, tp.partition)] = tp.offset

    def commit(self, **_kwargs):
        pass

    def fetching(self) -> set:
        return self.assignment_ - self.paused_


class _KafkaPython:
    """kafka-python 3's KafkaConsumer: a partition in both the old and the new assignment keeps its state (its
    pause flag included; SubscriptionState._apply_assignment), eager rebalances included."""

    def __init__(self):
        self.state: dict = {}  # TopicPartition -> paused
        self.sought = {}

    def reassign(self, partitions):
        self.state = {tp: self.state.get(tp, False) for tp in partitions}

    def pause(self, *partitions):
        for tp in partitions:
            self.state[tp] = True

    def resume(self, *partitions):
        for tp in partitions:
            self.state[tp] = False

    def paused(self) -> set:
        return {tp for tp, paused in self.state.items() if paused}

    def seek(self, tp, offset):
        if tp not in self.state:
            raise AssertionError("Unassigned partition")
        self.sought[(tp.topic, tp.partition)] = offset

    def fetching(self) -> set:
        return {(tp.topic, tp.partition) for tp, paused in self.state.items() if not paused}


def _confluent_rebalance(source, consumer, partitions):
    from confluent_kafka import TopicPartition as TP

    if source.assigned:
        source._on_revoke(consumer, [TP(tp.topic, tp.partition) for tp in sorted(source.assigned)])
    source._on_assign(consumer, [TP(TOPIC, p) for p in partitions])


def _kafka_python_rebalance(source, consumer, partitions):
    if source.assigned:
        asyncio.run(source.on_revoked(set(source.assigned)))
    tps = [TopicPartition(TOPIC, p) for p in partitions]
    consumer.reassign(tps)  # before the listener, as kafka-python's _on_join_complete does
    source.on_assigned(tps)


SOURCES = {"confluent-kafka": (ConfluentSource, _Librdkafka, _confluent_rebalance),
           "kafka-python": (KafkaSource, _KafkaPython, _kafka_python_rebalance)}


@pytest.mark.parametrize("client", sorted(SOURCES))
def test_a_held_partition_whose_restore_ends_inside_the_rebalance_is_fetched_when_assigned_again(client):
    """Restoring partitions 0 and 1 (held, paused), the member is revoked; the restores end before the new
    assignment (Cluster._install calls resume_held, which finds nothing held: the revocation cleared it); the
    assignment gives partition 1 back, no longer restoring. It must be fetched, at the position the assignment
    seeks it to; failed before the sources resumed such a partition at assignment."""
    cls, fake, rebalance = SOURCES[client]
    restoring = set(KEYS)
    positions: dict = {}

    def revoked(_keys):
        restoring.clear()  # installed during the rebalance
        positions.update({KEYS[1]: 42})  # what the restored partition's positions say
        assert source.resume_held(dict(positions))  # nothing held any more: nothing to seek or resume
        return {}

    source = cls(KafkaConfig(bootstrap_servers="unused:9092", topic=TOPIC, group_id="g", client=client),
                 lambda: dict(positions), on_revoke=revoked, held=lambda: set(restoring))
    consumer = source._consumer = fake()
    rebalance(source, consumer, [0, 1])
    assert consumer.fetching() == set()  # restoring: paused before any fetch
    rebalance(source, consumer, [1])
    assert consumer.fetching() == {(TOPIC, 1)}
    if client == "kafka-python":  # seeks at assignment (librdkafka starts at the assigned partition's offset)
        assert consumer.sought == {(TOPIC, 1): 42}


@pytest.mark.parametrize("client", sorted(SOURCES))
def test_a_partition_still_restoring_when_assigned_again_stays_held_until_resumed(client):
    """The other order: the restore outlives the rebalance, so the new assignment holds the partition again
    (paused), and only resume_held, once it is installed, resumes it."""
    cls, fake, rebalance = SOURCES[client]
    restoring = set(KEYS)
    source = cls(KafkaConfig(bootstrap_servers="unused:9092", topic=TOPIC, group_id="g", client=client),
                 lambda: {}, held=lambda: set(restoring))
    consumer = source._consumer = fake()
    rebalance(source, consumer, [0, 1])
    rebalance(source, consumer, [1])
    assert consumer.fetching() == set()
    restoring.clear()
    assert source.resume_held({KEYS[1]: 7})
    assert consumer.fetching() == {(TOPIC, 1)}
    assert consumer.sought == {(TOPIC, 1): 7}


def test_kafka_python_a_restore_installed_while_the_assignment_asks_what_is_held_is_resumed():
    """kafka-python calls on_assigned on its IO thread while the consuming thread restores: a restore
    installed (resume_held called) after the assignment asked ``held()`` but before it paused what that named
    found nothing held, and the partition stayed paused for good. resume_held now waits for the assignment."""
    restoring = set(KEYS)
    installer = []

    def held():  # the assignment asks; the consuming thread installs both restores right then
        named = set(restoring)
        if not installer:
            def install():
                restoring.clear()
                assert source.resume_held({KEYS[0]: 3, KEYS[1]: 5})

            installer.append(threading.Thread(target=install))
            installer[0].start()
            installer[0].join(0.5)  # done at once before the fix; after it, waits for the assignment
        return named

    source = KafkaSource(KafkaConfig(bootstrap_servers="unused:9092", topic=TOPIC, group_id="g"), lambda: {},
                         held=held)
    consumer = source._consumer = _KafkaPython()
    _kafka_python_rebalance(source, consumer, [0, 1])
    installer[0].join(10)
    assert not installer[0].is_alive()
    assert consumer.fetching() == {(TOPIC, 0), (TOPIC, 1)}
    assert consumer.sought == {(TOPIC, 0): 3, (TOPIC, 1): 5}


def test_kafka_python_a_restore_installed_after_its_position_was_read_is_sought_to_the_restored_position():
    """kafka-python calls on_assigned on its IO thread while the consuming thread restores: a restore installed
    after the assignment read the partition's position (none yet: still restoring) and before it asked ``held()``
    is not held, so resume_held does not seek it, and the assignment left it at the committed offsets instead of
    the restored positions. The assignment now reads the positions of what is not held after asking ``held()``."""
    restoring = set(KEYS)
    restored: dict = {}
    installer = []

    class Positions:  # Cluster.positions(): a partition's restored positions once installed (staged), else none
        def get(self, key, default=None):
            if key == KEYS[1] and not installer:  # partition 0's position was read: it is installed right now
                def install():
                    restored[KEYS[0]] = 3  # staged first, then out of the restoring set (Cluster._install)
                    restoring.discard(KEYS[0])
                    assert source.resume_held({KEYS[0]: 3})

                installer.append(threading.Thread(target=install))
                installer[0].start()
                installer[0].join(0.5)
            return restored.get(key, default)

    source = KafkaSource(KafkaConfig(bootstrap_servers="unused:9092", topic=TOPIC, group_id="g"), Positions,
                         held=lambda: set(restoring))
    consumer = source._consumer = _KafkaPython()
    _kafka_python_rebalance(source, consumer, [0, 1])
    installer[0].join(10)
    assert not installer[0].is_alive()
    assert consumer.fetching() == {(TOPIC, 0)}  # partition 1 still restoring: held
    assert consumer.sought == {(TOPIC, 0): 3}  # before: {} (the committed offsets)
