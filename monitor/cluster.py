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
merged offset per source partition, the alert engine, closed windows not yet emitted, and the partials
offset it has consumed up to) is one record, keyed by model, on a compacted changelog topic, written
before anything is emitted. A new aggregator restores that record and re-reads the partials after its
offset. A partial whose offsets the aggregator already merged from that partition (a worker re-read
after a crash) is a duplicate and is dropped; one for a window already closed is late: counted in
``driftmon_cluster_late_partials_total``, never merged.

With labels (``schema.label`` and ``schema.prediction``), the label join happens at the worker that owns
the prediction's partition: label partition *p* is assigned with prediction partition *p* (the topics are
co-partitioned, the range assignor pinned). The worker keeps, per partition, the pending joins, the open
prediction window and the open performance windows (event time, ``labels.window_duration``), and writes
them at every cut in one Kafka transaction with the partials and the consumed offsets
(``monitor/join_changelog.py``); the aggregator merges the performance partials like the others, and sums
each partition's cumulative label counts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from monitor.config import ConfigError
from monitor.kafka_client import (AuthorizationError, FencedError, ProduceError, RetryLog, check_access, create_topics,
                                  make_group_consumer, make_producer, partition_key, read_to_end)
from monitor.join import RocksStore
from monitor.join_changelog import MAX_RECORD_BYTES, TransactionalWriter
from monitor.performance import LabelledWindow, PerformanceTracker
from monitor.pipeline import Pipeline
from monitor.window import Window

__all__ = ["Cluster", "Worker", "Aggregator"]

log = logging.getLogger(__name__)


# The changelogs' settings when driftmon creates them. Compaction never touches the active segment, and
# Kafka's default segment.ms (7 days) would let a restore re-read a week of state writes: rolling every
# 10 minutes bounds a restore to the compacted records plus about 10 minutes of writes.
COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "segment.ms": "600000"}


class _PairTracker(PerformanceTracker):
    """A worker's label join and performance windows for one source partition: a closed performance
    window becomes a partial, not a verdict."""

    def _close(self, window: LabelledWindow | None = None) -> dict:
        return {"start": window.start, "end": window.end, "window": window.state_dict()}

    def mark(self) -> float:
        """Every join of this partition before this event time has been reported (the performance watermark)."""
        streams = self.prediction_time if self.label_decoder is None else min(self.prediction_time, self.label_time)
        return max(streams, self.closed_until)

    def counts(self) -> dict:
        """Cumulative label counts of the partition (the aggregator sums the latest of every partition)."""
        join = self.join
        return {"received": join.received, "matched": join.matched, "expired": join.expired,
                "pending": join.pending, "late": self.late, "delay_counts": list(self.delay_counts),
                "delay_sum": self.delay_sum}

    def restore_counts(self, counts: dict) -> None:
        join = self.join
        join.received, join.matched, join.expired = counts["received"], counts["matched"], counts["expired"]
        self.late, self.delay_counts, self.delay_sum = counts["late"], list(counts["delay_counts"]), counts["delay_sum"]


class _ChangelogStore(RocksStore):
    """The partition's RocksDB join store, which also records which ids changed since the last cut (every
    write lands through ``_land``); the cut reads their current entries (None: gone) for the changelog."""

    def __init__(self, path: str):
        self.changed: set[str] = set()  # ids changed since the last cut
        self.cutting: set[str] = set()  # ids changed before it, in cuts not committed yet
        super().__init__(path)

    def _land(self, wb, created: list, old_keys: list, old_vals: list, count: int, touched: list) -> None:
        super()._land(wb, created, old_keys, old_vals, count, touched)
        self.changed.update(ek[1:].decode() for ek in touched)

    def changes(self) -> dict:
        """id -> its entry now, or None, for every id changed since the last committed cut (the ids of a cut
        that did not commit are written again)."""
        self.cutting |= self.changed
        self.changed = set()
        keys = sorted(self.cutting)
        return dict(zip(keys, self.get_many(keys)))

    def written(self) -> None:
        """The last :meth:`changes` are in Kafka (ids changed since are not)."""
        self.cutting = set()
        self.settle()

    def forget(self) -> None:
        """What the store holds is in Kafka already (a restore): no change to write back."""
        self.changed, self.cutting = set(), set()
        self.settle()

    def settle(self) -> None:
        """The changes are in Kafka: drop the undo records (the changelog, not the store, is the recovery)."""
        self.durable({"epoch": self.epoch})


class _Totals:
    """The aggregator's label counts: the sums of every partition's latest cumulative counts (in place of the
    tracker's join, which the aggregator does not run)."""

    def __init__(self):
        self.received = self.matched = self.expired = self.pending = 0

    def state_dict(self) -> dict:
        return {"received": self.received, "matched": self.matched, "expired": self.expired, "pending": self.pending}

    def load_state_dict(self, state: dict) -> "_Totals":
        self.received, self.matched, self.expired = state["received"], state["matched"], state["expired"]
        self.pending = state.get("pending", 0)
        return self

    def expire(self, now=None) -> int:
        return 0

    def close(self) -> None:
        pass


class _PartitionPipeline(Pipeline):
    """A worker's pipeline for one source partition: a closed window becomes a partial, not a verdict."""

    def __init__(self, config, baseline, join_path: str | None = None):
        super().__init__(config, baseline)
        self.dirty = False  # processed anything since the last cut
        self.store: _ChangelogStore | None = None  # the join's store (labels topic only)
        if self.tracker is not None:
            self.tracker = _PairTracker(config, baseline)
            if join_path is not None and config.labels_on_topic:
                self.tracker.join.store.close()
                self.store = self.tracker.join.store = _ChangelogStore(join_path)
                self.store.clear()  # filled from the changelog, never from a previous owner's disk
                self.store.changed.clear()
                self.store.cutting.clear()

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

    def __init__(self, config, baseline, join_dir: str | None = None):
        self.config = config
        self.baseline = baseline
        self.join_dir = join_dir  # the pairs' RocksDB join stores (emptyDir: refilled from the changelog)
        self.parts: dict[str, _PartitionPipeline] = {}
        self.pending: list[tuple[str, dict]] = []  # (source partition, partial) not yet produced
        self.late = 0  # events older than their partition's open window (merged into it, as in single mode)
        self.seen: dict[str, float] = {}  # partition -> when it last sent records (monotonic)
        # labels: a partition's state goes to Kafka in transactions (cuts), see monitor/join_changelog.py
        self.pairs = bool(config.cluster.enabled and config.schema.label is not None
                          and config.schema.prediction is not None)
        self.topic = config.kafka.topic if config.kafka is not None else None
        self.labels_topic = config.kafka.labels_topic if config.kafka is not None else None
        self.labelled: dict[str, list[dict]] = {}  # partition -> performance partials not yet written
        self.seq: dict[str, int] = {}  # partition -> cuts written (the aggregator drops a count it has seen)
        self.taken: dict[str, tuple[int, int, int]] = {}  # partition -> its last cut: (seq, partials, windows)
        self.staged: dict[str, _PartitionPipeline | None] = {}  # restored on assignment, installed by _part
        self.restored = 0  # partitions restored from a state record of the changelog

    def pair_key(self, key: str) -> str:
        """The prediction partition's key for a prediction or label partition key (labels)."""
        return f"{self.topic}:{key.rsplit(':', 1)[1]}" if self.pairs else key

    def new_part(self, key: str) -> _PartitionPipeline:
        path = None
        if self.pairs and self.join_dir is not None:
            path = os.path.join(self.join_dir, key.rsplit(":", 1)[1])
        return _PartitionPipeline(self.config, self.baseline, path)

    def _part(self, key: str) -> _PartitionPipeline:
        part = self.parts.get(key)
        if part is None:
            part = self.staged.pop(key, None) if self.pairs else None
            if part is None:
                part = self.new_part(key)
            self.parts[key] = part
        return part

    def blocked(self, key: str) -> bool:
        """A partition whose restore failed: its records wait (nothing of it is committed) for the rejoin."""
        return self.pairs and key in self.staged and self.staged[key] is None

    def process(self, key: str, values, times, offsets):
        """Feed one partition's batch; closed windows join :attr:`pending`. Returns the decoded batch."""
        part = self._part(key)
        self.seen[key] = time.monotonic()
        before = part.late
        partials, batch = part.process(values, times, key, offsets)
        self.late += part.late - before
        self.pending += [(key, p) for p in partials]
        self._take_labelled(key, part)
        return batch

    def process_labels(self, key: str, values, times, offsets):
        """Feed one label partition's batch to the join of its prediction partition. Returns the decoded batch."""
        pair = self.pair_key(key)
        part = self._part(pair)
        self.seen[pair] = time.monotonic()  # labels still coming: the clock closes none of its windows
        batch = part.process_labels(values, times, key, offsets)
        self._take_labelled(pair, part)
        return batch

    def _take_labelled(self, key: str, part: _PartitionPipeline) -> None:
        part.dirty = True
        if part.performance:
            self.labelled.setdefault(key, []).extend(part.take_performance())

    # ---- cuts (labels): what one transaction writes ---------------------------------------------------

    def cut(self, key: str) -> tuple[list[dict], dict, dict, dict]:
        """(partials, join changes, state record, consumed offsets) of partition ``key`` since the last committed
        cut: cumulative, nothing is cleared until :meth:`cut_done` (a cut that did not commit is written again,
        with what came since). Records what the cut holds, for :meth:`cut_done`."""
        part = self.parts[key]
        tracker = part.tracker
        seq = self.seq.get(key, 0) + 1
        partials = [{"partition": k, **p} for k, p in self.pending if k == key]
        windows = list(self.labelled.get(key, []))
        partials.append({"partition": key, "kind": "labels", "seq": seq, "watermark": _finite(tracker.mark()),
                         "windows": windows, "counts": tracker.counts()})
        label_key = f"{self.labels_topic}:{key.rsplit(':', 1)[1]}" if self.labels_topic else None
        positions = {k: part.positions[k] for k in (key, label_key) if k is not None and k in part.positions}
        state = {"seq": seq, "positions": positions, "window": part.window.state_dict(), "late": part.late,
                 "tracker": tracker.timed_state(), "counts": tracker.counts(),
                 "watermark": _finite(tracker.join.watermark)}
        offsets = {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): o for k, o in positions.items()}
        self.taken[key] = (seq, len(partials), len(windows))
        part.dirty = False  # set again by what comes next, or by cut_failed
        return partials, part.store.changes() if part.store is not None else {}, state, offsets

    def cut_failed(self, key: str) -> None:
        """The last cut did not commit (or its outcome is unknown): the next one writes it again."""
        part = self.parts.get(key)
        if part is not None:
            part.dirty = True

    def cut_done(self, key: str, seq: int) -> int:
        """The last cut of ``key`` (sequence number ``seq``) committed: clear what it held, and only that (a cut
        whose commit is settled later leaves what came since for the next cut). Returns its partials."""
        cut_seq, partials, windows = self.taken.pop(key)
        if cut_seq != seq:
            raise ValueError(f"partition {key}: cut {seq} done, but the last cut was {cut_seq}")
        part = self.parts[key]
        self.seq[key] = seq
        drop = partials - 1  # the prediction partials: the first ones of the partition's, in order
        kept = []
        for k, p in self.pending:
            if k == key and drop > 0:
                drop -= 1
            else:
                kept.append((k, p))
        self.pending = kept
        left = self.labelled.get(key, [])[windows:]
        if left:
            self.labelled[key] = left
        else:
            self.labelled.pop(key, None)
        if part.store is not None:
            part.store.written()
        return partials

    @staticmethod
    def fill(part: _PartitionPipeline, changes: dict) -> None:
        """Apply a chunk of the changelog (prediction id -> entry, or None: a tombstone) to a restoring
        partition's store. Chunks applied in log order leave the store as the whole log would."""
        store = part.tracker.join.store
        store.apply(changes, {})
        if part.store is not None:
            # what the changelog holds already: neither a change to write back nor an undo record to keep,
            # so that neither grows with the partition during its restore
            part.store.forget()

    def load(self, key: str, part: _PartitionPipeline, state: dict | None) -> _PartitionPipeline:
        """Finish a restore: the store holds what the changelog holds (``new_part`` left it empty with nothing
        changed and :meth:`fill` forgot each chunk's changes, so an empty changelog leaves nothing to forget); the
        state record's windows, counters and positions (None: the partition starts at the group's committed
        offsets)."""
        tracker = part.tracker
        if state is not None:
            part.window.load_state_dict(state["window"])
            part.late = state["late"]
            part.positions = dict(state["positions"])
            tracker.load_timed_state(state["tracker"])
            tracker.restore_counts(state["counts"])
            tracker.join.watermark = -math.inf if state["watermark"] is None else state["watermark"]
            self.seq[key] = state["seq"]
            self.restored += 1
        return part

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
                part.dirty = True
            if part.tracker is not None and self.pairs:
                closed = part.tracker.tick(now)
                if closed:
                    self.labelled.setdefault(key, []).extend(closed)
                    part.dirty = True

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
        keys = {self.pair_key(k) if self.pairs else k for k in keys}
        for key in keys:
            # a restored partition not yet installed (no record of it read since) holds its store open too:
            # closed here, or the partition's next restore cannot open it (RocksDB's lock)
            for part in (self.parts.pop(key, None), self.staged.pop(key, None)):
                if part is not None and part.tracker is not None:
                    part.tracker.join.close()
            self.labelled.pop(key, None)
            self.seq.pop(key, None)
            self.taken.pop(key, None)
        self.pending = [(k, p) for k, p in self.pending if k not in keys]


def _finite(t: float) -> float | None:
    return t if math.isfinite(t) else None


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
        # labels: merged performance windows, each partition's performance watermark and latest counts
        self.labelled: dict[float, LabelledWindow] = {}
        self.labelled_arrived: dict[float, float] = {}
        self.label_marks: dict[str, float] = {}
        self.label_counts: dict[str, dict] = {}
        self.label_seq: dict[str, int] = {}
        self.labelled_until = -math.inf  # end of the last closed performance window
        self.late_labelled = 0  # performance partials for windows already closed

    def add(self, offset: int, record: dict) -> None:
        """Apply one partial (read at ``offset`` of the partials topic)."""
        self.position = offset + 1
        if record.get("kind") == "labels":
            self._add_labels(record)
            return
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

    def _add_labels(self, record: dict) -> None:
        """A partition's cut: its closed performance windows, its performance watermark, its label counts."""
        key, seq = record["partition"], record["seq"]
        if seq <= self.label_seq.get(key, 0):
            self.duplicates += 1  # a transaction written twice (a commit whose answer was lost)
            return
        self.label_seq[key] = seq
        self.label_counts[key] = record["counts"]
        if record["watermark"] is not None:
            self.label_marks[key] = max(self.label_marks.get(key, -math.inf), record["watermark"])
        tracker = self.pipeline.tracker
        for partial in record["windows"]:
            start = partial["start"]
            if start < self.labelled_until:
                self.late_labelled += 1
                log.warning("late performance partial from %s for the window at %s, closed already: counted, "
                            "not merged", key, start)
                continue
            window = self.labelled.get(start)
            if window is None:
                window = self.labelled[start] = tracker.new_labelled(start)
                self.labelled_arrived[start] = time.time()
            window.merge(tracker.new_labelled(start).load_state_dict(partial["window"]))
        self._sum_counts()

    def _sum_counts(self) -> None:
        tracker = self.pipeline.tracker
        counts = list(self.label_counts.values())
        totals = tracker.join  # _Totals
        for name in ("received", "matched", "expired", "pending"):
            setattr(totals, name, sum(c[name] for c in counts))
        tracker.late = sum(c["late"] for c in counts)
        tracker.delay_sum = sum(c["delay_sum"] for c in counts)
        tracker.delay_counts = [sum(col) for col in zip(*(c["delay_counts"] for c in counts))] or \
            [0] * len(tracker.delay_counts)

    def _close_labelled(self, partitions: int, now: float) -> None:
        """Evaluate the performance windows every partition has reported past (or whose grace is over)."""
        keys = [f"{self.topic}:{p}" for p in range(partitions)]
        mark = min((self.label_marks.get(k, -math.inf) for k in keys), default=-math.inf)
        tracker = self.pipeline.tracker
        for start in sorted(self.labelled):
            window = self.labelled[start]
            waited = now - self.labelled_arrived.get(start, now)
            if not (window.end <= mark or (window.end + self.grace <= now and waited >= self.grace)):
                break
            del self.labelled[start]
            self.labelled_arrived.pop(start, None)
            self.pipeline.performance.append(tracker._close(window))
            self.labelled_until = max(self.labelled_until, window.end)

    def close(self, partitions: int, now: float) -> list[dict]:
        """Evaluate the windows every source partition has reported past (or whose grace is over), oldest first."""
        if self.pipeline.tracker is not None and self.pipeline.tracker.duration is not None:
            self._close_labelled(partitions, now)
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
                "position": self.position, "late": self.late, "duplicates": self.duplicates,
                "labelled": [w.state_dict() for _s, w in sorted(self.labelled.items())],
                "labelled_arrived": [self.labelled_arrived.get(s) for s in sorted(self.labelled)],
                "label_marks": dict(self.label_marks), "label_counts": dict(self.label_counts),
                "label_seq": dict(self.label_seq), "labelled_until": _finite(self.labelled_until),
                "late_labelled": self.late_labelled}

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
        tracker = self.pipeline.tracker
        for ws, arrived in zip(state.get("labelled", []), state.get("labelled_arrived", [])):
            self.labelled[ws["start"]] = tracker.new_labelled(ws["start"]).load_state_dict(ws)
            self.labelled_arrived[ws["start"]] = arrived if arrived is not None else time.time()
        self.label_marks = dict(state.get("label_marks", {}))
        self.label_counts = dict(state.get("label_counts", {}))
        self.label_seq = dict(state.get("label_seq", {}))
        until = state.get("labelled_until")
        self.labelled_until = -math.inf if until is None else until
        self.late_labelled = state.get("late_labelled", 0)
        if tracker is not None and isinstance(tracker.join, _Totals):
            self._sum_counts()
        return self


#: changelog records a restore applies to its store at a time: what it holds in memory (see _Restore)
RESTORE_CHUNK = 10_000

#: While restores run, the consuming thread alternates a poll (timeout in ms) and a restore slice of at most these
#: seconds, by client (docs/DESIGN.md, "The other partitions during a restore"; bench/restore_share.py). With
#: librdkafka, which fetches on its own threads, short slices let the other partitions flow about 3x faster for
#: the same restore time; kafka-python reads the changelog on the consuming thread, so there they would cost the
#: restore about as much time as they give the other partitions.
RESTORE_SLICE_S = {"kafka-python": 0.5, "confluent-kafka": 0.1}
RESTORE_POLL_MS = {"kafka-python": 50, "confluent-kafka": 0}

#: Fences (``init_transactions``) run at once, each restore's on a thread of this pool and a producer of its own: a
#: fence is waiting for the transaction coordinator (0.06-0.5 s, about 1 s for the first ones of a process), so a
#: replica given several partitions fences them together, not one after another (docs/DESIGN.md, "Fences together";
#: bench/restore_fences.py).
FENCE_THREADS = 8


class _Restoring:
    """The positions the source seeks to on assignment (``get(key, default)``), restoring partitions new to
    this replica from the changelog first (see :meth:`Cluster.restore`)."""

    def __init__(self, cluster: "Cluster"):
        self.cluster = cluster

    def get(self, key: str, default=None):
        worker = self.cluster.worker
        topic = key.rsplit(":", 1)[0]
        if topic not in (worker.topic, worker.labels_topic):
            return default
        pair = worker.pair_key(key)
        part = worker.parts.get(pair) or worker.staged.get(pair)
        if part is None and pair not in worker.staged:
            self.cluster.begin_restore(pair)  # the source holds it paused (Cluster.held) until restored
            return default
        if part is None:
            return default
        return part.positions.get(key, default)


def _refused_what(line: str) -> str:
    """The resource and principal a refusal line names (:func:`monitor.kafka_client.refusal`), without the
    advice after them; the principal has a colon of its own ("User:name")."""
    return line.split(": grant ", 1)[0].removeprefix("Kafka refused ")


def _restore_who(key: str) -> str:
    """Who a refusal of partition ``key``'s restore belongs to (:meth:`Cluster._refuse`): each partition's
    restore waits out its own backoff."""
    return f"worker:{key}"


class _Restore:
    """One partition's restore from its join changelog: its fence (the partition's transactional id, taken by
    :meth:`Cluster._fence` on the fence pool, the fences of every restoring partition at once), then the read, run
    on the consuming thread a slice at a time (as Kafka Streams restores on its stream thread): read the
    changelog partition to its end, applying it to the partition's fresh store a chunk of
    :data:`RESTORE_CHUNK` records at a time in log order (a put writes or replaces the entry, a tombstone
    deletes it), so that its memory is one chunk's, not the partition's. Between slices the consumer polls
    (the partition paused), so the member keeps its place in the group however long the restore takes.

    Only the consuming thread advances or closes it; a revocation only marks it ``abandoned``.
    """

    def __init__(self, key: str, partition_log):
        self.key = key
        self.log = partition_log  # monitor.join_changelog.PartitionLog: fenced first, kept once installed
        self.fencing = None  # its fence on the pool (a Future: True when fenced, False when not let through yet)
        self.chunk: dict = {}  # prediction id -> entry or None (a tombstone), read and not yet in the store
        self.state: dict | None = None  # the last state record read so far
        self.records = 0  # changelog records read
        self.part: _PartitionPipeline | None = None  # the store being filled
        self.started = time.monotonic()
        self.abandoned = False  # revoked: close it, install nothing
        self._reader = None  # the changelog read (a generator, see PartitionLog.records)
        self.done = False

    @property
    def phase(self) -> str:
        return "read" if self.fenced else "fence"

    @property
    def fenced(self) -> bool:
        """The partition's transactional id is taken (the read can start)."""
        return self.log.producer is not None and (self.fencing is None or self.fencing.done())

    def advance(self, worker: Worker, deadline: float) -> bool:
        """Read until ``deadline`` (monotonic) or the end, once :attr:`fenced`; True when the partition is ready
        to install. Raises what the broker or the store raised (the caller gives the restore up)."""
        from monitor.join_changelog import take_change

        if self.done:
            return True
        if not self.fenced:
            raise ValueError(f"partition {self.key}: restore read before its fence")
        if self.part is None:
            self._reader = self.log.records()
            self.part = worker.new_part(self.key)  # a fresh store: the chunks in log order give the final state
            if time.monotonic() >= deadline:
                return False
        chunk, state, n = self.chunk, self.state, 0
        for record in self._reader:
            state = take_change(record, chunk, state)
            n += 1
            if n % 1000 == 0:
                if len(chunk) >= RESTORE_CHUNK:
                    worker.fill(self.part, chunk)
                    chunk.clear()
                if time.monotonic() >= deadline:
                    self.state, self.records = state, self.records + n
                    return False
        worker.fill(self.part, chunk)
        chunk.clear()
        self.state, self.records = state, self.records + n
        self._reader = None
        self.done = True
        return True

    @property
    def pending(self) -> int:
        """Entries in the store so far (when done: the partition's pending joins)."""
        return 0 if self.part is None or self.part.tracker is None else self.part.tracker.join.pending

    def status(self) -> dict:
        return {"partition": self.key, "phase": self.phase, "records_read": self.records,
                "entries": self.pending, "seconds": round(time.monotonic() - self.started, 1)}

    def close(self) -> None:
        """Give the restore up: the reader, the store being filled and the transactional producer (a fence still
        on the pool closes it when it ends)."""
        if self._reader is not None:
            self._reader.close()  # its finally closes the reading client
            self._reader = None
        if self.part is not None and self.part.tracker is not None:
            self.part.tracker.join.close()
            self.part = None
        if self.fencing is not None:
            self.fencing.add_done_callback(lambda _done: self.log.close())  # at once if it has ended
        else:
            self.log.close()


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
        self.join_topic = config.cluster.join_changelog_topic or f"{kafka.topic}.driftmon.{config.model}.join"
        self.worker = Worker(config, daemon.baseline, os.path.join(config.state.dir, "cluster-labels"))
        self.logs: dict = {}  # partition -> its changelog writer (monitor.join_changelog.PartitionLog; labels)
        self.rejoin = False  # a partition's state could not be restored or written: leave and rejoin the group
        # the daemon's source consumer (set by Daemon._connect, kept while it closes: its revoke callback cuts)
        self.source = None
        self.cuts = 0  # transactions written (labels)
        if self.worker.pairs:
            daemon.pipeline.tracker.join.close()
            daemon.pipeline.tracker.join = _Totals()  # the aggregator sums the partitions' counts
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
        # the aggregator's changelog writer, fenced at each take-over
        self._state_log = TransactionalWriter(kafka, self.changelog_topic, "aggregator state")
        self._consumer = None  # the aggregator group's member (kafka_client.make_group_consumer)
        self._last_commit = 0.0
        self.changelog_writes = 0
        self.partials_produced = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # A missing ACL (kafka_client.AuthorizationError), by who met it ("aggregator", "worker"): its one line,
        # and when to try again (monotonic; backoff 1 s doubling to 30 s). Not a fence: no rejoin.
        self.refusals: dict[str, str] = {}
        self.refused_attempts = 0  # refused take-overs and writes (each one retried after its backoff)
        # calls retried every second: each new error logged once, then the recovery
        self._partials_failures = RetryLog(log, f"partials not acknowledged by {self.partials_topic}, retrying: %s",
                                           f"partials acknowledged by {self.partials_topic} again after %d failed "
                                           "attempts", distinct=True)
        self._poll_failures = RetryLog(log, "aggregator poll failed, retrying: %s",
                                       "aggregator polls work again after %d failed attempts", distinct=True)
        self._backoff: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        # labels: partitions new to this replica whose state is being restored (paused meanwhile)
        self.restoring: dict[str, _Restore] = {}
        self._abandoned: list[_Restore] = []  # revoked while restoring: closed by the consuming thread
        self._resuming: dict[str, dict] = {}  # installed, not yet sought and resumed by the source
        self._restoring_lock = threading.Lock()  # the assignment callback runs on kafka-python's IO thread
        # the restores' fences, run together (FENCE_THREADS); a fence starts only for a partition the source holds
        # and is not leaving, and a revocation waits for those in flight (see _fence)
        self._fence_pool: ThreadPoolExecutor | None = None
        self._fence_gate = threading.Condition()
        self._fences_in_flight = 0
        self._left = None  # the source leaving the group (Daemon._rejoin, shutdown): none of its partitions fenced

    @property
    def refused(self) -> str | None:
        """The broker's refusal (a missing ACL) scale-out is retrying with backoff, or None (/readyz says it)."""
        refusals = dict(self.refusals)  # written by other threads
        return next(iter(refusals.values()), None)

    def _refuse(self, who: str, exc: AuthorizationError) -> None:
        """A missing ACL: logged once per change, on /readyz and /status, retried with backoff."""
        line = str(exc)
        if self.refusals.get(who) != line:
            log.error("%s; retrying with backoff, /readyz is 503 meanwhile", line)
        self.refusals[who] = line
        self.refused_attempts += 1
        self._backoff[who] = min(max(1.0, 2 * self._backoff.get(who, 0.0)), 30.0)
        self._retry_at[who] = time.monotonic() + self._backoff[who]

    def _accepted(self, who: str) -> None:
        line = self._forget_refusal(who)
        if line is not None:
            log.info("Kafka accepts the %s's transactions again (%s was refused before)", who.split(":", 1)[0],
                     _refused_what(line))

    def _forget_refusal(self, who: str) -> str | None:
        """Drop ``who``'s refusal and its backoff; returns its line, or None when it had none."""
        line = self.refusals.pop(who, None)
        self._backoff.pop(who, None)
        self._retry_at.pop(who, None)
        return line

    def _waiting(self, who: str) -> bool:
        """A refusal's backoff is not over yet."""
        return time.monotonic() < self._retry_at.get(who, 0.0)

    def status(self) -> dict:
        """The /status section (read without the lock: plain numbers)."""
        agg = self.aggregator
        out = {"aggregator": self.active, "refused": self.refused,
               "refused_attempts": self.refused_attempts, "partials_topic": self.partials_topic,
               "changelog_topic": self.changelog_topic, "partials_produced": self.partials_produced,
               "late_partials": agg.late, "duplicate_partials": agg.duplicates,
               "open_windows": len(agg.open), "changelog_writes": self.changelog_writes}
        if self.worker.pairs:
            with self._restoring_lock:
                restoring = [r.status() for _k, r in sorted(self.restoring.items())]
            out.update(join_changelog_topic=self.join_topic, join_transactions=self.cuts,
                       partitions_restored=self.worker.restored, late_performance_partials=agg.late_labelled,
                       open_performance_windows=len(agg.labelled), restoring_partitions=restoring)
        return out

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
        self._check_access([self.changelog_topic], [kafka.group_id, self.group_id],
                           [self.partials_topic, self.changelog_topic])  # before a client logs the refusals
        self._producer = make_producer(kafka, max_request_bytes=MAX_RECORD_BYTES, compression="gzip")
        self._consumer = make_group_consumer(kafka, self.group_id, [self.partials_topic],
                                             on_assign=self._assigned, on_revoke=self._revoked)
        self.partitions = self._consumer.partitions(kafka.topic)
        if kafka.labels_topic and self.worker.pairs:
            self._check_copartitioned(kafka.topic, kafka.labels_topic)
            if self.config.cluster.create_topics:
                self._create_join_topic()
            self._check_copartitioned(kafka.topic, self.join_topic, key="cluster.join_changelog_topic")
            # the partitions' transactional ids (monitor/join_changelog.py)
            self._check_access([f"{self.join_topic}.{p}" for p in range(self.partitions)], [], [self.join_topic])
        self._thread = threading.Thread(target=self._run, name="driftmon-aggregator", daemon=True)
        self._thread.start()
        log.info("scale-out: partials on %s (aggregator group %s), changelog %s, %d source partitions",
                 self.partials_topic, self.group_id, self.changelog_topic, self.partitions)

    def _check_access(self, ids: list[str], groups: list[str], topics: list[str]) -> None:
        """A transactional id, group or internal topic the principal may not use is a configuration error
        at start (one line naming it and the missing permission), not a fence at its first use."""
        try:
            check_access(self.config.kafka, ids, groups, topics)
        except AuthorizationError as exc:
            raise ConfigError("", str(exc)) from None
        except Exception as exc:  # not an answer (the broker is away): their first use tells, at run time
            log.warning("scale-out: the transactional ids, groups and topics not checked at start (%s: %s)",
                        type(exc).__name__, exc)

    def _create_topics(self) -> None:
        configs = {self.partials_topic: {"retention.ms": str(7 * 86400 * 1000)},
                   self.changelog_topic: dict(COMPACTED)}
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

    def _check_copartitioned(self, topic: str, other: str, key: str = "kafka.labels_topic") -> None:
        """The label join runs where the prediction's partition is: ``other`` must have ``topic``'s partitions."""
        theirs = self._consumer.partitions(other)
        if theirs != self.partitions:
            raise ConfigError(key, f"{other} has {theirs} partitions and {topic} has {self.partitions}: "
                              "scale-out joins labels where the prediction's partition is consumed, so both "
                              "must have the same partition count (and labels keyed by the prediction id)")

    def _create_join_topic(self) -> None:
        configs = dict(COMPACTED, **{"max.message.bytes": str(MAX_RECORD_BYTES)})
        try:
            created = create_topics(self.config.kafka, {self.join_topic: self.partitions},
                                    replication_factor=self.config.cluster.replication_factor,
                                    configs={self.join_topic: configs})
        except Exception as exc:  # e.g. no Create ACL: one line naming the key, exit 2
            raise ConfigError("cluster.create_topics", f"cannot create {self.join_topic} ({type(exc).__name__}: "
                              f"{exc}); create it (docs/helm.md, scale-out topics) and set create_topics: "
                              "false, or grant Create") from None
        for topic in created:
            log.info("created topic %s", topic)
        # a topic just created may be missing from the client's metadata for a moment
        deadline = time.monotonic() + 30
        while created and self._consumer.partitions(self.join_topic) != self.partitions and time.monotonic() < deadline:
            time.sleep(0.2)

    def close(self) -> None:
        self._stopping.set()
        for partition_log in self.logs.values():
            partition_log.close()
        self.logs = {}
        with self._restoring_lock:
            restores = list(self.restoring.values()) + self._abandoned
            self.restoring, self._abandoned = {}, []
        for restore in restores:
            restore.close()
        if self._fence_pool is not None:
            self._fence_pool.shutdown(wait=False, cancel_futures=True)  # one in flight closes its producer at its end
            self._fence_pool = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._consumer is not None:
            self._consumer.close(timeout_s=1.0)
            self._consumer = None
        if self._producer is not None:
            self._producer.close(timeout_s=1.0)
            self._producer = None
        self._state_log.close()

    # ---- work (under the daemon's lock) --------------------------------------------------------------

    def produce_partials(self) -> bool:
        """Produce pending partials and wait for the broker's acknowledgement; True when none is pending."""
        worker = self.worker
        if worker.pairs:
            return True  # written in the partitions' transactions (see cut)
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
            self._partials_failures.failed(exc)
            return False
        self._partials_failures.worked()
        self.partials_produced += len(worker.pending)
        worker.pending = []
        return True

    def commit(self, source, force: bool = False) -> None:
        """Commit the source offsets that every produced partial covers (throttled)."""
        now = time.monotonic()
        if not force and now - self._last_commit < self.config.kafka.commit_interval_seconds:
            return
        if self.worker.pairs:
            self.cut(list(self.worker.parts), force)
            self._last_commit = now
            return
        if not self.produce_partials():
            return  # the offsets wait for the partials they cover
        try:
            source.commit(self.worker.safe_offsets(), timeout_ms=10_000)
        except Exception as exc:  # a rebalance or an outage: the next owner re-reads; duplicates are dropped
            log.warning("offset commit failed: %s", exc)
        self._last_commit = now

    def before_revoke(self) -> dict[str, int]:
        if self.worker.pairs:
            # the source holds nothing now, so no fence starts; one in flight ends before the partitions go
            self.await_fences(self.config.kafka.session_timeout_ms / 2000)
            self.cut(list(self.worker.parts), force=True)
            return {}  # committed in the transactions
        if not self.produce_partials():
            return {}  # nothing safe to commit beyond the last commit
        return self.worker.safe_offsets()

    # ---- labels: a partition's state in Kafka (monitor/join_changelog.py) -----------------------------

    def cut(self, keys, force: bool = False) -> None:
        """Write each partition's changes since its last cut in one transaction (under the daemon's lock)."""
        worker = self.worker
        if self._waiting("worker"):
            return  # a refused transactional id: retried after its backoff
        for key in keys:
            part = worker.parts.get(key)
            if part is None or not part.dirty:
                continue
            partition_log = self.logs.get(key)
            if self.rejoin and (partition_log is None or partition_log.producer is None):
                # leaving the group (fenced, or a restore failed): taking the transactional id now could fence
                # the partition's new owner; nothing is lost (its next owner restores the last committed cut)
                continue
            try:
                if partition_log is None:
                    partition_log = self.logs[key] = self._partition_log(key)
                if partition_log.producer is None:
                    partition_log.fence()
                elif partition_log.in_doubt is not None:
                    self._settle(key, partition_log)
                partials, changes, state, offsets = worker.cut(key)
                partition_log.write(self.partials_topic, self.config.model.encode(), partials, changes, state,
                                    offsets)
            except FencedError as exc:
                worker.cut_failed(key)
                log.warning("fenced: another replica took over partition %s; rejoining the group (%s)", key, exc)
                self.rejoin = True
                return
            except AuthorizationError as exc:  # a missing ACL: no other owner, so no rejoin; written again later
                worker.cut_failed(key)
                self._refuse("worker", exc)
                return
            except Exception as exc:
                worker.cut_failed(key)
                if partition_log is not None and partition_log.in_doubt is not None:
                    # outcome unknown (e.g. this process was stopped inside the commit): the producer and its
                    # transaction are kept, the next cut finishes the commit on them (same epoch)
                    log.warning("partition %s: the transaction's %s timed out, finished at the next cut on the "
                                "same producer: %s", key, partition_log.in_doubt, exc)
                else:  # the broker is away, or the transaction was aborted: written again at the next cut
                    log.warning("partition %s: state not written to %s, retrying: %s", key, self.join_topic, exc)
                continue
            self._written(key, state["seq"])

    def _settle(self, key: str, partition_log) -> None:
        """Finish the last cut's commit that timed out, on the same producer: committed, it is done (the next
        cut holds only what came since); aborted, the next cut writes it again with what came since."""
        seq = self.worker.taken[key][0]
        if partition_log.settle():
            self._written(key, seq)
            log.info("partition %s: cut %d committed when its commit that timed out was finished", key, seq)
        else:
            log.info("partition %s: cut %d aborted when its transaction that timed out was finished; written "
                     "again", key, seq)

    def _written(self, key: str, seq: int) -> None:
        self.partials_produced += self.worker.cut_done(key, seq)
        self._accepted("worker")
        self.cuts += 1

    def _partition_log(self, key: str):
        from monitor.join_changelog import PartitionLog

        return PartitionLog(self.config.kafka, self.join_topic, int(key.rsplit(":", 1)[1]), self._group_metadata)

    def _group_metadata(self):
        """The source group's identity for committing its offsets in a transaction (see kafka_client)."""
        if self.source is None:
            raise ProduceError("no source consumer: the group's offsets cannot be committed")
        return self.source.group_metadata()

    def positions(self):
        """What the source seeks to on assignment: with labels, a partition new to this replica is recorded
        as restoring and held paused (:meth:`held`); the consuming thread restores it from its changelog
        (:meth:`restore_step`) and resumes it at its last cut's positions."""
        if not self.worker.pairs:
            return self.worker.positions()
        return _Restoring(self)

    def begin_restore(self, key: str) -> None:
        """Record a partition new to this replica as restoring (from the source's assignment callback: it
        returns at once; the consuming thread restores it in :meth:`restore_step`)."""
        with self._restoring_lock:
            if key not in self.restoring:
                self.restoring[key] = _Restore(key, self._partition_log(key))
                log.info("partition %s: restoring its state from %s (paused meanwhile)", key, self.join_topic)

    def held(self) -> set[str]:
        """The source partitions (prediction and label partition of each pair) kept paused: restoring."""
        with self._restoring_lock:
            keys = list(self.restoring)
        worker = self.worker
        out = set(keys)
        if worker.labels_topic:
            out |= {f"{worker.labels_topic}:{k.rsplit(':', 1)[1]}" for k in keys}
        return out

    def restore_step(self, source, budget_s: float) -> None:
        """Advance the restores for about ``budget_s`` seconds (on the consuming thread, between polls, without
        the daemon's lock): start the fences of every restoring partition at once on the fence pool, then read
        the fenced ones, each its share of the budget in turn so that a small partition is not held up behind a
        large one; install a finished one and resume its partitions at the restored positions."""
        self._resume(source)
        self._drop_abandoned()  # first: an abandoned restore's store is closed before its successor's opens
        with self._restoring_lock:
            restores = list(self.restoring.values())
        if not restores:
            return
        self._start_fences(restores)
        reading = []
        for restore in restores:
            if restore.abandoned or self._waiting(_restore_who(restore.key)):
                continue
            try:
                if restore.fencing is not None:
                    if not restore.fencing.done():
                        continue  # in flight: read once it is fenced
                    future, restore.fencing = restore.fencing, None
                    if not future.result():  # raises what the fence raised
                        continue  # not let through (the source did not hold the partition): started again
            except Exception as exc:
                self._restore_failed(restore, exc)
                continue
            if restore.fenced:
                reading.append(restore)
        for restore in reading:
            try:
                ready = restore.advance(self.worker, time.monotonic() + budget_s / len(reading))
            except Exception as exc:
                self._restore_failed(restore, exc)
                continue
            if ready:
                self._install(restore, source)
        self._drop_abandoned()

    def _restore_failed(self, restore: _Restore, exc: Exception) -> None:
        """A restore's fence or read failed: a refused id waits its backoff and restarts in place; anything else
        gives the partition up until the rejoin."""
        if isinstance(exc, AuthorizationError):
            # A missing ACL on the partition's transactional id: no other owner, so a rejoin cannot cure it
            # (and would restore every other partition again). The partition stays held (paused, nothing of
            # it read or committed) and its restore starts afresh after the backoff.
            self._refuse(_restore_who(restore.key), exc)
            restore.close()
            with self._restoring_lock:
                if self.restoring.get(restore.key) is restore:
                    self.restoring[restore.key] = _Restore(restore.key, self._partition_log(restore.key))
            return
        # the partition's records wait (see Worker.blocked) until the rejoin
        log.warning("partition %s: state not restored from %s (%s); rejoining the group", restore.key,
                    self.join_topic, exc)
        restore.close()
        with self.daemon.lock:
            with self._restoring_lock:
                if self.restoring.get(restore.key) is restore:
                    del self.restoring[restore.key]
                    self.worker.staged[restore.key] = None
                    self.rejoin = True

    # ---- the restores' fences, together on a pool -----------------------------------------------------

    def _start_fences(self, restores) -> None:
        """Start the fence of every restore not fenced yet whose partition the source holds (and whose refusal's
        backoff is over), all at once on the fence pool."""
        for restore in restores:
            if restore.fencing is not None or restore.log.producer is not None or restore.abandoned \
                    or self._waiting(_restore_who(restore.key)) or not self._holds(restore.key):
                continue
            if self._fence_pool is None:
                self._fence_pool = ThreadPoolExecutor(FENCE_THREADS, thread_name_prefix="driftmon-fence")
            restore.fencing = self._fence_pool.submit(self._fence, restore)

    def _holds(self, key: str) -> bool:
        """The source holds partition ``key`` and is not leaving the group (it clears what it holds when the
        partitions are revoked or lost, before the revocation callback)."""
        source = self.source
        return source is not None and source is not self._left \
            and any(partition_key(tp) == key for tp in source.assigned)

    def _fence(self, restore: _Restore) -> bool:
        """Take the partition's transactional id (on the fence pool), if it is still this replica's: a fence after
        the partition went could fence its new owner. Let through and counted in flight in one step under the gate,
        so that a revocation (the source cleared what it holds first) waits for it (:meth:`await_fences`). False
        when not let through (started again once the source holds the partition, or abandoned)."""
        with self._fence_gate:
            if restore.abandoned or not self._holds(restore.key):
                return False
            self._fences_in_flight += 1
        try:
            restore.log.fence()  # aborts the previous owner's open transaction, fences it
        finally:
            with self._fence_gate:
                self._fences_in_flight -= 1
                self._fence_gate.notify_all()
        return True

    def await_fences(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until no fence is in flight; False when one still is (logged)."""
        with self._fence_gate:
            if self._fence_gate.wait_for(lambda: self._fences_in_flight == 0, timeout_s):
                return True
        log.warning("a restore's fence still in flight after %.1f s while the partitions go", timeout_s)
        return False

    def leave(self, timeout_s: float) -> None:
        """The source is about to leave the group (a rejoin, a shutdown): no fence starts for its partitions from
        now on, and those in flight are waited for (at most ``timeout_s``) before it goes."""
        with self._fence_gate:
            self._left = self.source
        self.await_fences(timeout_s)

    def _install(self, restore: _Restore, source) -> None:
        """A finished restore becomes the partition's pipeline, if the partition is still this replica's."""
        worker, key = self.worker, restore.key
        with self.daemon.lock:
            with self._restoring_lock:
                current = self.restoring.get(key) is restore and not restore.abandoned
            if not current:
                restore.close()  # revoked meanwhile: nothing installed
                return
            self._accepted(_restore_who(key))
            part = worker.load(key, restore.part, restore.state)
            old = self.logs.pop(key, None)
            if old is not None:
                old.close()
            self.logs[key] = restore.log
            worker.staged[key] = part  # installed before its first record (Worker._part)
            with self._restoring_lock:
                del self.restoring[key]  # after staging: _Restoring.get always finds it in one of them
            label_key = f"{worker.labels_topic}:{key.rsplit(':', 1)[1]}" if worker.labels_topic else None
            positions = {k: part.positions.get(k) for k in (key, label_key) if k is not None}
            self._resuming[key] = positions
            self._resume(source)
        log.info("partition %s restored from %s in %.1f s: %d records, %d pending joins, resuming at %s", key,
                 self.join_topic, time.monotonic() - restore.started, restore.records, restore.pending,
                 restore.state["positions"] if restore.state else "the committed offsets")

    def _resume(self, source) -> None:
        """Seek and resume the installed partitions the source still holds paused (again after a poll if the
        client could not seek them yet)."""
        if source is None or not self._resuming:
            return
        for key, positions in list(self._resuming.items()):
            if source.resume_held(positions):
                del self._resuming[key]

    def _drop_abandoned(self) -> None:
        with self._restoring_lock:
            abandoned, self._abandoned = self._abandoned, []
        for restore in abandoned:
            restore.close()
            log.info("partition %s: restore abandoned (revoked) after %.1f s", restore.key,
                     time.monotonic() - restore.started)

    @property
    def restoring_work(self) -> bool:
        """Restores to advance, close or resume (the consuming thread polls briefly meanwhile)."""
        return bool(self.restoring or self._abandoned or self._resuming)

    @property
    def restore_slice_s(self) -> float:
        """The restores' share of the consuming thread between two polls (far below ``max_poll_interval_ms``)."""
        return min(RESTORE_SLICE_S[self.config.kafka.client], self.config.kafka.max_poll_interval_ms / 5000)

    @property
    def restore_poll_ms(self) -> int:
        """The poll timeout between restore slices; 50 ms while no restore has anything to read (every one waits
        for its fence, or out a refusal's backoff: a poll without a timeout would then spin)."""
        with self._restoring_lock:
            restores = list(self.restoring.values())
        if restores and not any(r.fenced and not self._waiting(_restore_who(r.key)) for r in restores):
            return 50
        return RESTORE_POLL_MS[self.config.kafka.client]

    @property
    def restoring_partitions(self) -> list[str]:
        with self._restoring_lock:
            return sorted(self.restoring)

    def rejoin_due(self) -> bool:
        """A rejoin is wanted and not held back by a refusal's backoff (a missing ACL is not cured by rejoining
        at once: the rejoin that retries it comes after the backoff)."""
        return self.rejoin and not self._waiting("worker")

    def release(self, keys) -> None:
        """Partitions gone to another replica: forget their state and their changelog writers; a restore of
        one of them is abandoned (closed by the consuming thread, never installed)."""
        self.worker.release(keys)
        for key in {self.worker.pair_key(k) for k in keys} if self.worker.pairs else ():
            # a refused restore of it: its new owner's to retry, no longer this replica's
            self._forget_refusal(_restore_who(key))
            partition_log = self.logs.pop(key, None)
            if partition_log is not None:
                partition_log.close()
            self._resuming.pop(key, None)
            with self._restoring_lock:
                restore = self.restoring.pop(key, None)
                if restore is not None:
                    restore.abandoned = True
                    self._abandoned.append(restore)

    def step(self, now: float) -> list[dict]:
        """Produce the worker's partials; as the aggregator, close the windows whose grace is over."""
        self.produce_partials()
        return self.aggregator.close(self.partitions, now) if self.active else []

    def tick(self, now: float, idle: bool) -> list[dict]:
        source = self.daemon.source
        # only partitions this replica holds: one it lost (a stall past the session timeout) has another owner
        owned = {partition_key(tp) for tp in source.assigned} if source is not None else set()
        self.worker.tick(now, idle, owned)
        return self.step(now)

    def _run(self) -> None:
        """The aggregator group member (its own thread: its polls must not slow down the worker's)."""
        daemon = self.daemon
        while not self._stopping.is_set():
            try:
                records = self._consumer.poll(timeout_ms=500, max_records=500)
            except Exception as exc:  # the broker is down: the worker's health reports it; try again
                self._poll_failures.failed(exc)
                self._stopping.wait(1.0)
                continue
            self._poll_failures.worked()
            state = None
            if self._retake_at is not None and time.monotonic() >= self._retake_at:
                self._retake_at = None
                self.restore_needed = self.assigned and not self.active
            if self.restore_needed:
                records = []  # re-read from the restored position
                if self._waiting("aggregator"):
                    continue  # a refused transactional id: taken over after the backoff (the polls go on)
                try:  # outside the lock: the worker goes on meanwhile
                    state = self._fence_and_read()
                except AuthorizationError as exc:  # a missing ACL: not a fence, retried with backoff
                    self._refuse("aggregator", exc)
                    continue
                except Exception as exc:  # the broker is away: try again on the next poll
                    log.warning("aggregator take-over failed, retrying: %s", exc)
                    self._stopping.wait(1.0)
                    continue
                self._accepted("aggregator")
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
        state_log = self._state_log
        try:
            # the last commit timed out: finish it first (same epoch)
            if state_log.in_doubt is not None and state_log.settle():
                self.changelog_writes += 1  # superseded by the state below
            key = self.config.model.encode()
            if not state_log.transact(lambda producer: producer.send(self.changelog_topic, value, key=key)):
                raise ProduceError("the transaction failed and was aborted")
        except FencedError:
            log.warning("fenced: another replica took over as the aggregator for %s", self.config.model)
            self._resign()
            # Still ours by the group's last word? Take over again once the group had time to settle (the
            # replica that fenced us may be a stalled one that is about to learn it lost the partition).
            self._retake_at = time.monotonic() + self.config.kafka.session_timeout_ms / 1000
            return False
        except Exception as exc:  # nothing is emitted until the state is durable
            if state_log.in_doubt is not None:
                # outcome unknown (e.g. this process was stopped inside the commit): the producer and its
                # transaction are kept, the next checkpoint finishes the commit on them (same epoch)
                log.warning("aggregator state: the transaction's %s timed out, finished at the next checkpoint "
                            "on the same producer: %s", state_log.in_doubt, exc)
                return False
            if state_log.producer is not None:  # aborted on the same producer: written again
                log.warning("aggregator state not written to %s, retrying: %s", self.changelog_topic, exc)
                return False
            if isinstance(exc, AuthorizationError):  # a missing ACL (the take-over below retries with backoff)
                self._refuse("aggregator", exc)
            else:
                log.warning("aggregator state not written to %s: %s", self.changelog_topic, exc)
            # The producer is unusable: take over afresh (a new epoch aborts its transaction, and the state is
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
        self._state_log.fence()  # a new epoch each take-over, even of our own partition
        return self._read_changelog()

    def _restore(self, state: dict | None) -> None:
        """Take over as the aggregator: the state of the last changelog record, then the partials after it."""
        self.restore_needed = False
        daemon = self.daemon
        daemon._outgoing = None  # whatever this replica evaluated before is superseded by the changelog's state
        # this replica's own source positions (the worker's): the consumer lag is measured from them
        positions = dict(daemon.pipeline.positions)
        if state is None:  # nothing was ever committed, so nothing was emitted: start as the first aggregator did
            self.aggregator._reset()
            state = self._fresh
            daemon.pipeline.load_state_dict({**state["pipeline"], "positions": positions,
                                             "window": daemon.pipeline._new_window(0).state_dict()})
            daemon.alerts.load_state_dict(state["alerts"])
            self._consumer.seek(self.partials_topic, 0, None)  # from the beginning
            state = None
        else:
            self.aggregator.load_state_dict(state["aggregator"])
            daemon.pipeline.load_state_dict({**state["pipeline"], "positions": positions,
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
        self._state_log.close()
        self.daemon.pipeline.last_result = None  # the global metrics are exported by the aggregator only
        log.info("no longer the aggregator for %s", self.config.model)
