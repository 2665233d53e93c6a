"""Every Kafka client of the daemon behind one small interface, on kafka-python or confluent-kafka.

``kafka.client`` picks the library: ``kafka-python`` (the default, pure Python) or
``confluent-kafka`` (librdkafka, the optional extra ``driftmon[confluent]``: it parses records in C,
several times faster). The rest of driftmon uses only what this module returns:

- :func:`make_source` -> a consumer-group source with ``start(bootstrap_timeout_ms)``,
  ``poll(timeout_ms) -> [PartitionBatch]``, ``owns(batch)``, ``pause(bool)``, ``commit(positions,
  timeout_ms)``, ``probe(positions, timeout_ms)``, ``group_metadata()``, ``close(timeout_s)`` and the
  attributes ``assigned`` and ``rebalances``; rebalance
  hand-overs go through the ``on_revoke`` and ``on_release`` callbacks (see :class:`KafkaSource`, the
  kafka-python one, and :class:`ConfluentSource`); partitions named by ``held()`` at assignment stay
  paused (their state is being restored) until ``resume_held(positions)`` seeks and resumes them.
- :func:`make_producer` -> ``send(...)``, ``send_async(...)``, ``poll()``, ``flush(timeout_s)``,
  ``close(timeout_s)`` (alert sinks, dead letters, scale-out's partials), raising :class:`ProduceError` when a
  record is refused.
- :func:`create_topics` (the demo's, the tests' and scale-out's admin needs: partitions, replication,
  topic configs such as ``cleanup.policy=compact``).
- Scale-out (:mod:`monitor.cluster`): :func:`make_group_consumer` (a plain group member over
  :class:`Record` objects, ``read_committed``), :func:`make_transactional_producer` (``init``, ``begin``,
  ``send``, ``send_offsets``, ``commit``, ``abort``; a fenced producer raises :class:`FencedError`),
  :func:`fence` (one, initialized), :func:`check_access` (the ACLs, at start) and
  :func:`read_to_end` (one partition's committed records up to its end, for the changelogs).

No other module of ``monitor`` imports a Kafka library. Both implementations read the same
:class:`~monitor.config.KafkaConfig`, with the same TLS and SASL settings and the same start-up security
check (:func:`monitor.kafka_security.check_brokers`).
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from functools import partial

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata

from monitor.config import ConfigError, KafkaConfig, kafka_secrets, ssl_key_password
from monitor.kafka_security import check_brokers, ssl_context

__all__ = ["AbortableError", "AuthorizationError", "ConfluentSource", "FencedError", "KafkaSource", "PartitionBatch", "ProduceError", "ProduceTimeoutError",
           "Record", "RecordTooLargeError", "RetryLog", "client_options", "consumer_options", "create_topics",
           "make_group_consumer", "make_producer", "make_source", "make_transactional_producer",
           "read_to_end", "refusal", "sasl_mechanism", "check_access"]

log = logging.getLogger(__name__)
#: librdkafka's lines, through logging (the CLI's once-a-minute filter of kafka's messages) instead of straight to
#: stderr: a consumer whose broker is down logs a failed connect about 20 times a second. Served by the client's
#: polls, so only the consumers that poll all the time (and the probe's, which polls after each probe) log here.
LIBRDKAFKA_LOG = logging.getLogger("kafka.librdkafka")


class ProduceError(Exception):
    """A record the broker did not take (after the client's own retries)."""


class RecordTooLargeError(ProduceError):
    """The record is larger than the producer's or the broker's limit."""


class ProduceTimeoutError(ProduceError):
    """Not delivered (or not even queued) in time."""


class FencedError(ProduceError):
    """A transactional producer was fenced: another one initialized the same transactional id since."""


class AbortableError(ProduceError):
    """The open transaction failed (a record or the offsets were not taken) and will not commit: ``abort()``
    it on the same producer, then write it again."""


class AuthorizationError(ProduceError):
    """The broker refused the principal a transactional id, group or topic (a missing ACL). Not a fence:
    no other producer took over, and rejoining the group cannot help; ``str()`` is the one line to show
    (:func:`refusal`)."""


#: what a principal needs on each kind of resource scale-out uses
_NEEDS = {"transactional id": ("WRITE and DESCRIBE", "TransactionalId"), "group": ("READ", "Group"),
          "topic": ("READ, WRITE and DESCRIBE", "Topic")}


def principal(cfg: KafkaConfig) -> str:
    """The principal the broker sees for ``cfg``, as its ACLs name it (as far as the config tells)."""
    if cfg.security_protocol.startswith("SASL"):
        if cfg.sasl_plain_username:
            return f"User:{cfg.sasl_plain_username}"
        return f"the {cfg.sasl_mechanism} principal"
    if cfg.ssl_certfile:
        return f"the principal of {cfg.ssl_certfile} (its subject, unless the broker maps it)"
    return "User:ANONYMOUS"


def refusal(cfg: KafkaConfig, kind: str, name: str) -> str:
    """The one line for a refused resource: ``kind`` is "transactional id", "group" or "topic"."""
    needs, resource = _NEEDS[kind]
    return (f"Kafka refused {kind} '{name}' for principal {principal(cfg)}: grant {needs} on {resource} "
            f"'{name}' (or a prefix of it; docs/helm.md, scale-out ACLs)")


def check_access(cfg: KafkaConfig, transactional_ids=(), groups=(), topics=(), timeout_s: float = 30.0) -> None:
    """Raise :class:`AuthorizationError` (the first refusal's one line) when the principal may not describe one
    of ``transactional_ids``, ``groups`` or ``topics``; other failures raise the client's error.

    Nothing is initialized, joined or written (initializing a transactional id would fence its current
    owner): each resource is described, which every ACL that grants its use also allows (WRITE and READ
    imply DESCRIBE). A principal granted DESCRIBE alone passes here and is refused at its first write,
    with the same line. One kafka-python admin client on either ``kafka.client`` (librdkafka's has no
    call that describes a transactional id).
    """
    from kafka import errors
    from kafka.admin import KafkaAdminClient

    deadline = time.monotonic() + timeout_s

    def answer(call, *args):
        while True:  # e.g. the transaction coordinator's topic is created by the first lookup of an id
            try:
                return call(*args)
            except errors.KafkaError as exc:
                if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    admin = KafkaAdminClient(**client_options(cfg), request_timeout_ms=int(timeout_s * 1000))
    try:
        for transactional_id in transactional_ids:
            try:
                answer(admin.describe_transactions, [transactional_id])
            except errors.TransactionalIdNotFoundError:
                pass  # allowed, and never used yet
            except errors.TransactionalIdAuthorizationFailedError:
                raise AuthorizationError(refusal(cfg, "transactional id", transactional_id)) from None
        for group in groups:
            try:
                answer(admin.describe_groups, [group])  # an unknown group is described as Dead: allowed
            except errors.GroupAuthorizationFailedError:
                raise AuthorizationError(refusal(cfg, "group", group)) from None
        for topic in topics:
            for found in answer(admin.describe_topics, [topic]):
                if found.get("error_code") == errors.TopicAuthorizationFailedError.errno:
                    raise AuthorizationError(refusal(cfg, "topic", topic))
    finally:
        admin.close()


class Record:
    """One consumed record, the same on both clients."""

    __slots__ = ("topic", "partition", "offset", "key", "value")

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value


def make_source(cfg: KafkaConfig, positions, on_revoke=None, on_release=None, held=None):
    """The consumer-group source for ``cfg.client`` (not started)."""
    if cfg.client == "confluent-kafka":
        return ConfluentSource(cfg, positions, on_revoke=on_revoke, on_release=on_release, held=held)
    return KafkaSource(cfg, positions, on_revoke=on_revoke, on_release=on_release, held=held)


def make_producer(cfg: KafkaConfig, max_request_bytes: int | None = None, max_block_s: float | None = None,
                  compression: str | None = None):
    """A producer (acks=all) for ``cfg.client``.

    ``send(topic, value, headers, key, wait_s)`` waits for the acknowledgement when ``wait_s`` is
    given; ``send_async(topic, value, headers, on_done, key)`` calls ``on_done(None)`` or ``on_done(exc)``
    (:class:`RecordTooLargeError`, :class:`ProduceTimeoutError` or another error) from the client's
    thread or from :meth:`poll`, which the caller runs now and then (librdkafka delivers results there).
    ``max_request_bytes`` caps a request; ``max_block_s`` bounds a send that waits for room or metadata;
    ``compression`` is a codec both clients know (``gzip``).
    """
    if cfg.client == "confluent-kafka":
        return _ConfluentProducer(cfg, max_request_bytes, max_block_s, compression)
    return _KafkaPythonProducer(cfg, max_request_bytes, max_block_s, compression)


def create_topics(cfg: KafkaConfig, topics: dict[str, int], timeout_s: float = 30.0, replication_factor: int = 1,
                  configs: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Create topics (name -> partitions) with ``configs`` (name -> topic configs); existing ones are left
    alone. Returns the names created; raises the client's error for a topic the broker refuses."""
    configs = configs or {}
    created = []
    if cfg.client == "confluent-kafka":
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(librdkafka_options(cfg))
        futures = admin.create_topics([NewTopic(t, n, replication_factor, config=configs.get(t, {}))
                                       for t, n in topics.items()], request_timeout=timeout_s)
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                created.append(topic)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        return created
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_options(cfg))
    try:
        for topic, n in topics.items():  # one request each: an error names its own topic
            try:
                admin.create_topics([NewTopic(topic, n, replication_factor, topic_configs=configs.get(topic, {}))])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return created


# ---- kafka-python -----------------------------------------------------------------------------------

def sasl_mechanism(options: dict):
    """kafka-python's SASL mechanism for ``options`` (the start-up security check speaks SASL with it)."""
    try:
        from kafka.net.sasl import get_sasl_mechanism  # kafka-python 3
    except ImportError:  # kafka-python 2
        from kafka.sasl import get_sasl_mechanism
    return get_sasl_mechanism(options["sasl_mechanism"])(**options)


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
    """The group consumer's options: auto-commit off, batched polls, the range assignor.

    The range assignor gives each member the same partition numbers of every subscribed topic with equal
    partition counts, so label partition p goes where prediction partition p is read (the label join needs
    it). It is kafka-python's default, pinned here so that a change of defaults cannot split the pairs
    (ConfluentSource sets ``range`` too).
    """
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    return dict(
        partition_assignment_strategy=(RangePartitionAssignor,),
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


class RetryLog:
    """The log of a call retried until it works (a poll, a send): a warning at its first failure, not one per
    retry, and one line when it works again.

    Parameters
    ----------
    logger : logging.Logger
    failing : str
        The warning, ``%s`` standing for the error.
    working : str
        The line when the call works again, ``%d`` standing for the failures in a row.
    distinct : bool
        Warn again whenever the error differs from the previous failure's.
    """

    def __init__(self, logger: logging.Logger, failing: str, working: str, distinct: bool = False):
        self.logger = logger
        self.failing = failing
        self.working = working
        self.distinct = distinct
        self.failures = 0  # in a row
        self.error = ""  # the last failure's

    def failed(self, exc: BaseException) -> None:
        error = str(exc)
        if not self.failures or (self.distinct and error != self.error):
            self.logger.warning(self.failing, exc)
        self.failures += 1
        self.error = error

    def worked(self) -> None:
        if self.failures:
            self.logger.info(self.working, self.failures)
        self.failures, self.error = 0, ""


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
    held : callable, optional
        ``held() -> {key}``: asked on assignment, after ``positions``: assigned partitions whose state is
        still being restored (scale-out with labels). They stay paused, and their records are never
        returned as owned, until :meth:`resume_held` seeks them to their restored positions; meanwhile
        poll() goes on for the others and keeps the membership.
    """

    def __init__(self, cfg: KafkaConfig, positions, on_revoke=None, on_release=None, held=None):
        self.cfg = cfg
        self.positions = positions
        self.on_revoke = on_revoke
        self.on_release = on_release
        self.held = held
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.rebalances = 0
        self._revoked: set[TopicPartition] = set()  # held before the rebalance in progress
        self._rewind: dict[TopicPartition, int] = {}  # records polled but dropped as no longer owned
        self._held: frozenset[TopicPartition] = frozenset()  # assigned, paused until their state is restored
        self._held_rewind: dict[TopicPartition, int] = {}  # records of a held partition polled but dropped
        # on_assigned (IO thread) asks held() and pauses what it names; resume_held (consuming thread) waits for
        # that: a restore installed in between would otherwise find nothing held and leave it paused for good
        self._held_lock = threading.Lock()
        self._paused = False  # every partition paused (the daemon's backpressure)
        self._consumer: KafkaConsumer | None = None
        self._lag_client: KafkaConsumer | None = None
        self.topic_missing = False  # the last probe found no partition of the topic (see probe)
        self._lag_lock = threading.Lock()
        self.poll_retries = RetryLog(log, "poll failed, retrying while the broker is unreachable: %s",
                                     "poll works again after %d failed polls")  # with a retriable error

    def start(self, bootstrap_timeout_ms: int = 30_000) -> "KafkaSource":
        """Create the consumer and subscribe; raises kafka-python's error when the broker cannot be
        reached within ``bootstrap_timeout_ms``, ConfigError when the client refuses the settings."""
        cfg = self.cfg
        options = consumer_options(cfg)
        if cfg.security_protocol != "PLAINTEXT":
            check_brokers(cfg, options)  # a refused certificate or password: one line, not 30 s of retries
        try:
            self._consumer = _Consumer(**options, bootstrap_timeout_ms=bootstrap_timeout_ms)
        except KafkaConfigurationError as exc:
            raise ConfigError("kafka", f"the Kafka client refuses the settings: {exc}") from None
        topics = [cfg.topic] + ([cfg.labels_topic] if cfg.labels_topic else [])
        self._consumer.subscribe(topics, listener=_Listener(self))
        return self

    def owns(self, batch: "PartitionBatch") -> bool:
        """Whether this member still holds a polled batch's partition; if not, the batch must be
        dropped (the partition's next owner reads it) and is re-read here if the partition comes back.
        A held partition's batch is dropped too and read again when it is resumed."""
        tp = TopicPartition(batch.topic, batch.partition)
        first = int(batch.offsets[0])
        if tp in self._held:
            self._held_rewind[tp] = min(first, self._held_rewind.get(tp, first))
            return False
        if tp in self.assigned:
            return True
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
        for tp in assigned:  # (scale-out: records each partition new to the replica as restoring)
            saved.get(partition_key(tp))
        with self._held_lock:
            held = self.held() if self.held is not None else set()
            self._held = frozenset(tp for tp in assigned if partition_key(tp) in held)
            self._held_rewind = {}
            if self._held:  # before any fetch of them: their records wait for the restored state
                self._consumer.pause(*self._held)
            # Sought after held() is asked: a restore installed (on the consuming thread) after its position was
            # read and before held() is not held, so its restored position must be read again, or it would start
            # at the committed offsets. Installed, it is staged before it leaves the restoring set.
            for tp in assigned:
                offset = saved.get(partition_key(tp), self._rewind.get(tp))
                if offset is not None:
                    self._consumer.seek(tp, offset)
            self._rewind = {}
            # kafka-python keeps a partition's paused flag when it is assigned again: one held while restoring
            # and revoked before resume_held (restored in between) would stay paused, its records never read
            free = [tp for tp in assigned if tp not in self._held]
            if free and not self._paused:
                self._consumer.resume(*free)
        self.assigned = frozenset(assigned)
        self.rebalances += 1
        log.info("assigned partitions %s%s", sorted(partition_key(tp) for tp in assigned),
                 f", paused while restoring {sorted(partition_key(tp) for tp in self._held)}" if self._held else "")

    def resume_held(self, positions: dict[str, int | None]) -> bool:
        """Seek the held partitions named in ``positions`` (key -> next offset; None: where the consumer
        is, or the first record dropped while held) and resume them (unless everything is paused).
        Returns False when one of them could not be sought yet (try again after the next poll)."""
        with self._held_lock:
            return self._resume_held(positions)

    def _resume_held(self, positions: dict[str, int | None]) -> bool:
        for tp in [tp for tp in self._held if partition_key(tp) in positions]:
            offset = positions[partition_key(tp)]
            if offset is None:
                offset = self._held_rewind.get(tp)
            try:
                if offset is not None:
                    self._consumer.seek(tp, offset)
                if not self._paused:
                    self._consumer.resume(tp)
            except (KeyError, AssertionError, KafkaError) as exc:  # revoked meanwhile: the next owner restores it
                log.debug("resuming %s: %s", partition_key(tp), exc)
            self._held = self._held - {tp}
            self._held_rewind.pop(tp, None)
        return True

    async def on_revoked(self, revoked) -> None:
        self.assigned = frozenset()
        self._held = frozenset()
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
        self._held = frozenset()
        # Released only if the next assignment gives them to someone else: a lone member that lost its
        # session (a broker restart, a long pause) gets them back and resumes at its own checkpoint.
        self._revoked |= set(lost)
        log.warning("partitions lost with the group membership (not committed): %s",
                    sorted(partition_key(tp) for tp in lost))

    def poll(self, timeout_ms: int = 500) -> list[PartitionBatch]:
        """The records fetched since the last call, by partition; none while the broker cannot be reached."""
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.max_poll_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            # kafka-python 3 can raise a connection error out of poll while the broker is down (a metadata
            # refresh during offset validation). The outage is reported by the broker probe (/readyz,
            # driftmon_broker_up); the consumer reconnects by itself, so this poll is an idle one.
            self.poll_retries.failed(exc)
            time.sleep(min(timeout_ms, 500) / 1000)  # no busy loop while every call fails at once
            return []
        self.poll_retries.worked()
        out = []
        for tp in sorted(records, key=lambda t: (t.topic, t.partition)):
            if records[tp]:
                out.append(PartitionBatch(partition_key(tp), tp.topic, tp.partition, records[tp]))
        return out

    def pause(self, paused: bool) -> None:
        """Stop (or resume) fetching from every assigned partition; poll() still keeps the membership.
        Held partitions stay paused (see :meth:`resume_held`)."""
        self._paused = paused
        try:
            if paused:
                self._consumer.pause(*self._consumer.assignment())  # again each time: covers new assignments
            else:
                waiting = self._consumer.paused() - self._held
                if waiting:
                    self._consumer.resume(*waiting)
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

    def group_metadata(self):
        """What a transactional producer's ``send_offsets`` needs to commit this group's offsets: the
        consumer's current group metadata (group id, member id, generation), so the broker refuses the
        offsets of a member that is no longer in the group's current generation (KIP-447). With the bare
        group id, a woken zombie's offset commit that reached the group coordinator after its transaction
        was aborted stayed pending there and was applied by the partition's new owner's next commit (same
        producer id): the group's offsets went back to the zombie's."""
        if self._consumer is None:
            raise ProduceError("the source consumer is closed: no group metadata for the transaction")
        return self._consumer.group_metadata()

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
            known = set() if assigned else self._lag_client.partitions_for_topic(cfg.topic)
            # the broker answered the metadata request without the topic: not an outage (no end offsets to ask)
            self.topic_missing = not assigned and not known
            if self.topic_missing:
                return {}, False
            partitions = assigned or [TopicPartition(cfg.topic, p) for p in sorted(known)]
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



def _kafka_python_error(exc: BaseException) -> BaseException:
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    if isinstance(exc, MessageSizeTooLargeError) or "TooLarge" in type(exc).__name__:
        return RecordTooLargeError(str(exc))
    if isinstance(exc, KafkaTimeoutError):
        return ProduceTimeoutError(str(exc))
    return exc


class _KafkaPythonProducer:
    def __init__(self, cfg: KafkaConfig, max_request_bytes: int | None = None, max_block_s: float | None = None,
                 compression: str | None = None):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        options = {"acks": "all", "linger_ms": 5, **client_options(cfg)}
        if compression is not None:
            options["compression_type"] = compression
        if max_request_bytes is not None:
            options["max_request_size"] = max_request_bytes
        if max_block_s is not None:
            options["max_block_ms"] = int(max_block_s * 1000)  # metadata of a missing topic, a full buffer
        try:
            self._producer = KafkaProducer(**options)
        except KafkaError as exc:  # no broker reachable: the caller retries
            raise ProduceError(str(exc)) from None

    def send_async(self, topic: str, value: bytes, headers, on_done, key: bytes | None = None) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers or [])
        except Exception as exc:  # noqa: BLE001 - whatever the client raises is the record's outcome
            on_done(_kafka_python_error(exc))
            return
        future.add_callback(lambda _meta: on_done(None))
        future.add_errback(lambda exc: on_done(_kafka_python_error(exc)))

    def poll(self, timeout_s: float = 0.0) -> None:
        pass  # kafka-python delivers results on its own IO thread

    def send(self, topic: str, value: bytes, headers=None, key: bytes | None = None, wait_s: float | None = None):
        from kafka.errors import KafkaError

        try:
            future = self._producer.send(topic, value=value, key=key, headers=headers or [])
            if wait_s is not None:
                future.get(timeout=wait_s)
        except KafkaError as exc:
            raise ProduceError(str(exc)) from None

    def flush(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.close(timeout=timeout_s)


# ---- confluent-kafka (librdkafka) -------------------------------------------------------------------

def librdkafka_options(cfg: KafkaConfig) -> dict:
    """Connection and security settings in librdkafka's names (the same config keys as kafka-python's)."""
    servers = cfg.bootstrap_servers
    options = {
        "bootstrap.servers": servers if isinstance(servers, str) else ",".join(servers),
        "client.id": cfg.client_id,
        "security.protocol": cfg.security_protocol.lower(),
        "reconnect.backoff.max.ms": 1000,
    }
    if cfg.sasl_mechanism:
        options["sasl.mechanism"] = cfg.sasl_mechanism
        if cfg.sasl_plain_username:
            options["sasl.username"] = cfg.sasl_plain_username
        password = kafka_secrets(cfg).get("sasl_plain_password")
        if password:
            options["sasl.password"] = password
    if cfg.security_protocol.endswith("SSL"):
        if cfg.ssl_cafile:
            options["ssl.ca.location"] = cfg.ssl_cafile
        if cfg.ssl_certfile:
            options["ssl.certificate.location"] = cfg.ssl_certfile
        if cfg.ssl_keyfile:
            options["ssl.key.location"] = cfg.ssl_keyfile
        key_password = ssl_key_password(cfg)
        if key_password:
            options["ssl.key.password"] = key_password
        options["ssl.endpoint.identification.algorithm"] = "https" if cfg.ssl_check_hostname else "none"
    return options


def _check_security(cfg: KafkaConfig) -> None:
    """The same one-shot TLS/SASL check as the kafka-python source (a refusal is one line, exit 2)."""
    if cfg.security_protocol == "PLAINTEXT":
        return
    from monitor.kafka_security import check_brokers

    check_brokers(cfg, client_options(cfg))


def _confluent_error(err) -> BaseException:
    from confluent_kafka import KafkaError

    if err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE):
        return RecordTooLargeError(err.str())
    if err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT):
        return ProduceTimeoutError(err.str())
    return ProduceError(err.str())


class _ConfluentProducer:
    def __init__(self, cfg: KafkaConfig, max_request_bytes: int | None = None, max_block_s: float | None = None,
                 compression: str | None = None):
        from confluent_kafka import Producer

        options = {**librdkafka_options(cfg), "acks": "all", "linger.ms": 5}
        if compression is not None:
            options["compression.type"] = compression
        if max_request_bytes is not None:
            options["message.max.bytes"] = max_request_bytes
        self.max_block_s = 60.0 if max_block_s is None else max_block_s
        if max_block_s is not None:  # kafka-python's max_block_ms bounds the wait for a missing topic's metadata;
            options["message.timeout.ms"] = max(1000, int(max_block_s * 1000))  # here: the whole delivery
        self._producer = Producer(options)

    def send_async(self, topic: str, value: bytes, headers, on_done, key: bytes | None = None) -> None:
        from confluent_kafka import KafkaException

        def report(err, _msg):
            on_done(None if err is None else _confluent_error(err))

        deadline = time.monotonic() + self.max_block_s
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers or [], on_delivery=report)
                break
            except BufferError:  # the local queue is full: serve deliveries, then try again
                if time.monotonic() >= deadline:
                    on_done(ProduceTimeoutError(f"no room in the producer's queue within {self.max_block_s:g} s"))
                    return
                self._producer.poll(0.1)
            except KafkaException as exc:
                on_done(_confluent_error(exc.args[0]))
                return
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def send(self, topic: str, value: bytes, headers=None, key: bytes | None = None, wait_s: float | None = None):
        failed = []

        def report(err, _msg):
            if err is not None:
                failed.append(err)

        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers or [], on_delivery=report)
                break
            except BufferError:  # the local queue is full: serve deliveries, then try again
                self._producer.poll(0.1)
        self._producer.poll(0)
        if wait_s is not None:
            if self._producer.flush(wait_s) > 0:
                raise ProduceError(f"not delivered within {wait_s:g} s")
            if failed:
                raise ProduceError(str(failed[0]))

    def flush(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)


class _Record:
    __slots__ = ("topic", "partition")

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition

    def __hash__(self):
        return hash((self.topic, self.partition))

    def __eq__(self, other):
        return (self.topic, self.partition) == (other.topic, other.partition)

    def __lt__(self, other):
        return (self.topic, self.partition) < (other.topic, other.partition)


def _key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class ConfluentBatch:
    """The records one poll returned for one partition, as columns (as :class:`PartitionBatch`)."""

    __slots__ = ("key", "topic", "partition", "values", "offsets", "_messages")

    def __init__(self, topic: str, partition: int, messages: list):
        from confluent_kafka import Message

        self.key = _key(topic, partition)
        self.topic = topic
        self.partition = partition
        self._messages = messages
        self.values = list(map(Message.value, messages))  # C calls only: no Python frame per message
        first, last = messages[0].offset(), messages[-1].offset()
        if last - first + 1 == len(messages):
            self.offsets = np.arange(first, last + 1, dtype=np.int64)
        else:
            self.offsets = np.fromiter(map(Message.offset, messages), dtype=np.int64, count=len(messages))

    def times(self) -> np.ndarray:
        msgs = self._messages
        return np.fromiter((m.timestamp()[1] for m in msgs), dtype=np.float64, count=len(msgs)) / 1000.0


class ConfluentSource:
    """The consumer-group source on confluent-kafka: the contract of :class:`monitor.kafka_client.KafkaSource`.

    librdkafka runs rebalance callbacks inside ``consume()``, on the consuming thread, so the
    hand-over commit is a plain synchronous commit there (kafka-python calls them on its IO thread).
    """

    def __init__(self, cfg: KafkaConfig, positions, on_revoke=None, on_release=None, held=None):
        self.cfg = cfg
        self.positions = positions
        self.on_revoke = on_revoke
        self.on_release = on_release
        self.held = held
        self.assigned: frozenset = frozenset()
        self.rebalances = 0
        self._revoked: set = set()
        self._rewind: dict = {}
        self._held: frozenset = frozenset()  # assigned, paused until their state is restored (KafkaSource)
        self._held_rewind: dict = {}
        self._consumer = None
        self._probe_client = None
        self._probe_lock = threading.Lock()
        self.topic_missing = False  # the last probe found no partition of the topic (see probe)
        self._paused = False

    def _consumer_options(self) -> dict:
        cfg = self.cfg
        return {
            **librdkafka_options(cfg),
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": cfg.auto_offset_reset,
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": max(100, cfg.session_timeout_ms // 3),
            "max.poll.interval.ms": cfg.max_poll_interval_ms,
            "fetch.max.bytes": cfg.fetch_max_bytes,
            "max.partition.fetch.bytes": cfg.max_partition_fetch_bytes,
            "receive.message.max.bytes": max(cfg.fetch_max_bytes + 1_000_000, 100_000_000),
            "partition.assignment.strategy": "range",
            # Once its local queue holds queued.min.messages (100,000), librdkafka stops fetching for
            # fetch.queue.backoff.ms (default 1000): a consumer faster than that drained the queue and then
            # waited out the second (the bare consume rate was 170,000 msg/s, 700,000 with 10 ms).
            "fetch.queue.backoff.ms": 10,
            "logger": LIBRDKAFKA_LOG,
        }

    def start(self, bootstrap_timeout_ms: int = 30_000) -> "ConfluentSource":
        """Create the consumer and subscribe; raises when no broker answers within ``bootstrap_timeout_ms``."""
        from confluent_kafka import Consumer, KafkaException

        _check_security(self.cfg)
        try:
            consumer = Consumer(self._consumer_options())
        except KafkaException as exc:
            raise ConfigError("kafka", f"confluent-kafka refused the settings: {exc}") from None
        try:  # librdkafka connects lazily: ask for metadata, so an unreachable broker fails here as kafka-python does
            consumer.list_topics(self.cfg.topic, timeout=bootstrap_timeout_ms / 1000)
        except KafkaException as exc:
            consumer.close()
            raise ConnectionError(f"no broker answered within {bootstrap_timeout_ms} ms: {exc}") from None
        self._consumer = consumer
        topics = [self.cfg.topic] + ([self.cfg.labels_topic] if self.cfg.labels_topic else [])
        consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        return self

    def owns(self, batch) -> bool:
        tp = _Record(batch.topic, batch.partition)
        first = int(batch.offsets[0])
        if tp in self._held:
            self._held_rewind[tp] = min(first, self._held_rewind.get(tp, first))
            return False
        if tp in self.assigned:
            return True
        self._rewind[tp] = min(first, self._rewind.get(tp, first))
        return False

    def _on_assign(self, consumer, partitions) -> None:
        assigned = {_Record(p.topic, p.partition) for p in partitions}
        released = self._revoked - assigned
        self._revoked = set()
        if released and self.on_release is not None:
            self.on_release([_key(tp.topic, tp.partition) for tp in released])
        saved = self.positions()
        for p in partitions:
            tp = _Record(p.topic, p.partition)
            offset = saved.get(_key(p.topic, p.partition), self._rewind.get(tp))
            if offset is not None:
                p.offset = offset
        held = self.held() if self.held is not None else set()
        self._held = frozenset(tp for tp in assigned if _key(tp.topic, tp.partition) in held)
        self._held_rewind = {}
        consumer.assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        else:
            # librdkafka keeps a partition's pause across a rebalance: one held while restoring and revoked
            # before resume_held (restored in between) would stay paused when assigned again
            free = [p for p in partitions if _Record(p.topic, p.partition) not in self._held]
            if free:
                consumer.resume(free)
            if self._held:  # before any fetch of them: their records wait for the restored state
                consumer.pause([p for p in partitions if _Record(p.topic, p.partition) in self._held])
        self._rewind = {}
        self.assigned = frozenset(assigned)
        self.rebalances += 1
        log.info("assigned partitions %s%s", sorted(_key(tp.topic, tp.partition) for tp in assigned),
                 f", paused while restoring {sorted(_key(tp.topic, tp.partition) for tp in self._held)}"
                 if self._held else "")

    def resume_held(self, positions: dict[str, int | None]) -> bool:
        """As :meth:`KafkaSource.resume_held`. librdkafka refuses a seek of a partition whose fetcher has not
        started yet ("erroneous state"): then it stays held and False is returned (try after the next poll)."""
        from confluent_kafka import KafkaException, TopicPartition

        done = True
        for tp in sorted(tp for tp in self._held if _key(tp.topic, tp.partition) in positions):
            offset = positions[_key(tp.topic, tp.partition)]
            if offset is None:
                offset = self._held_rewind.get(tp)
            try:
                if offset is not None:
                    self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
                if not self._paused:
                    self._consumer.resume([TopicPartition(tp.topic, tp.partition)])
            except KafkaException as exc:
                if tp not in self.assigned:
                    continue  # revoked meanwhile (the rebalance cleared it): its next owner restores it
                log.debug("resuming %s: %s; again after the next poll", _key(tp.topic, tp.partition), exc)
                done = False
                continue
            self._held = self._held - {tp}
            self._held_rewind.pop(tp, None)
        return done

    def _on_revoke(self, consumer, partitions) -> None:
        from confluent_kafka import TopicPartition

        revoked = {_Record(p.topic, p.partition) for p in partitions}
        self.assigned = frozenset()
        self._held = frozenset()
        self._revoked |= revoked
        log.info("partitions revoked: %s", sorted(_key(tp.topic, tp.partition) for tp in revoked))
        if revoked and self.on_revoke is not None:
            try:
                durable = self.on_revoke([_key(tp.topic, tp.partition) for tp in revoked])
                offsets = [TopicPartition(tp.topic, tp.partition, durable[_key(tp.topic, tp.partition)])
                           for tp in sorted(revoked) if _key(tp.topic, tp.partition) in durable]
                if offsets:
                    consumer.commit(offsets=offsets, asynchronous=False)
                    log.info("committed before the hand-over: %s",
                             {_key(o.topic, o.partition): o.offset for o in offsets})
            except Exception as exc:  # the rebalance goes on; the next owner re-reads from the last commit
                log.warning("checkpoint/commit before the rebalance failed: %s", exc)
        consumer.unassign()

    def _on_lost(self, consumer, partitions) -> None:
        lost = {_Record(p.topic, p.partition) for p in partitions}
        self.assigned = frozenset()
        self._held = frozenset()
        self._revoked |= lost
        log.warning("partitions lost with the group membership (not committed): %s",
                    sorted(_key(tp.topic, tp.partition) for tp in lost))
        consumer.unassign()

    def poll(self, timeout_ms: int = 500) -> list:
        from confluent_kafka import Message

        messages = self._consumer.consume(num_messages=self.cfg.max_poll_records, timeout=timeout_ms / 1000)
        if not messages:
            return []
        # The usual poll: no errors, one partition. Checked with C calls over the list (no Python frame
        # per message); anything else takes the per-message path.
        # (by identity: confluent's KafkaError raises when compared with None, so list.count(None) would)
        if all(map(partial(operator.is_, None), map(Message.error, messages))):
            first = messages[0]
            topic, partition = first.topic(), first.partition()
            if (list(map(Message.partition, messages)).count(partition) == len(messages)
                    and list(map(Message.topic, messages)).count(topic) == len(messages)):
                return [ConfluentBatch(topic, partition, messages)]
        by_partition: dict = {}
        for m in messages:
            if m.error() is not None:
                if not m.error().code() == -191:  # _PARTITION_EOF is not an error
                    log.warning("kafka: %s", m.error())
                continue
            by_partition.setdefault((m.topic(), m.partition()), []).append(m)
        return [ConfluentBatch(t, p, msgs) for (t, p), msgs in sorted(by_partition.items())]

    def pause(self, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        partitions = self._consumer.assignment()
        if not paused:  # held partitions stay paused (see resume_held)
            partitions = [p for p in partitions if _Record(p.topic, p.partition) not in self._held]
        if partitions:
            (self._consumer.pause if paused else self._consumer.resume)(partitions)

    def commit(self, positions: dict[str, int], timeout_ms: int | None = None) -> None:
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(tp.topic, tp.partition, positions[_key(tp.topic, tp.partition)])
                   for tp in sorted(self.assigned) if _key(tp.topic, tp.partition) in positions]
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def group_metadata(self):
        """What a transactional producer's ``send_offsets`` needs to commit this group's offsets: librdkafka
        takes the consumer's current group metadata (group id, member id, generation), so the broker refuses
        the offsets of a member that is no longer in the group's current generation (KIP-447)."""
        if self._consumer is None:
            raise ProduceError("the source consumer is closed: no group metadata for the transaction")
        return self._consumer.consumer_group_metadata()

    def _ends(self, partitions: list, timeout_s: float) -> dict:
        from confluent_kafka import TopicPartition as CfTopicPartition

        out = {}
        for tp in partitions:
            _low, high = self._probe_client.get_watermark_offsets(CfTopicPartition(tp.topic, tp.partition),
                                                                  timeout=timeout_s, cached=False)
            out[tp] = high
        return out

    def _probe(self):
        if self._probe_client is None:
            from confluent_kafka import Consumer

            self._probe_client = Consumer({**librdkafka_options(self.cfg), "group.id": self.cfg.group_id + "-probe",
                                           "enable.auto.commit": False, "logger": LIBRDKAFKA_LOG})
        return self._probe_client

    def probe(self, positions: dict[str, int], timeout_ms: int) -> tuple[dict[int, int], bool]:
        """Lag of the prediction topic's assigned partitions and whether all were read to their end,
        on a client of its own (see :meth:`monitor.kafka_client.KafkaSource.probe`)."""
        from confluent_kafka import KafkaException

        cfg, timeout_s = self.cfg, timeout_ms / 1000
        with self._probe_lock:
            client = self._probe()
            assigned = list(self.assigned)
            try:
                self.topic_missing = False
                if assigned:
                    ends = self._ends(assigned, timeout_s)
                else:
                    meta = client.list_topics(cfg.topic, timeout=timeout_s)
                    topic = meta.topics.get(cfg.topic)
                    parts = sorted(topic.partitions) if topic is not None else []
                    self.topic_missing = not parts  # the broker answered without it: not an outage
                    ends = self._ends([_Record(cfg.topic, p) for p in parts], timeout_s) if parts else {}
            except KafkaException as exc:
                raise ConnectionError(str(exc)) from None
            finally:
                client.poll(0)  # serves its log lines (it reads no records)
        lag, caught_up = {}, bool(assigned)
        for tp in assigned:
            end, position = ends.get(tp), positions.get(_key(tp.topic, tp.partition))
            if end is None or end < 0 or position is None:
                continue
            if position < end:
                caught_up = False
            if tp.topic == cfg.topic:
                lag[tp.partition] = max(0, end - position)
        return lag, caught_up

    def close(self, timeout_s: float = 5.0) -> None:
        if self._probe_lock.acquire(timeout=timeout_s):
            try:
                if self._probe_client is not None:
                    self._probe_client.close()
                    self._probe_client = None
            finally:
                self._probe_lock.release()
        if self._consumer is not None:
            # The close revokes the partitions: no checkpoint and commit in _on_revoke, the caller's shutdown
            # did them within its budget, and librdkafka's synchronous commit has no timeout (6 s, the
            # session timeout, with the coordinator away)
            self.on_revoke = None
            self._consumer.close()
            self._consumer = None


# ---- scale-out: a plain group member, a transactional producer, a partition read to its end ----------

def make_group_consumer(cfg: KafkaConfig, group_id: str, topics: list[str], on_assign, on_revoke,
                        max_fetch_bytes: int = 64 * 1024 * 1024):
    """A ``read_committed`` group member of ``group_id`` on ``topics``, auto-commit off, starting from the
    earliest offset: ``poll(timeout_ms, max_records) -> [Record]``, ``seek(topic, partition, offset)``
    (None: the beginning), ``partitions(topic)`` (how many the topic has) and ``close(timeout_s)``.

    ``on_assign(pairs)`` and ``on_revoke(pairs)`` (lists of (topic, partition)) must not block: kafka-python
    calls them on its IO thread, confluent-kafka inside ``poll``.
    """
    if cfg.client == "confluent-kafka":
        return _ConfluentGroupConsumer(cfg, group_id, topics, on_assign, on_revoke, max_fetch_bytes)
    return _KafkaPythonGroupConsumer(cfg, group_id, topics, on_assign, on_revoke, max_fetch_bytes)


def make_transactional_producer(cfg: KafkaConfig, transactional_id: str, max_request_bytes: int | None = None,
                                compression: str | None = None):
    """A producer (acks=all) whose records commit together: ``init(timeout_s)`` (fences every earlier producer
    of ``transactional_id`` and aborts its open transaction), ``begin()``, ``send(topic, value, key,
    partition)``, ``send_offsets(offsets, group)`` (the source group's offsets commit with the transaction;
    ``group`` is the source consumer's ``group_metadata()``), ``commit(timeout_s)``, ``abort(timeout_s)``,
    ``close(timeout_s)``. A fenced producer raises :class:`FencedError` (so do the offsets of a member no longer
    in the group's generation). ``commit`` and ``abort`` raise :class:`ProduceTimeoutError` when they did not
    finish in time: the outcome is unknown and the call goes on in the background, so the same call again on
    the same producer (same epoch, nothing else in between) finishes it, as the Java client and librdkafka
    allow; :class:`AbortableError` when the transaction failed and must be aborted; any other
    :class:`ProduceError` leaves the producer unusable (start over with a new one).
    """
    if cfg.client == "confluent-kafka":
        return _ConfluentTransactions(cfg, transactional_id, max_request_bytes, compression)
    return _KafkaPythonTransactions(cfg, transactional_id, max_request_bytes, compression)


def fence(cfg: KafkaConfig, transactional_id: str, max_request_bytes: int | None = None,
          compression: str | None = None, timeout_s: float = 30.0):
    """A transactional producer of ``transactional_id``, initialized: every earlier producer of that id is
    fenced and its open transaction aborted (see :func:`make_transactional_producer`)."""
    producer = make_transactional_producer(cfg, transactional_id, max_request_bytes, compression)
    try:
        producer.init(timeout_s=timeout_s)
    except BaseException:
        producer.close(timeout_s=1.0)
        raise
    return producer


def read_to_end(cfg: KafkaConfig, topic: str, partition: int = 0, timeout_s: float = 30.0):
    """Yield the committed :class:`Record` objects (``read_committed``) of one partition from its beginning to the
    end it had when called, on a client of its own, outside any group. Raises ConnectionError when the
    broker does not answer within ``timeout_s``."""
    if cfg.client == "confluent-kafka":
        return _confluent_read_to_end(cfg, topic, partition, timeout_s)
    return _kafka_python_read_to_end(cfg, topic, partition, timeout_s)


class _KafkaPythonGroupConsumer:
    def __init__(self, cfg: KafkaConfig, group_id: str, topics: list[str], on_assign, on_revoke,
                 max_fetch_bytes: int):
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned):
                on_assign([(tp.topic, tp.partition) for tp in assigned])

        self._consumer = KafkaConsumer(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                                       isolation_level="read_committed", session_timeout_ms=cfg.session_timeout_ms,
                                       heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
                                       max_partition_fetch_bytes=max_fetch_bytes // 4, fetch_max_bytes=max_fetch_bytes,
                                       metrics_enabled=False, **client_options(cfg))
        self._consumer.subscribe(topics, listener=Listener())

    def partitions(self, topic: str) -> int:
        return len(self._consumer.partitions_for_topic(topic) or ())

    def poll(self, timeout_ms: int = 500, max_records: int = 500) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [Record(r.topic, r.partition, r.offset, r.key, r.value) for recs in batches.values() for r in recs]

    def seek(self, topic: str, partition: int, offset: int | None) -> None:
        tp = TopicPartition(topic, partition)
        if offset is None:
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, offset)

    def close(self, timeout_s: float = 1.0) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))


def _kafka_python_refused(cfg: KafkaConfig, transactional_id: str, group, *found) -> AuthorizationError | None:
    """The refusal among ``found`` (errors, or KafkaErrors whose arguments hold one), if any."""
    from kafka import errors

    def first(e):
        if isinstance(e, tuple):
            return next((x for x in map(first, e) if x is not None), None)
        if isinstance(e, (errors.TransactionalIdAuthorizationFailedError, errors.GroupAuthorizationFailedError,
                          errors.TopicAuthorizationFailedError)):
            return e
        return first(e.args) if isinstance(e, BaseException) else None

    e = first(found)
    if isinstance(e, errors.TransactionalIdAuthorizationFailedError):
        return AuthorizationError(refusal(cfg, "transactional id", transactional_id))
    if isinstance(e, errors.GroupAuthorizationFailedError):
        return AuthorizationError(refusal(cfg, "group", getattr(group, "group_id", group) or cfg.group_id))
    if isinstance(e, errors.TopicAuthorizationFailedError):
        topics = sorted(getattr(e, "unauthorized_topics", None) or ()) or ["(one the transaction writes)"]
        return AuthorizationError(refusal(cfg, "topic", ", ".join(topics)))
    return None


def _kafka_python_txn_error(exc: BaseException, cause: BaseException | None = None) -> ProduceError:
    from kafka import errors

    # the last four: the offsets of a member no longer in the group's generation (KIP-447; kafka-python
    # reports those as CommitFailedError): its partitions may have a new owner, so it must rejoin, not retry
    # under a new epoch (that would fence the new owner)
    fenced = tuple(getattr(errors, name) for name in ("ProducerFencedError", "InvalidProducerEpochError",
                                                      "CommitFailedError", "IllegalGenerationError",
                                                      "UnknownMemberIdError", "FencedInstanceIdError")
                   if hasattr(errors, name))

    def is_fenced(e) -> bool:
        # once fenced, kafka-python's later calls raise KafkaError(("Cannot perform send ...",
        # ProducerFencedError())): a retry under a new epoch would fence the partition's new owner
        if isinstance(e, tuple):
            return any(is_fenced(a) for a in e)
        return isinstance(e, fenced) or (isinstance(e, BaseException) and any(is_fenced(a) for a in e.args))

    if is_fenced(exc) or is_fenced(cause):  # cause: the transaction manager's last error (a string in exc)
        return FencedError(str(exc))
    if isinstance(exc, errors.KafkaTimeoutError):
        return ProduceTimeoutError(str(exc))
    return ProduceError(f"{type(exc).__name__}: {exc}")


def _refuse_own_init(manager) -> None:
    """Make kafka-python's transaction manager treat a refused epoch bump as fenced, never initialize the id again.

    kafka-python (3.0) bumps the epoch by itself after a batch failed with InvalidProducerEpoch,
    OutOfOrderSequenceNumber or UnknownProducerId (KIP-360: an InitProducerId with its producer id and epoch,
    which the coordinator grants only to the id's current epoch). When the coordinator answers
    INVALID_PRODUCER_EPOCH it sends a second InitProducerId without them: a new init, which fences the
    partition's new owner. Kafka answers INVALID_PRODUCER_EPOCH for PRODUCER_FENCED to an InitProducerId below
    version 4 (brokers 2.5 and 2.6 have no v4). The Java client treats both answers as fenced; so does this.
    """
    if manager is None or not hasattr(manager, "_restart_epoch_bump_without_producer_id"):
        return  # another kafka-python: no fallback to replace (tests/test_join_changelog.py pins this one's)
    from kafka.errors import ProducerFencedError

    def fenced(_transaction_timeout_ms, result) -> None:  # on the sender's thread, with the manager's lock held
        log.info("transactional id %s: the coordinator refused the epoch bump (INVALID_PRODUCER_EPOCH): fenced",
                 manager.transactional_id)
        manager.transition_to_fatal_error(ProducerFencedError())
        result.done(error=ProducerFencedError())

    manager._restart_epoch_bump_without_producer_id = fenced


class _KafkaPythonTransactions:
    def __init__(self, cfg: KafkaConfig, transactional_id: str, max_request_bytes: int | None,
                 compression: str | None):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.cfg = cfg
        self.transactional_id = transactional_id
        self._group = None  # of the last send_offsets (named in a refusal)
        self._ending = None  # ("commit" or "abort", its TransactionalRequestResult) of a call that timed out
        options = {"transactional_id": transactional_id, "acks": "all", **client_options(cfg)}
        if compression is not None:
            options["compression_type"] = compression
        if max_request_bytes is not None:
            options["max_request_size"] = max_request_bytes
        try:
            self._producer = KafkaProducer(**options)
        except KafkaError as exc:
            raise _kafka_python_txn_error(exc) from None
        _refuse_own_init(getattr(self._producer, "_transaction_manager", None))

    def _call(self, method, *args, **kwargs):
        from kafka.errors import KafkaError

        try:
            return method(*args, **kwargs)
        except KafkaError as exc:
            # "Cannot execute transactional method because we are in an error state: ..." names its cause
            # only in the text; the transaction manager keeps the error itself
            manager = getattr(self._producer, "_transaction_manager", None)
            cause = getattr(manager, "last_error", None)
            refused = _kafka_python_refused(self.cfg, self.transactional_id, self._group, exc, cause)
            raise (refused or _kafka_python_txn_error(exc, cause)) from None

    def init(self, timeout_s: float = 30.0) -> None:
        # kafka-python's init_transactions() takes no timeout: it waits up to the producer's max_block_ms
        # (60 s), which it reads at each call; the bound here is ``timeout_s``. Nothing else uses this
        # producer meanwhile (it is not initialized yet), and sends keep the producer's own bound.
        config = self._producer.config
        bound, config["max_block_ms"] = config["max_block_ms"], max(1, int(timeout_s * 1000))
        try:
            self._call(self._producer.init_transactions)
        finally:
            config["max_block_ms"] = bound

    def begin(self) -> None:
        self._call(self._producer.begin_transaction)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None) -> None:
        self._call(self._producer.send, topic, value=value, key=key, partition=partition)

    def send_offsets(self, offsets: dict[tuple[str, int], int], group) -> None:
        """Commit the group's offsets ((topic, partition) -> next offset) with this transaction; ``group`` is
        the source consumer's group metadata (:meth:`KafkaSource.group_metadata`)."""
        from kafka.structs import OffsetAndMetadata

        self._group = group
        self._call(self._producer.send_offsets_to_transaction,
                   {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}, group)

    def commit(self, timeout_s: float = 10.0) -> None:
        self._end("commit", timeout_s)

    def abort(self, timeout_s: float = 10.0) -> None:
        self._end("abort", timeout_s)

    def _end(self, what: str, timeout_s: float) -> None:
        # kafka-python's commit_transaction() waits without a bound; an aggregator waiting forever under the
        # daemon's lock would stop the worker too. Its own steps, with a bound. A wait that times out keeps
        # the request's result: the EndTxn request goes on (the sender retries it), and the next call waits
        # on that result again (begin_commit twice is an invalid transition in kafka-python)
        producer = self._producer
        manager = getattr(producer, "_transaction_manager", None)
        if manager is None or not hasattr(manager, "begin_commit"):  # another kafka-python: its own call
            self._call(producer.commit_transaction if what == "commit" else producer.abort_transaction)
            return
        if self._ending is not None and self._ending[0] != what:
            raise ProduceError(f"cannot {what}: the {self._ending[0]} that timed out is not finished")
        from kafka.errors import KafkaError

        if what == "abort" and (manager.is_bumping_epoch() or self._ending == ("abort", None)):
            self._await_bump(manager, timeout_s)
            return
        if self._ending is None:
            if what == "commit" and manager.is_bumping_epoch():
                raise AbortableError("the producer is bumping its epoch after a failed batch, which aborts the "
                                     "transaction")
            try:
                self._ending = (what, manager.begin_commit() if what == "commit" else manager.begin_abort())
            except KafkaError as exc:  # e.g. a batch failed before: the transaction is abortable
                raise self._ended(exc, manager) from None
        result = self._ending[1]
        producer._sender.wakeup()
        try:
            done = result.wait(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:  # finished, and failed
            self._ending = None
            raise self._ended(exc, manager) from None
        if not done:
            raise ProduceTimeoutError(f"the transaction's {what} did not finish within {timeout_s:g} s")
        self._ending = None

    def _await_bump(self, manager, timeout_s: float) -> None:
        """An abort while kafka-python bumps the epoch after a failed batch (KIP-360: its InitProducerId with the
        current epoch makes the coordinator abort the open transaction; an abort meanwhile is an invalid
        transition): the bump is the abort. Done when it is over; fenced if the coordinator refused it."""
        deadline = time.monotonic() + timeout_s
        while manager.is_bumping_epoch():
            if time.monotonic() >= deadline:
                self._ending = ("abort", None)  # the next abort waits for the bump again
                raise ProduceTimeoutError(f"the transaction's abort did not finish within {timeout_s:g} s")
            time.sleep(0.05)
        self._ending = None
        if manager.has_fatal_error():
            raise self._ended(manager.last_error, manager)

    def _ended(self, exc: BaseException, manager) -> ProduceError:
        """The error of a commit or abort that finished and failed: never a timeout (it is over: a batch that
        expired makes the transaction abortable)."""
        cause = manager.last_error
        refused = _kafka_python_refused(self.cfg, self.transactional_id, self._group, exc, cause)
        if refused is not None:
            return refused
        error = _kafka_python_txn_error(exc, cause)
        if isinstance(error, FencedError):
            return error
        if manager.has_abortable_error() or manager.is_bumping_epoch():  # a bump aborts the transaction
            return AbortableError(f"{type(exc).__name__}: {exc}")
        return ProduceError(f"{type(exc).__name__}: {exc}")

    def close(self, timeout_s: float = 1.0) -> None:
        self._producer.close(timeout=timeout_s)


def _kafka_python_read_to_end(cfg: KafkaConfig, topic: str, partition: int, timeout_s: float):
    from kafka.errors import KafkaError

    reader = KafkaConsumer(enable_auto_commit=False, metrics_enabled=False, isolation_level="read_committed",
                           **client_options(cfg))
    try:
        tp = TopicPartition(topic, partition)
        try:
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            end = reader.end_offsets([tp], timeout_ms=int(timeout_s * 1000))[tp]  # the last stable offset
        except KafkaError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while reader.position(tp) < end:
            batches = reader.poll(timeout_ms=1000)
            if batches:
                deadline = time.monotonic() + timeout_s  # the bound is for silence, not for size
            elif time.monotonic() > deadline:
                raise ConnectionError(f"{topic}:{partition} not read to its end within {timeout_s:g} s")
            for recs in batches.values():
                for r in recs:
                    yield Record(r.topic, r.partition, r.offset, r.key, r.value)
    finally:
        reader.close()


class _ConfluentGroupConsumer:
    """librdkafka runs the rebalance callbacks inside ``consume()``, on the polling thread."""

    def __init__(self, cfg: KafkaConfig, group_id: str, topics: list[str], on_assign, on_revoke,
                 max_fetch_bytes: int):
        from confluent_kafka import Consumer

        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self._consumer = Consumer({
            **librdkafka_options(cfg), "group.id": group_id, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": max(100, cfg.session_timeout_ms // 3),
            "fetch.max.bytes": max_fetch_bytes, "max.partition.fetch.bytes": max_fetch_bytes // 4,
            "receive.message.max.bytes": max_fetch_bytes + 1_000_000, "logger": LIBRDKAFKA_LOG,
        })
        self._consumer.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def _assigned(self, consumer, partitions) -> None:
        consumer.assign(partitions)
        self.on_assign([(p.topic, p.partition) for p in partitions])

    def _revoked(self, consumer, partitions) -> None:
        self.on_revoke([(p.topic, p.partition) for p in partitions])
        consumer.unassign()

    def partitions(self, topic: str) -> int:
        from confluent_kafka import KafkaException

        try:
            meta = self._consumer.list_topics(topic, timeout=30)
        except KafkaException as exc:
            raise ConnectionError(str(exc)) from None
        found = meta.topics.get(topic)
        return 0 if found is None or found.error is not None else len(found.partitions)

    def poll(self, timeout_ms: int = 500, max_records: int = 500) -> list[Record]:
        out = []
        for m in self._consumer.consume(num_messages=max_records, timeout=timeout_ms / 1000):
            if m.error() is not None:
                if m.error().code() != -191:  # _PARTITION_EOF is not an error
                    log.warning("kafka: %s", m.error())
                continue
            out.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
        return out

    def seek(self, topic: str, partition: int, offset: int | None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        tp = TopicPartition(topic, partition, OFFSET_BEGINNING if offset is None else offset)
        try:
            self._consumer.seek(tp)
        except KafkaException:  # assigned but not fetching yet (librdkafka's "erroneous state"): start there
            self._consumer.assign([tp])

    def close(self, timeout_s: float = 1.0) -> None:
        self._consumer.close()


def _confluent_refused(cfg: KafkaConfig, transactional_id: str, group, err) -> AuthorizationError | None:
    from confluent_kafka import KafkaError

    code = err.code()
    if code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return AuthorizationError(refusal(cfg, "transactional id", transactional_id))
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        group_id = group.group_id if hasattr(group, "group_id") else cfg.group_id
        return AuthorizationError(refusal(cfg, "group", group_id))
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return AuthorizationError(refusal(cfg, "topic", "(one the transaction writes)"))
    return None


def _confluent_txn_error(err) -> ProduceError:
    from confluent_kafka import KafkaError

    fenced = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
    if err.code() in fenced or (err.fatal() and "fenced" in err.str().lower()):
        return FencedError(err.str())
    if err.code() == KafkaError._FATAL:
        # the calls after a fatal error only say "Local: Fatal error"; a transactional producer's fatal errors
        # are its fencing (a refusal was seen and kept first, see _ConfluentTransactions._error): it can never
        # write again, and retrying under a new epoch would fence the partition's new owner, so the caller
        # must rejoin as when fenced
        return FencedError(f"{err.str()} (the transactional producer was fenced or its id refused)")
    return _confluent_error(err)


def _left_generation(err) -> FencedError | None:
    """The :class:`FencedError` of librdkafka's errors for the offsets of a member that left the generation its
    metadata names (a rebalance it missed, a session that expired), or None for any other error: its
    partitions may have a new owner, so it must rejoin, not take the transactional id again on the next cut
    (that would fence the new owner)."""
    from confluent_kafka import KafkaError

    if err.code() in {KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.FENCED_INSTANCE_ID}:
        return FencedError(f"not in the source group's current generation: {err.str()}")
    return None


class _ConfluentTransactions:
    def __init__(self, cfg: KafkaConfig, transactional_id: str, max_request_bytes: int | None,
                 compression: str | None):
        from confluent_kafka import Producer

        self.cfg = cfg
        self.transactional_id = transactional_id
        self._group = None  # of the last send_offsets (named in a refusal)
        # librdkafka's calls after a fatal error say only "Local: Fatal error": a refusal is kept to name it
        self._refused: AuthorizationError | None = None
        options = {**librdkafka_options(cfg), "transactional.id": transactional_id, "acks": "all"}
        if compression is not None:
            options["compression.type"] = compression
        if max_request_bytes is not None:
            options["message.max.bytes"] = max_request_bytes
        self._producer = Producer(options)

    def _call(self, method, *args, **kwargs):
        from confluent_kafka import KafkaException

        try:
            return method(*args, **kwargs)
        except KafkaException as exc:
            raise self._error(exc.args[0]) from None

    def _error(self, err) -> ProduceError:
        from confluent_kafka import KafkaError

        refused = _confluent_refused(self.cfg, self.transactional_id, self._group, err)
        if refused is not None:
            self._refused = refused
            return refused
        if err.code() == KafkaError._FATAL and self._refused is not None:
            return AuthorizationError(str(self._refused))
        return _confluent_txn_error(err)

    def init(self, timeout_s: float = 30.0) -> None:
        self._call(self._producer.init_transactions, timeout_s)

    def begin(self) -> None:
        self._call(self._producer.begin_transaction)

    def send(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None) -> None:
        extra = {} if partition is None else {"partition": partition}
        try:
            self._call(self._producer.produce, topic, value=value, key=key, **extra)
        except BufferError:
            raise ProduceError("the producer's queue is full") from None
        self._producer.poll(0)

    def send_offsets(self, offsets: dict[tuple[str, int], int], group, timeout_s: float = 10.0) -> None:
        """Commit the group's offsets ((topic, partition) -> next offset) with this transaction; ``group`` is
        the source consumer's group metadata (:meth:`ConfluentSource.group_metadata`), not a group id."""
        from confluent_kafka import KafkaException, TopicPartition as TP

        positions = [TP(t, p, o) for (t, p), o in sorted(offsets.items())]
        self._group = group
        try:
            self._producer.send_offsets_to_transaction(positions, group, timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            raise (_left_generation(err) or self._error(err)) from None

    def commit(self, timeout_s: float = 10.0) -> None:
        self._end(self._producer.commit_transaction, "commit", timeout_s)  # flushes first: a failed record fails it

    def abort(self, timeout_s: float = 10.0) -> None:
        self._end(self._producer.abort_transaction, "abort", timeout_s)

    def _end(self, method, what: str, timeout_s: float) -> None:
        # librdkafka: a commit or abort that times out goes on in the background and is retriable (the same
        # call again resumes it); one that needs an abort says so; a fatal error ends the producer
        from confluent_kafka import KafkaException

        try:
            method(timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if _confluent_refused(self.cfg, self.transactional_id, self._group, err) is not None or err.fatal():
                raise self._error(err) from None
            left = _left_generation(err)
            if left is not None:
                raise left from None
            if err.txn_requires_abort():
                raise AbortableError(err.str()) from None
            if err.retriable():
                raise ProduceTimeoutError(f"the transaction's {what} did not finish within {timeout_s:g} s "
                                          f"({err.str()})") from None
            raise self._error(err) from None

    def close(self, timeout_s: float = 1.0) -> None:
        from confluent_kafka import KafkaException

        try:  # librdkafka has no close: the handle goes with its last reference
            self._producer.flush(0)
        except KafkaException:  # a fenced producer reports its fatal error again: nothing left to close
            pass


def _confluent_read_to_end(cfg: KafkaConfig, topic: str, partition: int, timeout_s: float):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    # No group membership: partitions assigned, nothing committed. partition EOF marks the end (the last
    # stable offset under read_committed: control records and aborted ones never show up as messages).
    # librdkafka requires a group.id and looks its coordinator up even so, which needs Describe on the group:
    # the source group's, which the principal has (a group of its own would need an ACL of its own).
    # fetch.wait.max.ms: the broker answers a fetch at the end at once, not after 500 ms (an empty partition's end)
    reader = Consumer({**librdkafka_options(cfg), "group.id": cfg.group_id, "enable.auto.commit": False,
                       "isolation.level": "read_committed", "enable.partition.eof": True,
                       "receive.message.max.bytes": 100_000_000, "fetch.wait.max.ms": 10})
    try:
        # the partition's leader known before it is assigned: else librdkafka looks its first offset up again
        # only after 500 ms (an empty changelog partition took 1 s to read, most of its restore)
        reader.list_topics(topic, timeout=timeout_s)
        reader.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while True:
            m = reader.poll(1.0)
            if m is None:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"{topic}:{partition} not read to its end within {timeout_s:g} s")
                continue
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return
                if m.error().fatal() or not m.error().retriable():
                    raise ConnectionError(m.error().str())
                continue
            deadline = time.monotonic() + timeout_s  # progress: the bound is for silence, not for size
            yield Record(m.topic(), m.partition(), m.offset(), m.key(), m.value())
    except KafkaException as exc:
        raise ConnectionError(str(exc)) from None
    finally:
        reader.close()
