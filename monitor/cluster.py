"""Scale-out (``cluster.enabled``): workers produce window partials, one aggregator chosen by Kafka merges them.

Every replica is a worker: it consumes its share of the prediction partitions as in single mode, but
keeps one event-time window per source partition and, when that window closes, produces its partial
(the window's accumulators, covered offsets and the partition's watermark) to the partials topic. The
source offsets it commits stop at the first event of each partition's open window, after the partials
before it are acknowledged (acks=all), so a worker killed at any moment is replaced by a re-read of
exactly its open windows.

Every replica is also a member of the aggregator group, which reads the partials topic (one partition
per model). Whoever Kafka assigns that partition is the aggregator: it merges the partials of a window
(exact: counts and histograms add), closes the window when every source partition's watermark has
passed its end (or ``cluster.grace`` after its end on the clock), evaluates it with the single-mode
evaluator, and owns the alert lifecycle. Its whole state (open merged windows, watermarks, the last
merged window per source partition, the alert engine, closed windows not yet emitted, and the partials
offset it has consumed up to) is one record, keyed by model, on a compacted changelog topic, written
before anything is emitted. A new aggregator restores that record and re-reads the partials after its
offset. A partial for a window the aggregator already merged from that partition (a worker re-read
after a crash) is a duplicate and is dropped; one for a window already closed is late: counted in
``driftmon_cluster_late_partials_total``, never merged.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time

from monitor.config import ConfigError
from monitor.kafka_client import (FencedError, create_topics, make_group_consumer, make_producer,
                                  make_transactional_producer, read_to_end)
from monitor.pipeline import Pipeline
from monitor.window import Window

__all__ = ["Cluster", "Worker", "Aggregator"]

log = logging.getLogger(__name__)


class _PartitionPipeline(Pipeline):
    """A worker's pipeline for one source partition: a closed window becomes a partial, not a verdict."""

    def _close(self, next_start: float | None, complete: bool = True) -> dict:
        window = self.window
        partial = {"start": window.start, "end": window.end,
                   "watermark": next_start if next_start is not None else window.end,
                   "window": window.state_dict()}
        self.window = window.fresh(window.index + 1, next_start,
                                   None if next_start is None else next_start + self.duration)
        return partial


class Worker:
    """Per-partition event-time windows of this replica's share of the prediction topic."""

    def __init__(self, config, baseline):
        self.config = config
        self.baseline = baseline
        self.parts: dict[str, _PartitionPipeline] = {}
        self.pending: list[tuple[str, dict]] = []  # (source partition, partial) not yet produced
        self.late = 0  # events older than their partition's open window (merged into it, as in single mode)
        self.seen: dict[str, float] = {}  # partition -> when it last sent records (monotonic)

    def _part(self, key: str) -> _PartitionPipeline:
        part = self.parts.get(key)
        if part is None:
            part = self.parts[key] = _PartitionPipeline(self.config, self.baseline)
        return part

    def process(self, key: str, values, times, offsets):
        """Feed one partition's batch; closed windows join :attr:`pending`. Returns the decoded batch."""
        part = self._part(key)
        self.seen[key] = time.monotonic()
        before = part.late
        partials, batch = part.process(values, times, key, offsets)
        self.late += part.late - before
        self.pending += [(key, p) for p in partials]
        return batch

    def tick(self, now: float, idle: bool, owned=None, quiet: float = 2.0) -> None:
        """Close open windows whose end plus ``window.grace`` has passed on the clock, for partitions that sent
        nothing for ``quiet`` seconds (or all, when the replica is idle): a partition read from a backlog
        keeps its window open until its events move past it, as its watermark promises."""
        grace = self.config.window.grace_seconds
        clock = time.monotonic()
        for key, part in self.parts.items():
            window = part.window
            if owned is not None and key not in owned:
                continue
            if not (idle or clock - self.seen.get(key, 0.0) >= quiet):
                continue
            if window.start is not None and window.end + grace <= now and (window.events or window.invalid):
                self.pending.append((key, part._close(next_start=None)))
                part.window.start = part.window.end = None  # the next event opens its own window

    def positions(self) -> dict[str, int]:
        return {key: part.positions[key] for key, part in self.parts.items() if key in part.positions}

    def safe_offsets(self) -> dict[str, int]:
        """Offsets safe to commit once :attr:`pending` is produced: each partition's open window starts there."""
        out = {}
        for key, part in self.parts.items():
            span = part.window.offsets.get(key)
            if span is not None:
                out[key] = span[0]
            elif key in part.positions:
                out[key] = part.positions[key]
        return out

    def release(self, keys) -> None:
        for key in keys:
            self.parts.pop(key, None)
        self.pending = [(k, p) for k, p in self.pending if k not in set(keys)]


class Aggregator:
    """The merged windows of one model, their watermarks, and the closing rule."""

    def __init__(self, pipeline: Pipeline, topic: str, grace: float):
        self.pipeline = pipeline  # evaluates closed windows (the daemon's: its results feed metrics and alerts)
        self.topic = topic
        self.grace = grace
        self.late = 0  # partials for windows already closed
        self.duplicates = 0  # partials merged before (a worker re-read after a crash), dropped
        self._reset()

    def _reset(self) -> None:
        self.open: dict[float, Window] = {}  # window start -> merged window
        self.arrived: dict[float, float] = {}  # window start -> when its first partial arrived (wall clock)
        self.watermarks: dict[str, float] = {}  # source partition -> all its windows before this are reported
        self.merged: dict[str, int] = {}  # source partition -> last offset merged from it
        self.closed_until = -math.inf  # end of the last closed window
        self.position: int | None = None  # next partials offset to read

    def add(self, offset: int, record: dict) -> None:
        """Apply one partial (read at ``offset`` of the partials topic)."""
        self.position = offset + 1
        key, start = record["partition"], record["start"]
        self.watermarks[key] = max(self.watermarks.get(key, -math.inf), record["watermark"])
        span = record["window"]["offsets"].get(key)
        if start is None or span is None:
            return  # no valid event: only the watermark counts
        if span[1] <= self.merged.get(key, -1):
            self.duplicates += 1  # a worker re-read these offsets after a crash or a rebalance
            return
        self.merged[key] = span[1]
        if start < self.closed_until:
            self.late += 1
            log.warning("late partial from %s for the window at %s, closed already: counted, not merged",
                        key, start)
            return
        window = self.open.get(start)
        if window is None:
            window = self.open[start] = self.pipeline._new_window(0, start, record["end"])
            self.arrived[start] = time.time()
        part = self.pipeline._new_window(0, start, record["end"]).load_state_dict(record["window"])
        part.index = window.index  # the worker's own count of its partition's windows
        window.merge(part)  # exact: counts and histograms add (Window.merge)

    def close(self, partitions: int, now: float) -> list[dict]:
        """Evaluate the windows every source partition has reported past (or whose grace is over), oldest first."""
        keys = [f"{self.topic}:{p}" for p in range(partitions)]
        mark = min((self.watermarks.get(k, -math.inf) for k in keys), default=-math.inf)
        results = []
        for start in sorted(self.open):
            window = self.open[start]
            # the grace runs from the window's end and from its first partial's arrival: a backlog read
            # from the past does not close windows before the partitions behind had a chance to report
            waited = now - self.arrived.get(start, now)
            if not (window.end <= mark or (window.end + self.grace <= now and waited >= self.grace)):
                break
            del self.open[start]
            self.arrived.pop(start, None)
            window.index = self.pipeline.window.index
            self.pipeline.window = window
            results.append(self.pipeline._close(next_start=None))
            self.closed_until = max(self.closed_until, window.end)
        return results

    def state_dict(self) -> dict:
        return {"open": [w.state_dict() for _s, w in sorted(self.open.items())],
                "arrived": [self.arrived.get(s) for s in sorted(self.open)],
                "watermarks": dict(self.watermarks), "merged": dict(self.merged),
                "closed_until": None if math.isinf(self.closed_until) else self.closed_until,
                "position": self.position, "late": self.late, "duplicates": self.duplicates}

    def load_state_dict(self, state: dict) -> "Aggregator":
        self._reset()
        for ws, arrived in zip(state["open"], state["arrived"]):
            self.open[ws["start"]] = self.pipeline._new_window(0).load_state_dict(ws)
            self.arrived[ws["start"]] = arrived if arrived is not None else time.time()
        self.watermarks = dict(state["watermarks"])
        self.merged = dict(state["merged"])
        self.closed_until = -math.inf if state["closed_until"] is None else state["closed_until"]
        self.position = state["position"]
        self.late, self.duplicates = state["late"], state["duplicates"]
        return self


#: the largest partial or changelog record (a request, a topic's max.message.bytes)
MAX_RECORD_BYTES = 16 * 1024 * 1024


class Cluster:
    """The daemon's scale-out part: the worker, the aggregator, and their Kafka clients.

    All Kafka calls of scale-out are here, through :mod:`monitor.kafka_client` (either client library,
    ``kafka.client``). The daemon calls :meth:`start` after its source is
    connected, :meth:`step` after each poll, :meth:`tick` every second, :meth:`checkpoint` where
    single mode writes its checkpoint, and :meth:`close` at shutdown; all under the daemon's lock
    except start and close.
    """

    def __init__(self, daemon):
        self.daemon = daemon
        config = daemon.config
        self.config = config
        kafka = config.kafka
        self.partials_topic, self.changelog_topic, self.group_id = config.cluster.names(
            kafka.topic, config.model, kafka.group_id)
        self.worker = Worker(config, daemon.baseline)
        # what a first aggregator starts from (a take-over without a changelog record starts there too)
        self._fresh = {"pipeline": daemon.pipeline.state_dict(), "alerts": daemon.alerts.state_dict()}
        self.aggregator = Aggregator(daemon.pipeline, kafka.topic, config.cluster.grace_seconds)
        self.assigned = False  # this replica holds the model's partials partition
        self.active = False  # ... and has restored the aggregator state from the changelog
        self.restore_needed = False
        self._retake_at: float | None = None  # after being fenced: when to take over again if still assigned
        self.changed = False
        self.partitions = 0  # of the source topic
        self._producer = None  # partials (kafka_client.make_producer)
        self._state_producer = None  # the changelog, transactional (the aggregator's)
        self._consumer = None  # the aggregator group's member (kafka_client.make_group_consumer)
        self._last_commit = 0.0
        self.changelog_writes = 0
        self.partials_produced = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> dict:
        """The /status section (read without the lock: plain numbers)."""
        agg = self.aggregator
        return {"aggregator": self.active, "partials_topic": self.partials_topic,
                "changelog_topic": self.changelog_topic, "partials_produced": self.partials_produced,
                "late_partials": agg.late, "duplicate_partials": agg.duplicates,
                "open_windows": len(agg.open), "changelog_writes": self.changelog_writes}

    # ---- clients ----------------------------------------------------------------------------------

    def start(self) -> None:
        kafka = self.config.kafka
        if self.config.cluster.create_topics:
            try:
                self._create_topics()
            except Exception as exc:  # e.g. no Create ACL: one line naming the key, exit 2
                raise ConfigError("cluster.create_topics", f"cannot create {self.partials_topic} and "
                                  f"{self.changelog_topic} ({type(exc).__name__}: {exc}); create them (docs/helm.md, "
                                  "scale-out topics) and set create_topics: false, or grant Create") from None
        self._producer = make_producer(kafka, max_request_bytes=MAX_RECORD_BYTES, compression="gzip")
        self._consumer = make_group_consumer(kafka, self.group_id, [self.partials_topic],
                                             on_assign=self._assigned, on_revoke=self._revoked)
        self.partitions = self._consumer.partitions(kafka.topic)
        self._thread = threading.Thread(target=self._run, name="driftmon-aggregator", daemon=True)
        self._thread.start()
        log.info("scale-out: partials on %s (aggregator group %s), changelog %s, %d source partitions",
                 self.partials_topic, self.group_id, self.changelog_topic, self.partitions)

    def _create_topics(self) -> None:
        configs = {self.partials_topic: {"retention.ms": str(7 * 86400 * 1000)},
                   self.changelog_topic: {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}}
        for topic_configs in configs.values():
            topic_configs["max.message.bytes"] = str(MAX_RECORD_BYTES)
        for topic in create_topics(self.config.kafka, {topic: 1 for topic in configs},
                                   replication_factor=self.config.cluster.replication_factor, configs=configs):
            log.info("created topic %s", topic)

    # The aggregator group's rebalance callbacks: flags only (kafka-python runs them on its IO thread).
    def _assigned(self, partitions) -> None:
        self.assigned = bool(partitions)
        self.restore_needed = bool(partitions)

    def _revoked(self, partitions) -> None:
        self.assigned = False

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._consumer is not None:
            self._consumer.close(timeout_s=1.0)
            self._consumer = None
        for producer in (self._producer, self._state_producer):
            if producer is not None:
                producer.close(timeout_s=1.0)
        self._producer = self._state_producer = None

    # ---- work (under the daemon's lock) --------------------------------------------------------------

    def produce_partials(self) -> bool:
        """Produce pending partials and wait for the broker's acknowledgement; True when none is pending."""
        worker = self.worker
        if not worker.pending:
            return True
        model = self.config.model.encode()
        outcomes: list = []  # None (acknowledged) or the error, one per partial
        try:
            for key, partial in worker.pending:
                value = json.dumps({"partition": key, **partial}, separators=(",", ":")).encode()
                self._producer.send_async(self.partials_topic, value, None, outcomes.append, key=model)
            self._producer.flush(10.0)  # every outcome is reported once it returns
            failed = [e for e in outcomes if e is not None]
            if failed or len(outcomes) < len(worker.pending):
                raise failed[0] if failed else TimeoutError("not acknowledged within 10 s")
        except Exception as exc:  # kept and sent again: the aggregator drops what arrives twice (by offset)
            log.warning("partials not acknowledged by %s, retrying: %s", self.partials_topic, exc)
            return False
        self.partials_produced += len(worker.pending)
        worker.pending = []
        return True

    def commit(self, source, force: bool = False) -> None:
        """Commit the source offsets that every produced partial covers (throttled)."""
        now = time.monotonic()
        if not force and now - self._last_commit < self.config.kafka.commit_interval_seconds:
            return
        if not self.produce_partials():
            return  # the offsets wait for the partials they cover
        try:
            source.commit(self.worker.safe_offsets(), timeout_ms=10_000)
        except Exception as exc:  # a rebalance or an outage: the next owner re-reads; duplicates are dropped
            log.warning("offset commit failed: %s", exc)
        self._last_commit = now

    def before_revoke(self) -> dict[str, int]:
        if not self.produce_partials():
            return {}  # nothing safe to commit beyond the last commit
        return self.worker.safe_offsets()

    def step(self, now: float) -> list[dict]:
        """Produce the worker's partials; as the aggregator, close the windows whose grace is over."""
        self.produce_partials()
        return self.aggregator.close(self.partitions, now) if self.active else []

    def tick(self, now: float, idle: bool) -> list[dict]:
        source = self.daemon.source
        # only partitions this replica holds: one it lost (a stall past the session timeout) has another owner
        owned = {f"{tp.topic}:{tp.partition}" for tp in source.assigned} if source is not None else set()
        self.worker.tick(now, idle, owned)
        return self.step(now)

    def _run(self) -> None:
        """The aggregator group member (its own thread: its polls must not slow down the worker's)."""
        daemon = self.daemon
        while not self._stopping.is_set():
            try:
                records = self._consumer.poll(timeout_ms=500, max_records=500)
            except Exception as exc:  # the broker is down: the worker's health reports it; try again
                log.warning("aggregator poll failed: %s", exc)
                self._stopping.wait(1.0)
                continue
            state = None
            if self._retake_at is not None and time.monotonic() >= self._retake_at:
                self._retake_at = None
                self.restore_needed = self.assigned and not self.active
            if self.restore_needed:
                records = []  # re-read from the restored position
                try:  # outside the lock: the worker goes on meanwhile
                    state = self._fence_and_read()
                except Exception as exc:  # the broker is away: try again on the next poll
                    log.warning("aggregator take-over failed, retrying: %s", exc)
                    self._stopping.wait(1.0)
                    continue
            with daemon.lock:
                if self.restore_needed:
                    self._restore(state)
                if not self.assigned:
                    if self.active:
                        self._resign()
                    continue
                for r in records:
                    self.aggregator.add(r.offset, json.loads(r.value))
                    self.changed = True
                results = self.aggregator.close(self.partitions, time.time()) if self.active else []
                if results or self.changed:
                    daemon._handle(results)
                    daemon._publish()

    # ---- aggregator state in the changelog ------------------------------------------------------------

    def _snapshot(self) -> dict:
        daemon = self.daemon
        pipeline = daemon.pipeline.state_dict()
        pipeline.pop("positions", None)
        pipeline.pop("window", None)
        return {"aggregator": self.aggregator.state_dict(), "pipeline": pipeline,
                "alerts": daemon.alerts.state_dict(), "outgoing": daemon._outgoing,
                "undelivered": daemon.outbox.undelivered()}

    def checkpoint(self, force: bool = False) -> bool:
        """Write the aggregator's state to the changelog (acks=all) when it changed; True when durable."""
        if not self.active:
            return True
        if not (self.changed or force):
            return True
        value = json.dumps(self._snapshot(), separators=(",", ":")).encode()
        producer = self._state_producer
        try:
            producer.begin()
            producer.send(self.changelog_topic, value, key=self.config.model.encode())
            producer.commit(timeout_s=10.0)
        except FencedError:
            log.warning("fenced: another replica took over as the aggregator for %s", self.config.model)
            self._resign()
            # Still ours by the group's last word? Take over again once the group had time to settle (the
            # replica that fenced us may be a stalled one that is about to learn it lost the partition).
            self._retake_at = time.monotonic() + self.config.kafka.session_timeout_ms / 1000
            return False
        except Exception as exc:  # the broker is away: nothing is emitted until the state is durable
            log.warning("aggregator state not written to %s: %s", self.changelog_topic, exc)
            # A transaction in an unknown state: take over afresh (a new epoch aborts it, and the state is
            # read back from what was committed), at once if the partition is still ours.
            self._resign()
            self._retake_at = time.monotonic()
            return False
        self.changelog_writes += 1
        self.changed = False
        return True

    def _read_changelog(self) -> dict | None:
        model, latest = self.config.model.encode(), None
        for record in read_to_end(self.config.kafka, self.changelog_topic, 0):  # read_committed
            if record.key == model:
                latest = record.value
        return None if latest is None else json.loads(latest)

    def _fence_and_read(self) -> dict | None:
        """Fence the previous aggregator, then read the last state it committed.

        The changelog is written in transactions under one transactional id per model: initializing it
        aborts the previous owner's open transaction and makes its next write fail (a stalled aggregator
        that wakes up after its session expired cannot write a stale state), and the state is read with
        ``read_committed``.
        """
        if self._state_producer is not None:  # a new epoch each take-over, even of our own partition
            self._state_producer.close(timeout_s=1.0)
            self._state_producer = None
        producer = make_transactional_producer(self.config.kafka, self.changelog_topic,
                                               max_request_bytes=MAX_RECORD_BYTES, compression="gzip")
        try:
            producer.init(timeout_s=30.0)
        except BaseException:
            producer.close(timeout_s=1.0)
            raise
        self._state_producer = producer
        return self._read_changelog()

    def _restore(self, state: dict | None) -> None:
        """Take over as the aggregator: the state of the last changelog record, then the partials after it."""
        self.restore_needed = False
        daemon = self.daemon
        daemon._outgoing = None  # whatever this replica evaluated before is superseded by the changelog's state
        if state is None:  # nothing was ever committed, so nothing was emitted: start as the first aggregator did
            self.aggregator._reset()
            state = self._fresh
            daemon.pipeline.load_state_dict({**state["pipeline"], "positions": {},
                                             "window": daemon.pipeline._new_window(0).state_dict()})
            daemon.alerts.load_state_dict(state["alerts"])
            self._consumer.seek(self.partials_topic, 0, None)  # from the beginning
            state = None
        else:
            self.aggregator.load_state_dict(state["aggregator"])
            daemon.pipeline.load_state_dict({**state["pipeline"], "positions": {},
                                             "window": daemon.pipeline._new_window(0).state_dict()})
            daemon.pipeline.window.index = daemon.pipeline.windows_evaluated
            daemon.alerts.load_state_dict(state["alerts"])
            self._consumer.seek(self.partials_topic, 0, self.aggregator.position)  # None: the beginning
            if state.get("undelivered"):  # in the last aggregator's outbox, not acknowledged: at-least-once
                daemon.dispatcher.submit(state["undelivered"])
            if state.get("outgoing"):
                daemon._outgoing = state["outgoing"]  # the last aggregator stopped between changelog and emission
        self.active = True
        log.info("aggregator for %s: restored %s, reading partials from %s", self.config.model,
                 "its changelog" if state is not None else "nothing (first aggregator)",
                 self.aggregator.position or "the beginning")

    def _resign(self) -> None:
        self.active = False
        self.aggregator._reset()
        self.daemon._outgoing = None  # the next aggregator emits them from the changelog, or evaluates them again
        if self._state_producer is not None:
            self._state_producer.close(timeout_s=1.0)
            self._state_producer = None
        self.daemon.pipeline.last_result = None  # the global metrics are exported by the aggregator only
        log.info("no longer the aggregator for %s", self.config.model)
