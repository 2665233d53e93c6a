"""The long-running daemon: Kafka -> pipeline -> checkpoints, metrics, alerts."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sqlite3
import threading
import time
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

from monitor import __version__
from monitor.alerting import window_end_seconds
from monitor.baseline import Baseline
from monitor.config import Config, ConfigError
from monitor.deadletter import DeadLetters
from monitor.durability import CheckpointPolicy
from monitor.health import BrokerHealth
from monitor.join import StoreError
from monitor.metrics import DriftmonCollector, make_registry
from monitor.outbox import Outbox
from monitor.pipeline import Pipeline
from monitor.replay import advance_alerts, alert_engine
from monitor.server import HttpServer
from monitor.sinks import Dispatcher
from monitor.kafka_client import KafkaSource, make_source
from monitor.state import StateStore, WriteRetry
from monitor.view import ServiceView

__all__ = ["Daemon", "GC_GEN0_THRESHOLD", "streaming_gc"]

#: Each batch allocates hundreds of thousands of short-lived, acyclic objects (records, structs); at the
#: default generation-0 threshold (700) the cyclic collector runs hundreds of times a second for nothing.
#: This threshold costs no memory here (RSS stays flat over millions of messages) and ~25% throughput back.
GC_GEN0_THRESHOLD = 100_000


@contextlib.contextmanager
def streaming_gc():
    """Run a block with the daemon's garbage-collector setting (for benchmarks and embedding)."""
    old = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)

log = logging.getLogger(__name__)

#: From SIGTERM to exit: the final checkpoint, commit and closes share this budget (Kubernetes waits 30 s
#: by default before SIGKILL; a broker that is down must not use it up).
STOP_SECONDS = 4.5


class Daemon:
    """Consume, window, evaluate, checkpoint, serve.

    The consuming loop owns the Kafka consumer. Periodic work (checkpoints,
    the broker probe that also measures the consumer lag, closing idle time
    windows) runs as APScheduler jobs on their own threads and takes the
    pipeline lock only for in-memory work. When state is durable and which
    offsets are committed is :attr:`policy`
    (:class:`~monitor.durability.CheckpointPolicy`). The HTTP server and the
    Prometheus collector see only :attr:`view` (:class:`~monitor.view.ServiceView`);
    its handlers take no lock: they read the view's snapshot (replaced whole
    after every batch) and :attr:`health`.

    Parameters
    ----------
    config : Config
    baseline : Baseline
    """

    def __init__(self, config: Config, baseline: Baseline):
        _check_state_dir(config.state.dir)
        self.config = config
        self.baseline = baseline
        self.model = config.model
        self.version = __version__
        self.pipeline = Pipeline(config, baseline, background=True)
        self.store = StateStore(config.state.dir, baseline.fingerprint)
        self.policy = CheckpointPolicy(self.store, config.kafka.commit_interval_seconds if config.kafka else 1.0)
        # starts_at/ends_at on the wall clock, as Prometheus sends them (the lifecycle runs on the windows)
        self.alerts = alert_engine(config, baseline, clock=time.time)
        alerts_cfg = config.alerts
        self.outbox = Outbox(os.path.join(config.state.dir, "outbox.sqlite"), alerts_cfg.outbox.max_pending)
        self.dispatcher = Dispatcher(alerts_cfg.all_sinks(), self.outbox, config.kafka,
                                     alerts_cfg.outbox.backoff_initial_seconds,
                                     alerts_cfg.outbox.backoff_max_seconds)
        self._outgoing: dict | None = None  # closed windows not yet emitted (see _handle)
        # failed writes of the state directory (a full or read-only disk), counted and retried with backoff
        self.writes = {"checkpoint": self.policy.retry, "window_log": WriteRetry("the window log"),
                       "outbox": self.outbox.writes}
        self.labels_path = None  # pending label joins on disk (monitor/join.py), when labels have a topic
        self.rewind = False  # the label join store failed a write: back to the last durable checkpoint (see _recover)
        self.paused = False  # consumption paused until closed windows are durable and emitted
        self.listeners = []  # callables(result), e.g. the demo's live display
        self.last_window_end: float | None = None
        if self.pipeline.tracker is not None and config.labels_on_topic and not config.cluster.enabled:
            self.labels_path = os.path.join(config.state.dir, "labels")
            self.writes["labels"] = WriteRetry("the label join store")
            self.pipeline.tracker.join.open(self.labels_path)
        self.cluster = None
        if config.cluster.enabled:  # scale-out: state lives in Kafka (monitor/cluster.py), not in a checkpoint
            from monitor.cluster import Cluster

            self.cluster = Cluster(self)
        self._restore(self.store.load() if self.cluster is None else None)
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.config_hash = config.hash()
        kafka = config.kafka
        servers = ",".join(kafka.bootstrap_servers) if kafka and not isinstance(kafka.bootstrap_servers, str) \
            else (kafka.bootstrap_servers if kafka else "")
        self.health = BrokerHealth(kafka.unavailable_after_seconds if kafka else 30.0, servers)
        self.policy.durable_positions = dict(self.pipeline.positions)  # restored: durable already
        self.consuming = False
        self.idle = False
        self.view = ServiceView(self)
        self.registry, self.batch_seconds = make_registry(self.model, DriftmonCollector(self.view))
        self.http = HttpServer(self.view, config.http.host, config.http.port, config.http.web_config_file,
                               request_timeout=config.http.request_timeout_seconds,
                               max_connections=config.http.max_connections)
        self.source: KafkaSource | None = None
        kafka = config.kafka
        self.dead_letters = DeadLetters(kafka) if kafka is not None and kafka.dead_letter_topic else None
        self.scheduler: BackgroundScheduler | None = None
        self._gc_thresholds: tuple | None = None
        self._topic_missing_logged = False  # the missing-topic warning is logged once per stretch
        self._publish()

    @property
    def lag(self) -> dict[int, int]:
        """Partition -> consumer lag from the last broker probe; empty while it cannot be measured."""
        return self.health.lag

    # ---- what the view reads (monitor/view.py), and the names tests and tools know -----------------

    @property
    def checkpoints(self) -> int:
        return self.policy.checkpoints

    @property
    def _changed(self) -> bool:  # state changed since the last snapshot
        return self.policy.changed

    @_changed.setter
    def _changed(self, value: bool) -> None:
        self.policy.changed = value

    @property
    def _durable_positions(self) -> dict[str, int]:
        return self.policy.durable()

    @property
    def snapshot(self) -> dict:
        return self.view.snapshot

    def alert_stats(self) -> dict:
        return self.view.alert_stats()

    def state_health(self) -> dict:
        return self.view.state_health()

    def ready(self) -> tuple[bool, str]:
        return self.view.ready()

    def status(self) -> dict:
        return self.view.status()

    def report(self, query: str = "") -> tuple[int, bytes]:
        return self.view.report(query)

    def _publish(self) -> None:
        self.view.publish()

    # ---- work ----------------------------------------------------------------------------------

    def _handle(self, results: list[dict]) -> None:
        """Make closed windows durable, then emit them.

        The windows and their notifications go into a checkpoint together with the state that
        follows them (a transactional outbox): a crash after the checkpoint re-emits them on restart
        (the window log and the outbox drop the duplicates), and a crash before it re-reads their
        events from the previous checkpoint's offsets. No window is ever emitted that a restart could
        evaluate differently, so nothing is counted twice or lost.
        """
        performance = self.pipeline.take_performance()
        if results or performance:
            notes = advance_alerts(self.alerts, results, performance)
            pending = self._outgoing or {"windows": [], "performance": [], "notifications": []}
            self._outgoing = {"windows": pending["windows"] + results,
                              "performance": pending["performance"] + performance,
                              "notifications": pending["notifications"] + notes}
            self._changed = True
        if self._outgoing is not None and self.checkpoint():
            self._emit_pending()

    def _restore(self, restored: dict | None) -> None:
        """Load a checkpoint into the pipeline and the alerts (at start, and when the label join store is
        rewound to the last durable one, see :meth:`_recover`); the windows it holds unemitted are emitted."""
        if restored is None:
            return
        self.pipeline.load_state_dict(restored["pipeline"])
        self.alerts.load_state_dict(restored["alerts"])
        if self.pipeline.last_result is not None:
            self.last_window_end = window_end_seconds(self.pipeline.last_result)
        if restored.get("outgoing"):
            self._outgoing = restored["outgoing"]  # the crash came between checkpoint and emission
            self._emit_pending()
        log.info("restored checkpoint: window %d with %d events, positions %s",
                 self.pipeline.window.index, self.pipeline.window.events, self.pipeline.positions)

    def _store_failed(self, exc: StoreError) -> None:
        """The label join store refused a write (a full disk): RocksDB refuses every later one until it is
        reopened, and the pipeline's state no longer matches it. Counted; from now on nothing is processed
        or checkpointed (nothing is committed past the last durable checkpoint) until :meth:`_recover`.
        Takes no lock: it runs under the pipeline lock or the checkpoint's save lock."""
        if not self.rewind:
            self.writes["labels"].failed(exc)
        self.rewind = True

    def _recover(self) -> None:
        """Rewind to the last durable checkpoint once the label join store opens again (retried with backoff).

        As a restart would: the store is reopened and rolled back to the checkpoint's epoch, the pipeline
        and the alerts are loaded from the checkpoint, and a new consumer seeks to its positions. The
        records read since then are read again (their dead letters are sent again) and counted once: the
        windows closed since were never emitted (no checkpoint was durable to emit them).
        """
        retry = self.writes["labels"]
        if not retry.due():
            return
        with self.lock, self.policy.holding():  # no checkpoint is written while the one on disk is loaded
            try:
                restored = self.store.load()
                consumed, invalid, late = self.pipeline.consumed, self.pipeline.invalid, self.pipeline.late
                if restored is None:  # no checkpoint yet: a fresh start, as a restart would make
                    self.pipeline.tracker.join.close()
                    self.pipeline = Pipeline(self.config, self.baseline, background=True)
                    self.alerts.load_state_dict({"states": {}, "recent": []})
                    self.last_window_end = None
                self.pipeline.consumed, self.pipeline.invalid, self.pipeline.late = consumed, invalid, late
                self.pipeline.performance = []
                self._outgoing = None
                self.pipeline.tracker.join.open(self.labels_path)  # closes the failed one
                self._restore(restored)
                if restored is None:
                    self.pipeline.tracker.join.expire()  # clears the store no checkpoint names
            except StoreError as exc:
                retry.failed(exc)
                return
            retry.ok()
            self.rewind = False
            self.policy.restored(self.pipeline.positions)
            self._publish()
        log.warning("label join store reopened and rolled back to the last durable checkpoint: reading again "
                    "from %s", self.pipeline.positions)
        source, self.source = self.source, None
        source.close(timeout_s=2.0)
        self.consuming = False
        self._connect()  # the new consumer seeks to the checkpoint's positions (see KafkaSource.on_assigned)

    def _emit_pending(self) -> bool:
        """Emit the closed windows held in ``_outgoing`` (a checkpoint holding them is durable).

        A full disk can fail the outbox or the window log: the windows stay pending (consumption is
        paused meanwhile, see :meth:`_consume_once`) and are emitted again later; both drop what they
        already have, so a retry writes nothing twice. Returns True when nothing is pending.
        """
        out = self._outgoing
        if out is None:
            return True
        if not (self.writes["window_log"].due() and self.outbox.writes.due()):
            return False
        try:
            self.dispatcher.submit(out["notifications"])
        except sqlite3.Error:
            return False  # counted by the outbox
        try:
            self._log_windows(out)
        except OSError as exc:
            self.writes["window_log"].failed(exc)
            return False
        if out["windows"] or out["performance"]:
            self.writes["window_log"].ok()
        self._outgoing = None
        self._changed = True  # the next checkpoint no longer carries them
        for result in out["windows"]:
            for listener in self.listeners:
                listener(result)
        return True

    def _log_windows(self, outgoing: dict) -> None:
        for result in outgoing["performance"]:
            self.store.log_window(result, "performance")
        for result in outgoing["windows"]:
            self.store.log_window(result)
            self.last_window_end = window_end_seconds(result)

    def checkpoint(self, force: bool = False) -> bool:
        """Make the state as of this call durable (see :meth:`CheckpointPolicy.checkpoint`); True when it is."""
        if self.cluster is not None:
            self._settle_dead_letters()
            with self.lock:
                return self.cluster.checkpoint(force)
        if self.rewind:
            return False  # the state in memory is not the store's: only the one on disk is
        try:
            return self.policy.checkpoint(self.lock, self._snapshot, force, before=self._dead_letter_mark,
                                          on_durable=self._durable)
        except StoreError as exc:  # the label join store's commit (taken with the snapshot)
            self._store_failed(exc)
            return False

    def _snapshot(self) -> tuple[dict, dict]:
        if self.rewind:  # failed after checkpoint() looked, before the snapshot took the lock
            raise StoreError("the label join store waits to be rolled back")
        state = {"pipeline": self.pipeline.state_dict(), "alerts": self.alerts.state_dict(),
                 "outgoing": self._outgoing}
        return state, dict(state["pipeline"]["positions"])

    def _dead_letter_mark(self):
        """Under the lock, with the snapshot: the wait for the dead letters of the records it covers. They are
        acknowledged (or counted failed or unconfirmed) before it is written; a crash re-reads, and re-sends,
        whatever comes after it. Callers that hold the lock settle them first (:meth:`_settle_dead_letters`)."""
        if self.dead_letters is None:
            return None
        mark = self.dead_letters.enqueued
        return lambda: self.dead_letters.wait(mark)

    def _settle_dead_letters(self, timeout: float | None = None) -> None:
        """Wait, without the lock, for the dead letters in flight, before a checkpoint taken under the lock."""
        if self.dead_letters is not None and self.dead_letters.pending:
            self.dead_letters.wait(self.dead_letters.enqueued, timeout)

    def _durable(self, state: dict) -> None:
        if state["pipeline"].get("performance"):  # the label join's undo records this covers can go
            try:
                self.pipeline.tracker.join.durable(state["pipeline"]["performance"]["join"])
            except StoreError as exc:  # the checkpoint is durable; the store is rolled back to it
                self._store_failed(exc)

    def _probe(self) -> None:
        """Ask the broker for the end offsets: proves it answers, and gives the consumer lag."""
        source = self.source
        if source is None or not self.health.connected:
            return
        # Not under the lock: scale-out commits and transactions hold it for up to their timeouts while the broker
        # is down, which kept the probe from saying so (ready for 40 s of outage). A copy of a dict of str -> int
        # is one step under the GIL.
        positions = dict(self.pipeline.positions)
        try:
            lag, caught_up = source.probe(positions, self._probe_timeout_ms)
        except Exception as exc:  # the broker is down or slow: say so, never kill the job
            self.health.probe_failed(f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])
            return
        missing = getattr(source, "topic_missing", False)
        if missing and not self._topic_missing_logged:
            log.warning("kafka: topic %s does not exist on %s (check kafka.topic); waiting for it",
                        self.config.kafka.topic, self.health.servers)
        self._topic_missing_logged = missing
        self.health.probe_succeeded(lag, caught_up)

    def _tick(self) -> None:
        if self.cluster is not None:
            if self.source is not None and self._outgoing is None:
                with self.lock:
                    self._handle(self.cluster.tick(time.time(), self.idle))
                    self._publish()
            return
        if not self.idle or self._outgoing is not None or self.rewind:
            return
        self._settle_dead_letters()  # (the consuming loop is idle: it is not producing more meanwhile)
        with self.lock:
            if self.rewind:
                return
            try:
                results = self.pipeline.tick(time.time())
            except StoreError as exc:
                self._store_failed(exc)
                return
            self._handle(results)
            self._publish()

    def _resend(self, sink_name: str) -> None:
        if self.cluster is not None and not self.cluster.active:
            return  # the aggregator alone owns the alert lifecycle
        with self.lock:  # a consistent view: no window is half-applied, and later notifications supersede it
            self.dispatcher.refresh(sink_name, self.alerts.active())

    def _consume_once(self) -> None:
        if self.rewind:
            self._recover()
            if self.source is None:
                return  # stopping while it reconnected
        if self._outgoing is not None and not self.rewind:  # closed windows wait for a durable checkpoint
            self._settle_dead_letters()
            with self.lock:
                self._handle([])  # tries the checkpoint and the emission again, with backoff
        if self.cluster is not None and self.cluster.rejoin_due():
            self._rejoin()
            if self.source is None:
                return  # stopping while it reconnected
        self._pause(self._outgoing is not None or self.rewind)
        restoring = self.cluster is not None and self.cluster.restoring_work
        batches = self.source.poll(timeout_ms=self.cluster.restore_poll_ms if restoring else 500)
        if self.source.assigned or self.source.rebalances:  # joined the group: an idle member is ready too
            self.consuming = True
        self.idle = not batches
        if batches:
            self.health.records_received()
            self._process(batches)
        if self.cluster is not None:
            if self.cluster.restoring_work:  # partitions new to this replica, paused: restored between polls
                self.cluster.restore_step(self.source, self.cluster.restore_slice_s)
            self._settle_dead_letters()  # the offsets committed below cover their records
            with self.lock:
                self._handle(self.cluster.step(time.time()))
                self._publish()
                self.cluster.commit(self.source)
            return
        if self.policy.commit_due():
            self.checkpoint()
            self._commit()

    def _rejoin(self) -> None:
        """Scale-out with labels: a partition's state could not be restored, or another replica fenced this
        one's writes. Leave the group without committing, forget every partition, and join again: each
        partition assigned then is restored from its changelog (monitor/join_changelog.py)."""
        log.warning("leaving the consumer group to restore the partitions' state from %s", self.cluster.join_topic)
        source, self.source = self.source, None
        self.cluster.leave(self.config.kafka.session_timeout_ms / 2000)  # no restore's fence after it left
        source.close(timeout_s=2.0)
        with self.lock:
            self.cluster.rejoin = False
            self.cluster.release(list(self.cluster.worker.parts) + list(self.cluster.worker.staged)
                                 + self.cluster.restoring_partitions)
        self.consuming = False
        self._connect()

    def _pause(self, paused: bool) -> None:
        """Pause consumption while closed windows cannot be made durable: memory stays bounded (the open
        window's state; no new window closes) and nothing is lost (nothing is committed past the last
        durable checkpoint). The membership stays (poll() goes on), and consumption resumes by itself."""
        if paused != self.paused:
            self.paused = paused
            if paused:
                failing = next((r for r in self.writes.values() if r.failing), None)
                log.error("consumption paused: %s cannot be written (%s)", failing.target if failing else
                          "the state", failing.last_error if failing else "closed windows wait")
            else:
                log.warning("consumption resumed: the state directory is writable again")
        self.source.pause(paused)

    def _process(self, batches) -> None:
        started = time.perf_counter()
        labels_topic = self.config.kafka.labels_topic
        for pb in batches:
            with self.lock:
                if self.rewind:
                    break  # the rest of the poll is read again from the last durable checkpoint (see _recover)
                if not self.source.owns(pb):
                    continue  # revoked since the poll: its next owner reads it (see KafkaSource.owns)
                if self.cluster is not None and self.cluster.worker.blocked(self.cluster.worker.pair_key(pb.key)):
                    continue  # its state could not be restored: read again after the rejoin
                if self.cluster is not None and labels_topic and pb.topic == labels_topic:
                    batch = self.cluster.worker.process_labels(pb.key, pb.values, pb.times, pb.offsets)
                    self.pipeline.consumed += len(pb.values)  # the replica's own message counts
                    self.pipeline.invalid.update(batch.invalid)
                    self.pipeline.positions[pb.key] = int(pb.offsets[-1]) + 1
                    results = []
                elif self.cluster is not None and pb.topic == self.config.kafka.topic:
                    late = self.cluster.worker.late
                    batch = self.cluster.worker.process(pb.key, pb.values, pb.times, pb.offsets)
                    pipeline = self.pipeline  # the replica's own message counts (the aggregator's are global)
                    pipeline.late += self.cluster.worker.late - late
                    pipeline.consumed += len(pb.values)
                    pipeline.invalid.update(batch.invalid)
                    pipeline.positions[pb.key] = int(pb.offsets[-1]) + 1
                    results = []
                else:
                    try:
                        if labels_topic and pb.topic == labels_topic:
                            batch = self.pipeline.process_labels(pb.values, pb.times, pb.key, pb.offsets)
                            results = []
                        else:
                            results, batch = self.pipeline.process(pb.values, pb.times, pb.key, pb.offsets)
                    except StoreError as exc:  # a full disk: the pipeline is rewound, this batch read again
                        self._store_failed(exc)
                        self._publish()
                        break
                if batch.rejected and self.dead_letters is not None:
                    self.dead_letters.put(  # never blocks: sent on their own thread
                        [(pb.values[i], reason, f"{pb.key}:{int(pb.offsets[i])}") for i, reason in batch.rejected])
                self._changed = True
                closing = results or self.pipeline.performance or self._outgoing is not None
                if not (closing and self.dead_letters is not None and self.dead_letters.pending):
                    self._handle(results)  # in the same hold of the lock, as without dead letters
                    self._publish()
                    continue
            # A window closed with dead letters in flight: its checkpoint waits for them, not under the lock.
            self._settle_dead_letters()
            with self.lock:
                self._handle(results)
                self._publish()
        self.batch_seconds.labels(self.model).observe(time.perf_counter() - started)

    def _commit(self, timeout_ms: int = 1500) -> None:
        # Short: a commit takes milliseconds when the broker is up, and one in flight when SIGTERM comes
        # is part of the 5 s budget to exit; a failed commit is retried at the next interval.
        # the broker down: a commit would only wait; the next one after it is back covers these
        reachable = self.health.up or self.health.last_contact is None
        self.policy.commit(self.source, timeout_ms, reachable)

    def _before_rebalance(self, keys: list[str]) -> dict[str, int]:
        """Checkpoint what is processed; the source commits the returned durable offsets before the
        partitions go, so their next owner neither counts those events again nor skips any."""
        if self.cluster is not None:
            with self.lock:
                return self.cluster.before_revoke()
        self.checkpoint(force=True)
        return self.policy.durable()

    def _release(self, keys: list[str]) -> None:
        """Forget the positions of partitions another member now owns (their committed offset rules)."""
        with self.lock:
            for key in keys:
                self.pipeline.positions.pop(key, None)
            if self.cluster is not None:
                self.cluster.release(keys)
            self._changed = True
        log.info("partitions handed over to another member: %s", sorted(keys))

    def install_signal_handlers(self) -> None:
        def stop(signum, _frame):
            log.info("received %s: draining and stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def start(self) -> "Daemon":
        """Start the HTTP server, the scheduled jobs and the Kafka consumer (not the loop).

        A broker that cannot be reached is retried with backoff (a log line each time, /readyz 503)
        until it answers or the daemon is stopped; settings the client refuses raise ConfigError.
        """
        kafka = self.config.kafka
        if kafka is None:
            raise ConfigError("kafka", "the daemon needs a kafka section")
        try:
            self.http.start()
        except OSError as exc:
            raise ConfigError("http.port", f"cannot listen on {self.config.http.host}:{self.config.http.port}: "
                                           f"{exc.strerror or exc}") from None
        log.info("serving /metrics /healthz /readyz /status on port %d", self.http.port)
        self._gc_thresholds = gc.get_threshold()
        gc.set_threshold(GC_GEN0_THRESHOLD, *self._gc_thresholds[1:])  # see GC_GEN0_THRESHOLD
        self.dispatcher.start()
        if self.dead_letters is not None:
            self.dead_letters.start()
        unavailable = kafka.unavailable_after_seconds
        # Probe often enough that an outage is seen well within `unavailable_after`.
        probe_every = min(kafka.lag_interval_seconds, unavailable / 3)
        self._probe_timeout_ms = int(max(1.0, min(5.0, probe_every)) * 1000)
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.scheduler.add_job(self.checkpoint, "interval", id="checkpoint",
                               seconds=self.config.state.checkpoint_interval_seconds)
        self.scheduler.add_job(self._probe, "interval", id="broker-probe", seconds=probe_every)
        if self.config.window.duration is not None:
            self.scheduler.add_job(self._tick, "interval", id="close-time-windows", seconds=1)
        for sink in self.config.alerts.all_sinks():
            if sink.type == "alertmanager":  # keep active alerts active, whether or not windows close
                self.scheduler.add_job(self._resend, "interval", id=f"alertmanager-resend-{sink.name}",
                                       args=[sink.name], seconds=sink.alertmanager_resend_seconds,
                                       next_run_time=datetime.now(timezone.utc))
        self.scheduler.start()
        self._connect()
        if self.cluster is not None and self.source is not None:
            self.cluster.start()
        return self

    def _connect(self) -> None:
        """Create the consumer, retrying with backoff (1 s doubling to 30 s) while the broker is unreachable.

        Each attempt runs on a helper thread so that SIGTERM is honoured at once, whatever the client
        is waiting for.
        """
        kafka = self.config.kafka
        backoff = 1.0
        while not self.stopping.is_set():
            positions = self.cluster.positions if self.cluster is not None else \
                (lambda: dict(self.pipeline.positions))
            source = make_source(kafka, positions, on_revoke=self._before_rebalance,
                                 on_release=self._release,
                                 held=self.cluster.held if self.cluster is not None else None)
            if self.cluster is not None:
                self.cluster.source = source  # its group metadata commits the offsets in the cuts' transactions
            outcome: dict = {}

            def attempt():
                try:
                    outcome["source"] = source.start(bootstrap_timeout_ms=5000)
                except BaseException as exc:  # reported below, on the main thread
                    outcome["error"] = exc

            helper = threading.Thread(target=attempt, name="driftmon-kafka-connect", daemon=True)
            helper.start()
            while helper.is_alive() and not self.stopping.is_set():
                helper.join(0.1)
            if self.stopping.is_set():
                return  # the helper is a daemon thread: it cannot hold up exit
            if "source" in outcome:
                self.source = source
                self.health.bootstrapped()
                log.info("kafka: connected to %s, subscribed to %s", self.health.servers, kafka.topic)
                return
            exc = outcome["error"]
            if isinstance(exc, ConfigError):  # e.g. a TLS certificate or password the broker refuses, or settings
                raise exc  # the client library refuses
            self.health.error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            log.warning("kafka: cannot reach %s (%s); retrying in %.0f s (/readyz is 503 meanwhile)",
                        self.health.servers, self.health.error, backoff)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def run(self) -> int:
        """Consume until SIGTERM/SIGINT (or :meth:`stop`), then drain, checkpoint, commit and exit 0."""
        if self.source is None:
            try:
                self.start()
            except BaseException:
                # the error is the one line the user sees; kafka-python logs closing a connection still being
                # set up (TLS, SASL) as an ERROR "Abort", which is not news when start-up failed
                kafka_log = logging.getLogger("kafka")
                level = kafka_log.level
                kafka_log.setLevel(logging.CRITICAL)
                try:
                    self.shutdown(quiet=True)
                finally:
                    kafka_log.setLevel(level)  # (the clients are closed: an embedding program keeps its level)
                raise
        try:
            while not self.stopping.is_set():
                self._consume_once()
        finally:
            self.shutdown()
        return 0

    def stop(self) -> None:
        if not self.stopping.is_set():
            self._stop_deadline = time.monotonic() + STOP_SECONDS
        self.stopping.set()

    def _stop_left(self) -> float:
        """Seconds left of the stop budget (SIGTERM to exit, see STOP_SECONDS)."""
        deadline = getattr(self, "_stop_deadline", None)
        return STOP_SECONDS if deadline is None else deadline - time.monotonic()

    def shutdown(self, quiet: bool = False) -> None:
        """Checkpoint, commit and close, within a few seconds even when the broker is down."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.source is not None:
            # SIGTERM exits within the stop budget even when the dead-letter topic is down
            self._settle_dead_letters(timeout=min(1.0, max(0.0, self._stop_left() - 3.0)))
            if self.checkpoint(force=True) and self._outgoing is not None:
                with self.lock:
                    self._emit_pending()  # else the restart emits them from the checkpoint
            elif self.writes["checkpoint"].failing or self.rewind:
                log.error("stopping without a final checkpoint (%s): the next start resumes from the last "
                          "durable one and reads the events since then again",
                          self.writes["labels"].last_error if self.rewind else self.writes["checkpoint"].last_error)
            left = self._stop_left()
            if left > 2.0:  # else skip it: the checkpoint holds the positions and the restart seeks to them
                try:
                    if self.cluster is not None:
                        with self.lock:
                            self.cluster.commit(self.source, force=True)
                    else:
                        self._commit(timeout_ms=int(min(1.0, left - 2.0) * 1000))
                except Exception as exc:
                    log.warning("final offset commit failed: %s", exc)
            if self.cluster is not None:  # no restore's fence after it left
                self.cluster.leave(min(1.0, max(0.1, self._stop_left() - 2.0)))
            self.source.close(timeout_s=min(0.5, max(0.1, (self._stop_left() - 0.5) / 3)))
            self.source = None
        if self.cluster is not None:
            self.cluster.close()
        if self.dead_letters is not None:
            self.dead_letters.close(timeout=min(0.5, max(0.1, self._stop_left() - 0.8)))
        self.dispatcher.close(timeout=min(1.0, max(0.1, self._stop_left() - 0.3)))
        self.outbox.close()
        if self.pipeline.tracker is not None:
            self.pipeline.tracker.join.close()
        self.http.stop()
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None
        if not quiet:
            log.info("stopped: %d messages consumed, %d windows evaluated",
                     self.pipeline.consumed, self.pipeline.windows_evaluated)


def _check_state_dir(directory: str) -> None:
    """Raise ConfigError naming ``state.dir`` when it cannot be created or written."""
    probe = os.path.join(directory, f".driftmon-write-test-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError("state.dir", f"{directory} is not a writable directory: {exc.strerror or exc}") from None
