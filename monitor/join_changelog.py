"""Scale-out with labels: one source partition's state in Kafka (the join changelog and its transactions).

A worker that joins labels (``monitor/cluster.py``, :class:`~monitor.cluster.Worker`) keeps, per source
partition *p* (prediction partition *p* and label partition *p*, co-partitioned), the pending label joins,
the open prediction window and the open performance windows. Every cut (about once per
``kafka.commit_interval``) writes what changed since the last one in **one Kafka transaction**, under the
transactional id ``<changelog topic>.<p>``:

- the window partials closed since (to the partials topic),
- the join store's changes (to partition *p* of the compacted join changelog, keyed by prediction id; a
  tombstone for an entry that was matched, expired or evicted),
- the partition's state record (key :data:`STATE_KEY`: the open windows, counters and the consumed
  positions of both topics),
- and the consumed offsets of both topics (``send_offsets_to_transaction``).

A new owner of *p* initializes the same transactional id (which aborts the previous owner's open
transaction and fences it: its next commit fails), reads changelog partition *p* to its end with
``read_committed``, and resumes from the positions of the last state record: nothing is lost or counted
twice, as in a Kafka Streams task with ``processing.guarantee: exactly_once`` and a RocksDB store. A commit
that times out (its outcome unknown: a broker that did not answer, a process paused inside it) is finished at
the next cut on the same producer and epoch (:meth:`PartitionLog.settle`), never by taking the id again,
which could fence a new owner that took the partition over meanwhile. As in
Kafka Streams, the restore reads on the consuming thread a slice at a time while the partition is paused
(``monitor.cluster._Restore``; its fence runs on the cluster's fence pool), so the member goes on polling and
keeps its place in the group.
The Kafka calls go through :mod:`monitor.kafka_client`, on either client: the group's offsets are committed
with the source consumer's ``group_metadata()`` (kafka-python: the group id; confluent-kafka: the consumer's
group metadata, which librdkafka requires).
"""

from __future__ import annotations

import json
import logging

import msgspec

from monitor.kafka_client import (AbortableError, AuthorizationError, FencedError, ProduceError, ProduceTimeoutError,
                                  fence, read_to_end)

__all__ = ["PartitionLog", "STATE_KEY", "TransactionalWriter", "take_change"]

log = logging.getLogger(__name__)

#: The key of a partition's state record in its changelog partition (no prediction id starts with NUL).
STATE_KEY = b"\x00state"

#: the largest partial or changelog record (a request, a topic's max.message.bytes: a state record holds the
#: open windows)
MAX_RECORD_BYTES = 16 * 1024 * 1024

_encode = msgspec.msgpack.Encoder(enc_hook=lambda o: o.item() if hasattr(o, "item") else str(o)).encode
_decode = msgspec.msgpack.Decoder().decode


def take_change(record, changes: dict, state: dict | None) -> dict | None:
    """Apply one changelog record to ``changes`` (prediction id -> entry, or None for a tombstone: a chunk of the
    log to apply to a store that may hold the id from an earlier chunk); returns the latest state record."""
    if record.key == STATE_KEY:
        return json.loads(record.value)
    changes[record.key.decode()] = None if record.value is None else _decode(record.value)
    return state


class TransactionalWriter:
    """One transactional id's producer (:func:`~monitor.kafka_client.fence`) and its transactions, one at a time.

    :meth:`transact` begins one, sends its records and commits it. A transaction that failed is aborted on the
    same producer (to be written again). A commit or abort that timed out keeps the producer and its open
    transaction (:attr:`in_doubt`) until :meth:`settle` finishes the same call on them (the same epoch: it
    cannot fence an owner that took the id over meanwhile; it is fenced by it). Any other error closes the
    producer (the next :meth:`fence` aborts what it left open). The writer of each :class:`PartitionLog` and
    of the aggregator's state (``monitor.cluster.Cluster.checkpoint``).

    Parameters
    ----------
    kafka : KafkaConfig
    transactional_id : str
    who : str
        What its log lines name ("partition 3", "aggregator state").
    """

    def __init__(self, kafka, transactional_id: str, who: str):
        self.kafka = kafka
        self.transactional_id = transactional_id
        self.who = who
        self.producer = None  # kafka_client.fence: the transactional producer
        self.in_doubt: str | None = None  # "commit" or "abort": timed out on :attr:`producer`, outcome unknown

    def fence(self) -> None:
        """Take the transactional id: aborts the previous owner's open transaction, fences it."""
        self.close()
        self.producer = fence(self.kafka, self.transactional_id, MAX_RECORD_BYTES, "gzip")

    def transact(self, send, timeout_s: float = 10.0) -> bool:
        """One transaction: ``send(producer)`` sends its records. True when it committed, False when it failed and
        was aborted on the same producer (to be written again).

        Raises kafka_client.FencedError when another owner took the id over (or the group's offsets were
        refused: the member left the generation), and the producer is closed. When the commit times out
        (:attr:`in_doubt`) the producer and its open transaction are kept: :meth:`settle` finishes the commit
        before anything else is written. An error of ``send`` that leaves the producer usable is raised after
        the transaction is aborted on it; only an error that leaves the producer unusable closes it."""
        if self.in_doubt is not None:
            raise ProduceError(f"the transaction's {self.in_doubt} that timed out is not settled")
        producer = self.producer
        try:
            producer.begin()
        except BaseException:
            self.close()
            raise
        try:
            send(producer)
        except (FencedError, AuthorizationError):
            self.close()
            raise
        except Exception as exc:  # e.g. a record refused: the transaction cannot commit, abort it
            self._end("abort", timeout_s)
            raise exc
        except BaseException:
            self.close()
            raise
        return self._end("commit", timeout_s)

    def settle(self, timeout_s: float = 10.0) -> bool:
        """Finish the commit (or abort) that timed out, on the same producer (the same epoch: it cannot fence
        an owner that took the id over meanwhile; it is fenced by it). True when the transaction committed,
        False when it was aborted (to be written again). Raises as :meth:`transact` (ProduceTimeoutError: still
        unknown, still :attr:`in_doubt`)."""
        what, self.in_doubt = self.in_doubt, None
        if what is None:
            raise ValueError("no transaction to settle")
        return self._end(what, timeout_s)

    def _end(self, what: str, timeout_s: float) -> bool:
        """Commit (``what="commit"``) or abort the open transaction; True when it committed. A commit the
        broker says must be aborted is aborted here (False). A timeout keeps the producer, :attr:`in_doubt`."""
        try:
            if what == "commit":
                try:
                    self.producer.commit(timeout_s=timeout_s)
                    return True
                except AbortableError as exc:
                    log.info("%s: the transaction cannot commit (%s); aborting it", self.who, exc)
                    what = "abort"
            self.producer.abort(timeout_s=timeout_s)
            return False
        except ProduceTimeoutError:
            self.in_doubt = what  # the same call again on the same producer finishes it (settle)
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout_s=1.0)
            except Exception as exc:  # a fenced producer may refuse to close cleanly
                log.debug("closing the changelog producer of %s: %s", self.who, exc)
            self.producer = None
        self.in_doubt = None


class PartitionLog(TransactionalWriter):
    """The transactional writer and the restoring reader of one source partition's changelog partition.

    Parameters
    ----------
    kafka : KafkaConfig
    changelog : str
        The compacted join changelog topic (as many partitions as the source topic).
    partition : int
    group : callable
        ``group() ->`` the source consumer's ``group_metadata()``, asked at each write (the source is
        replaced when the replica rejoins): the group whose offsets commit inside each transaction.
    """

    def __init__(self, kafka, changelog: str, partition: int, group):
        super().__init__(kafka, f"{changelog}.{partition}", f"partition {partition}")
        self.changelog = changelog
        self.partition = partition
        self.group = group

    def records(self):
        """The partition's committed records from its beginning to its end (``read_committed``), a generator
        over a client of its own: a restore reads it a slice at a time (``close()`` it to give up)."""
        return read_to_end(self.kafka, self.changelog, self.partition)

    def write(self, partials_topic: str, model: bytes, partials: list[dict], changes: dict, state: dict,
              offsets: dict[tuple[str, int], int], timeout_s: float = 10.0) -> None:
        """One transaction (:meth:`transact`): partials, join changes, the state record and the consumed
        offsets; raises as it does, and ProduceError when the transaction failed and was aborted."""

        def send(producer) -> None:
            for partial in partials:
                producer.send(partials_topic, json.dumps(partial, separators=(",", ":")).encode(), key=model)
            for key, entry in changes.items():
                producer.send(self.changelog, None if entry is None else _encode(entry), key=key.encode(),
                              partition=self.partition)
            producer.send(self.changelog, json.dumps(state, separators=(",", ":")).encode(), key=STATE_KEY,
                          partition=self.partition)
            if offsets:
                producer.send_offsets(offsets, self.group())

        if not self.transact(send, timeout_s):
            raise ProduceError("the transaction failed and was aborted: written again at the next cut")
