"""The dead-letter topic: rejected records, produced on a thread of their own.

Nothing here can stop or stall consumption. The consuming thread only appends to
a bounded queue; a sender thread hands the records to a Kafka producer whose
limits are configured (payloads cut to ``kafka.dead_letter_max_bytes``), and
every record ends sent or counted as failed by reason.

The guarantee, with the checkpoint (see ``Daemon.checkpoint``): a checkpoint that
covers a rejected record's offset is written only after the record's dead letter
was acknowledged by the broker, or failed (counted), or was not acknowledged
within ``kafka.dead_letter_timeout`` (counted ``unconfirmed``; it is still sent,
but a crash before then loses it). A crash re-reads the records after the last
checkpoint and sends their dead letters again: delivery is at least once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

from monitor.config import KafkaConfig
from monitor.kafka_client import ProduceTimeoutError, RecordTooLargeError, make_producer

__all__ = ["DeadLetters", "FAILURE_REASONS", "QUEUE_BYTES"]

log = logging.getLogger(__name__)

#: Why a dead letter is counted in ``driftmon_dead_letters_failed_total`` (metric label values; bounded).
FAILURE_REASONS = ("too_large", "timeout", "unconfirmed", "queue_full", "error")

#: Bytes of dead letters waiting for the sender at most; beyond it new ones are dropped (``queue_full``).
QUEUE_BYTES = 64 * 1_048_576

#: Room above the payload limit for the headers and the record batch overhead, in the producer's request limit.
_HEADROOM = 16_384


class DeadLetters:
    """Produce rejected records to ``cfg.dead_letter_topic``, never blocking the caller.

    Parameters
    ----------
    cfg : KafkaConfig
        ``dead_letter_topic``, ``dead_letter_max_bytes``, ``dead_letter_timeout`` and the connection options.
    queue_bytes : int
        Bytes of payload that may wait for the sender before new dead letters are dropped.

    Attributes
    ----------
    enqueued : int
        Dead letters accepted so far; :meth:`wait` takes this as its mark.
    sent, truncated : int
        Dead letters acknowledged by the broker; payloads cut to the size limit.
    failed : Counter
        Reason (:data:`FAILURE_REASONS`) -> dead letters given up or not confirmed in time.
    """

    def __init__(self, cfg: KafkaConfig, queue_bytes: int = QUEUE_BYTES):
        self.cfg = cfg
        self.queue_bytes = queue_bytes
        self.topic = cfg.dead_letter_topic
        self.max_bytes = cfg.dead_letter_max_bytes
        self.timeout = cfg.dead_letter_timeout_seconds
        self.enqueued = 0
        self.sent = 0
        self.truncated = 0
        self.failed: Counter = Counter()
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._unresolved: set[int] = set()  # sequence numbers neither acknowledged nor failed yet
        self._cond = threading.Condition()
        self._slow = False  # a wait timed out and nothing was acknowledged since: do not wait again
        self._closing = False
        self._producer = None  # monitor.kafka_client.make_producer (kafka.client picks the library)
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Dead letters accepted but neither acknowledged, failed nor counted unconfirmed yet."""
        with self._cond:
            return len(self._unresolved)

    def start(self) -> "DeadLetters":
        self._thread = threading.Thread(target=self._run, name="dead-letters", daemon=True)
        self._thread.start()
        return self

    def put(self, items: list[tuple[bytes | None, str, str]]) -> int:
        """Queue rejected records ``(value, reason, source)``; returns the mark for :meth:`wait`. Never blocks."""
        with self._cond:
            for value, reason, source in items:
                size = min(len(value or b""), self.max_bytes)
                if self._queued_bytes + size > self.queue_bytes:
                    self.failed["queue_full"] += 1
                    continue
                self.enqueued += 1
                self._queue.append((self.enqueued, value, reason, source))
                self._queued_bytes += size
                self._unresolved.add(self.enqueued)
            self._cond.notify_all()
            return self.enqueued

    def wait(self, mark: int, timeout: float | None = None) -> bool:
        """Wait until every dead letter up to ``mark`` is acknowledged or failed, at most ``timeout``
        (default ``dead_letter_timeout``).

        Those still open then are counted ``unconfirmed`` (they stay queued and may still arrive). While
        the topic is slow (a wait timed out and nothing was acknowledged since), this does not wait at all.
        Returns whether all were resolved.
        """
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        deadline = time.monotonic() + (0.0 if self._slow else limit)
        with self._cond:
            while True:
                open_ = [s for s in self._unresolved if s <= mark]
                remaining = deadline - time.monotonic()
                if not open_ or remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not open_:
                return True
            for seq in open_:
                self._unresolved.discard(seq)
            self.failed["unconfirmed"] += len(open_)
            if not self._slow:
                log.warning("%d dead letters not acknowledged within %.1f s; not waiting for the dead-letter topic "
                            "until it acknowledges one", len(open_), self.timeout)
            self._slow = True
            return False

    # ---- the sender thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    if self._unresolved and self._producer is not None:
                        self._producer.poll(0)  # librdkafka hands acknowledgements over here (kafka-python
                        self._cond.wait(0.05)   # on its own IO thread); the callbacks take this same lock
                    else:
                        self._cond.wait()
                if not self._queue:
                    return
                seq, value, reason, source = self._queue.popleft()
                self._queued_bytes -= min(len(value or b""), self.max_bytes)
            try:
                self._send(seq, value, reason, source)
            except Exception as exc:  # whatever the client raises, the record is counted, the thread goes on
                self._resolve(seq, exc)

    def _send(self, seq: int, value: bytes | None, reason: str, source: str) -> None:
        payload = value or b""
        headers = [("driftmon-reason", reason.encode()), ("driftmon-source", source.encode())]
        if len(payload) > self.max_bytes:
            headers += [("driftmon-truncated", b"true"), ("driftmon-original-bytes", str(len(payload)).encode())]
            payload = payload[:self.max_bytes]
            with self._cond:
                self.truncated += 1
        if self._producer is None:
            self._producer = make_producer(self.cfg, max_request_bytes=self.max_bytes + _HEADROOM,
                                           max_block_s=self.timeout)
        self._producer.send_async(self.topic, payload, headers, lambda exc, seq=seq: self._resolve(seq, exc))

    def _resolve(self, seq: int, exc: BaseException | None) -> None:
        with self._cond:
            if exc is None:
                self.sent += 1
                self._slow = False
            elif seq in self._unresolved:  # not already counted unconfirmed
                self.failed[_reason(exc)] += 1
                log.warning("dead letter not sent: %s", exc)
            self._unresolved.discard(seq)
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the sender within ``timeout``: what is queued is handed to the producer, which gets the rest of
        it to deliver (what is not delivered then was counted ``unconfirmed`` by the final checkpoint)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout / 2)
        if self._producer is not None:
            self._producer.close(timeout_s=timeout / 2)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecordTooLargeError) or "TooLarge" in type(exc).__name__:
        return "too_large"
    if isinstance(exc, ProduceTimeoutError):
        return "timeout"
    return "error"
