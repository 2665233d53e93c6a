"""Kafka source: a consumer group member that resumes from the checkpoint's offsets."""

from __future__ import annotations

import logging
import threading

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from monitor.config import KafkaConfig, kafka_secrets, ssl_key_password
from monitor.kafka_security import check_brokers, ssl_context

__all__ = ["KafkaSource", "PartitionBatch", "client_options", "consumer_options"]

log = logging.getLogger(__name__)


def client_options(cfg: KafkaConfig) -> dict:
    """Connection and security options shared by the consumer, the lag client and producers."""
    options = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        # kafka-python backs off up to 30 s between reconnects; after an outage that is up to 30 s more
        # without data. Java clients use 1 s.
        "reconnect_backoff_max_ms": 1000,
    }
    if cfg.sasl_mechanism:
        options["sasl_mechanism"] = cfg.sasl_mechanism
        options["sasl_plain_username"] = cfg.sasl_plain_username
    if cfg.security_protocol.endswith("SSL"):
        # One context built here (files and key passphrase checked with clear errors) serves every client
        # and the start-up security check alike.
        options["ssl_context"] = ssl_context(cfg, ssl_key_password(cfg))
    options.update(kafka_secrets(cfg))
    return options


def consumer_options(cfg: KafkaConfig) -> dict:
    """The group consumer's options: auto-commit off, batched polls."""
    return dict(
        group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset=cfg.auto_offset_reset,
        max_poll_records=cfg.max_poll_records,
        max_poll_interval_ms=cfg.max_poll_interval_ms,
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
        fetch_max_bytes=cfg.fetch_max_bytes,
        max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
        metrics_enabled=False,  # kafka-python's own metrics cost a fifth of the consume rate
        **client_options(cfg),
    )


class _Consumer(KafkaConsumer):
    """A KafkaConsumer that releases its network thread when the constructor fails (kafka-python
    starts it before bootstrapping, and a failed bootstrap would leak one thread per retry)."""

    def __init__(self, **options):
        try:
            super().__init__(**options)
        except BaseException:
            client = getattr(self, "_client", None)
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a half-built client: nothing more to do
                    pass
            raise


def partition_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class PartitionBatch:
    """The records one poll returned for one partition, as columns."""

    __slots__ = ("key", "topic", "partition", "values", "offsets", "_records")

    def __init__(self, key, topic, partition, records):
        self.key = key
        self.topic = topic
        self.partition = partition
        self._records = records
        self.values = [r.value for r in records]
        first, last = records[0].offset, records[-1].offset
        if last - first + 1 == len(records):  # no gaps (the usual case; compacted topics have them)
            self.offsets = np.arange(first, last + 1, dtype=np.int64)
        else:
            self.offsets = np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))

    def times(self) -> np.ndarray:
        """Broker timestamps in epoch seconds (computed only when a message lacks its own event time)."""
        recs = self._records
        return np.fromiter((r.timestamp for r in recs), dtype=np.float64, count=len(recs)) / 1000.0


class _Listener(AsyncConsumerRebalanceListener):
    """kafka-python (3.x) calls these on its IO thread, the one that sends heartbeats and requests:
    a blocking consumer call there fails ("Cannot block on net.run() from the IO thread"), so the
    hand-over commit is awaited instead, which keeps the loop (and the heartbeats) running."""

    def __init__(self, source: "KafkaSource"):
        self.source = source

    async def on_partitions_revoked(self, revoked):
        await self.source.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned):
        self.source.on_assigned(assigned)

    async def on_partitions_lost(self, lost):
        self.source.on_lost(lost)


class KafkaSource:
    """Consume the prediction topic in a consumer group, auto-commit off.

    Parameters
    ----------
    cfg : KafkaConfig
    positions : callable
        Returns the checkpointed "topic:partition" -> next offset map. On assignment,
        partitions found there are sought to it (the checkpoint is the source of truth);
        others start from the group's committed offset.
    on_revoke : callable, optional
        ``on_revoke(keys) -> {key: offset}``: called before partitions are taken away in a
        rebalance, while they can still be committed. It makes the processed events durable and
        returns the offsets that are, which are committed (awaited) before the rebalance goes on,
        so the partitions' next owner starts exactly where this member's checkpoint ends.
    on_release : callable, optional
        ``on_release(keys)``: partitions revoked (or lost) that went to another member. Their
        positions must be forgotten: if they come back later, the group's committed offset (where
        the other member stopped) is right, not this member's old position.
    """

    def __init__(self, cfg: KafkaConfig, positions, on_revoke=None, on_release=None):
        self.cfg = cfg
        self.positions = positions
        self.on_revoke = on_revoke
        self.on_release = on_release
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.rebalances = 0
        self._revoked: set[TopicPartition] = set()  # held before the rebalance in progress
        self._rewind: dict[TopicPartition, int] = {}  # records polled but dropped as no longer owned
        self._consumer: KafkaConsumer | None = None
        self._lag_client: KafkaConsumer | None = None
        self._lag_lock = threading.Lock()

    def start(self, bootstrap_timeout_ms: int = 30_000) -> "KafkaSource":
        """Create the consumer and subscribe; raises (kafka-python's errors) when the broker cannot be
        reached within ``bootstrap_timeout_ms`` or the client settings are refused."""
        cfg = self.cfg
        options = consumer_options(cfg)
        if cfg.security_protocol != "PLAINTEXT":
            check_brokers(cfg, options)  # a refused certificate or password: one line, not 30 s of retries
        self._consumer = _Consumer(**options, bootstrap_timeout_ms=bootstrap_timeout_ms)
        topics = [cfg.topic] + ([cfg.labels_topic] if cfg.labels_topic else [])
        self._consumer.subscribe(topics, listener=_Listener(self))
        return self

    def owns(self, batch: "PartitionBatch") -> bool:
        """Whether this member still holds a polled batch's partition; if not, the batch must be
        dropped (the partition's next owner reads it) and is re-read here if the partition comes back."""
        tp = TopicPartition(batch.topic, batch.partition)
        if tp in self.assigned:
            return True
        first = int(batch.offsets[0])
        self._rewind[tp] = min(first, self._rewind.get(tp, first))
        return False

    # Rebalance callbacks run on kafka-python's IO thread (see _Listener), while the consuming
    # thread waits in poll() or works on records it polled before: `assigned` is cleared first, so
    # the consuming thread drops (see owns) what it has not processed when the checkpoint is taken.
    def on_assigned(self, assigned) -> None:
        released = self._revoked - set(assigned)
        self._revoked = set()
        if released and self.on_release is not None:
            self.on_release([partition_key(tp) for tp in released])
        saved = self.positions()
        for tp in assigned:
            offset = saved.get(partition_key(tp), self._rewind.get(tp))
            if offset is not None:
                self._consumer.seek(tp, offset)
        self._rewind = {}
        self.assigned = frozenset(assigned)
        self.rebalances += 1
        log.info("assigned partitions %s", sorted(partition_key(tp) for tp in assigned))

    async def on_revoked(self, revoked) -> None:
        self.assigned = frozenset()
        self._revoked |= set(revoked)
        log.info("partitions revoked: %s", sorted(partition_key(tp) for tp in revoked))
        if not revoked or self.on_revoke is None:
            return
        try:
            durable = self.on_revoke([partition_key(tp) for tp in revoked])
            offsets = {tp: OffsetAndMetadata(durable[partition_key(tp)], "", -1)
                       for tp in revoked if partition_key(tp) in durable}
            if offsets:
                await self._consumer.commit_async(offsets)
                log.info("committed before the hand-over: %s",
                         {partition_key(tp): o.offset for tp, o in sorted(offsets.items())})
        except Exception as exc:  # the rebalance goes on; the next owner re-reads from the last commit
            log.warning("checkpoint/commit before the rebalance failed: %s", exc)

    def on_lost(self, lost) -> None:
        """Membership lost (a session timeout): the partitions may already be elsewhere, so no commit."""
        self.assigned = frozenset()
        # Released only if the next assignment gives them to someone else: a lone member that lost its
        # session (a broker restart, a long pause) gets them back and resumes at its own checkpoint.
        self._revoked |= set(lost)
        log.warning("partitions lost with the group membership (not committed): %s",
                    sorted(partition_key(tp) for tp in lost))

    def poll(self, timeout_ms: int = 500) -> list[PartitionBatch]:
        records = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.max_poll_records)
        out = []
        for tp in sorted(records, key=lambda t: (t.topic, t.partition)):
            if records[tp]:
                out.append(PartitionBatch(partition_key(tp), tp.topic, tp.partition, records[tp]))
        return out

    def pause(self, paused: bool) -> None:
        """Stop (or resume) fetching from every assigned partition; poll() still keeps the membership."""
        try:
            if paused:
                self._consumer.pause(*self._consumer.assignment())  # again each time: covers new assignments
            elif self._consumer.paused():
                self._consumer.resume(*self._consumer.paused())
        except KeyError:  # the assignment changed in between; the next call covers it
            pass

    def commit(self, positions: dict[str, int], timeout_ms: int | None = None) -> None:
        """Commit the given next offsets for the partitions this member holds (KafkaTimeoutError after
        ``timeout_ms``; None waits as long as it takes)."""
        offsets = {}
        for tp in self.assigned:
            offset = positions.get(partition_key(tp))
            if offset is not None:
                offsets[tp] = OffsetAndMetadata(offset, "", -1)
        if offsets:
            self._consumer.commit(offsets, timeout_ms=timeout_ms)

    def probe(self, positions: dict[str, int], timeout_ms: int) -> tuple[dict[int, int], bool]:
        """One round trip to the broker on a client of its own (safe off the consuming thread).

        Asks for the end offsets of the assigned partitions (of the topic's partitions when none is
        assigned). Returns the lag of the prediction topic's partitions (partition -> messages) and
        whether every assigned partition was read to its end. Raises when the broker does not answer
        within ``timeout_ms``.
        """
        cfg = self.cfg
        with self._lag_lock:
            if self._lag_client is None:
                self._lag_client = _Consumer(metrics_enabled=False, enable_auto_commit=False,
                                             request_timeout_ms=max(1000, timeout_ms),
                                             bootstrap_timeout_ms=timeout_ms, **client_options(cfg))
            assigned = list(self.assigned)
            partitions = assigned or [TopicPartition(cfg.topic, p)
                                      for p in sorted(self._lag_client.partitions_for_topic(cfg.topic) or {0})]
            ends = self._lag_client.end_offsets(partitions, timeout_ms=timeout_ms)
        lag, caught_up = {}, bool(assigned)
        for tp in assigned:
            end = ends.get(tp)
            position = positions.get(partition_key(tp))
            if end is None or position is None:
                continue  # nothing read from it yet: no position to measure from
            if position < end:
                caught_up = False
            if tp.topic == cfg.topic:
                lag[tp.partition] = max(0, end - position)
        return lag, caught_up

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the clients, each bounded by ``timeout_s`` (a broker that is down does not hold up exit)."""
        if self._lag_lock.acquire(timeout=min(0.2, timeout_s)):  # a probe in flight: leave its client to exit
            try:
                if self._lag_client is not None:
                    self._lag_client.close(timeout_ms=int(timeout_s * 1000))
                    self._lag_client = None
            finally:
                self._lag_lock.release()
        if self._consumer is not None:
            self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
