"""The read-only view of a running daemon: what /status, /readyz, /report and the Prometheus collector read."""

from __future__ import annotations

from monitor.report import daemon_report

__all__ = ["ServiceView"]


class ServiceView:
    """What the HTTP server and the metrics collector may see of a daemon, and nothing they may change.

    /status takes no lock and does no I/O: it reads :attr:`snapshot`, which the daemon has the view
    :meth:`publish` (under its lock) after every change of the pipeline, plus the broker health. The
    attributes named in :class:`monitor.metrics.DriftmonCollector` are properties over the daemon's parts.

    Parameters
    ----------
    daemon : monitor.daemon.Daemon
    """

    def __init__(self, daemon):
        self.daemon = daemon
        self.model = daemon.model
        self.version = daemon.version
        self.config = daemon.config
        self.baseline = daemon.baseline
        self.lock = daemon.lock
        self.config_hash = daemon.config.hash()
        self.health = daemon.health
        self.snapshot: dict = {}  # replaced whole by publish(), read without the lock

    @property
    def registry(self):
        """The Prometheus registry /metrics serves (its collector reads this view)."""
        return self.daemon.registry

    # ---- what the collector reads ----------------------------------------------------------------

    @property
    def pipeline(self):
        return self.daemon.pipeline

    @property
    def lag(self) -> dict[int, int]:
        """Partition -> consumer lag from the last broker probe; empty while it cannot be measured."""
        return self.health.lag

    @property
    def cluster(self):
        """The scale-out part (monitor/cluster.py), or None in single mode."""
        return self.daemon.cluster

    @property
    def assigned_partitions(self) -> list[int]:
        """Partitions of the prediction topic this replica holds now, sorted; empty while it holds none
        (more replicas than partitions, a rebalance under way, or no consumer yet)."""
        source, kafka = self.daemon.source, self.config.kafka
        if source is None or kafka is None:
            return []
        return sorted(tp.partition for tp in source.assigned if tp.topic == kafka.topic)

    @property
    def assignments(self) -> int:
        """Partition assignments the source consumer received (one per rebalance it took part in)."""
        source = self.daemon.source
        return 0 if source is None else source.rebalances

    @property
    def checkpoints(self) -> int:
        return self.daemon.policy.checkpoints

    @property
    def last_window_end(self) -> float | None:
        return self.daemon.last_window_end

    @property
    def writes(self) -> dict:
        return self.daemon.writes

    @property
    def paused(self) -> bool:
        return self.daemon.paused

    @property
    def dead_letters(self):
        """The dead-letter sender (counters only), or None without ``kafka.dead_letter_topic``."""
        return self.daemon.dead_letters

    def alert_stats(self) -> dict:
        d = self.daemon
        return {"firing": d.alerts.firing(), "flapping": d.alerts.flapping(), "sent": dict(d.dispatcher.sent),
                "failures": dict(d.dispatcher.failures), "pending": d.outbox.pending_now(), "dropped": d.outbox.dropped}

    # ---- what the HTTP server reads ----------------------------------------------------------------

    def state_health(self) -> dict:
        """Whether the state directory takes writes: per target (checkpoint, window_log, outbox; labels: the join store) the
        failures, whether it is failing now, the last error and the last success (Unix time)."""
        d = self.daemon
        out = d._outgoing
        return {**{target: retry.status() for target, retry in d.writes.items()},
                "consumption_paused": d.paused,
                "windows_pending": 0 if out is None else len(out["windows"]) + len(out["performance"])}

    def ready(self) -> tuple[bool, str]:
        d = self.daemon
        if d.stopping.is_set():
            return False, "shutting down"
        broker_ok, why = self.health.ready()
        if not broker_ok:
            return False, why
        missing = getattr(d.source, "topic_missing", False)
        gone = (f"the topic {self.config.kafka.topic} does not exist on the broker (check kafka.topic; or this "
                "principal may not describe it)")
        if not d.consuming:  # (confluent-kafka assigns nothing, not even an empty set, for a missing topic)
            return False, "waiting for a partition assignment" + (f": {gone}" if missing else "")
        refused = d.cluster.refused if d.cluster is not None else None
        if refused:  # a missing ACL: scale-out retries with backoff (monitor/cluster.py)
            return False, refused
        if not self.assigned_partitions:
            if missing:
                return True, f"ready: idle, {gone}"
            # Still ready: an idle replica is healthy and takes partitions over in the next rebalance;
            # taking it out of the Service would take a sidecar's model server out with it.
            return True, (f"ready: idle, no partition of {self.config.kafka.topic} assigned (more replicas "
                          "than partitions, or a rebalance under way)")
        cluster = d.cluster
        restoring = cluster.restoring_partitions if cluster is not None else []
        if restoring:
            # Still ready: the other partitions are consumed, and the membership is kept while these are
            # restored (paused) from the join changelog; /status -> cluster.restoring_partitions has progress.
            return True, (f"ready: consuming; restoring the state of {', '.join(restoring)} from "
                          f"{cluster.join_topic} (those partitions wait)")
        return True, "ready: baseline loaded and consuming"

    def status(self) -> dict:
        """The /status document: the last published snapshot plus health (no lock, no I/O)."""
        ready, why = self.ready()
        lag = self.health.lag
        return {
            **self.snapshot,
            "model": self.model,
            "version": self.version,
            "config_hash": self.config_hash,
            "baseline": {"fingerprint": self.baseline.fingerprint, **self.baseline.meta},
            "ready": ready,
            "ready_reason": why,
            "kafka": {**self.health.status(), "assigned_partitions": self.assigned_partitions,
                      "assignments": self.assignments},
            "consumer_lag_messages": {str(k): v for k, v in sorted(lag.items())},
            "state": self.state_health(),  # live: it changes while nothing is consumed (a full disk)
        }

    def publish(self) -> None:
        """Replace the snapshot /status reads (called under the daemon's lock after each change of the pipeline)."""
        pipeline = self.daemon.pipeline
        window = pipeline.window
        tracker = pipeline.tracker
        self.snapshot = {
            "messages_consumed": pipeline.consumed,
            "messages_invalid": dict(pipeline.invalid),
            "windows_evaluated": pipeline.windows_evaluated,
            "open_window": {"index": window.index, "events": window.events},
            "last_window": pipeline.last_result,
            "report": "/report",  # the last window as an HTML page; /report?index=N for older ones
            "last_performance": tracker.last_result if tracker else None,
            **({} if self.daemon.cluster is None else {"cluster": self.daemon.cluster.status()}),
            "labels": None if tracker is None else {
                "received": tracker.join.received, "matched": tracker.join.matched,
                "expired": tracker.join.expired, "pending": tracker.join.pending},
        }

    def report(self, query: str = "") -> tuple[int, bytes]:
        """``/report``: the HTML drift report of the latest window, or of ``index=N`` from the window log."""
        return daemon_report(self, query)
