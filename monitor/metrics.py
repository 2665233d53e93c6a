"""Every Prometheus metric driftmon exports: names, help texts and the scrape-time collector.

Values are read from the service's state at scrape time (a custom collector),
so there is one source of truth and nothing to keep in sync. Labels come from
configuration only (feature names, methods, reasons, partitions), never from
message content, so cardinality is bounded by the config.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from monitor.decode import INVALID_REASONS
from monitor.performance import DELAY_BUCKETS
from monitor.registry import LABELLED, detector_samples

__all__ = ["DETECTOR_FAMILIES", "NAMES", "DriftmonCollector", "make_registry"]

PREFIX = "driftmon_"

#: name (without prefix) -> (type, help). Counters are named without `_total`; the client appends it.
NAMES = {
    "build_info": ("gauge", "Build and baseline of this driftmon process (always 1)."),
    "messages_consumed": ("counter", "Messages read from the source, valid or not."),
    "messages_invalid": ("counter", "Messages rejected, by reason."),
    "late_events": ("counter", "Events whose event time fell before the open time window."),
    "windows_evaluated": ("counter", "Windows closed and compared with the baseline."),
    "window_events": ("gauge", "Events in the last evaluated window."),
    "window_open_events": ("gauge", "Events so far in the open window."),
    "feature_drift_score": ("gauge", "Drift statistic of a feature in the last window, by method."),
    "feature_drift_p_value": ("gauge", "Holm-adjusted p-value of the feature's test of effect <= threshold in the last window."),
    "feature_drift_detected": ("gauge", "1 if the feature drifted in the last window, else 0."),
    "feature_missing_ratio": ("gauge", "Share of missing values of the feature in the last window (0..1)."),
    "feature_out_of_range_ratio": ("gauge", "Share of values outside the baseline's range in the last window (0..1)."),
    "feature_unseen_ratio": ("gauge", "Share of categories never seen in the baseline in the last window (0..1)."),
    "features_drifted": ("gauge", "Number of features that drifted in the last window."),
    "prediction_drift_score": ("gauge", "Drift statistic of the prediction in the last window, by method."),
    "prediction_drift_detected": ("gauge", "1 if the prediction drifted in the last window, else 0."),
    "last_window_end_timestamp_seconds": ("gauge", "End of the last evaluated window, Unix time."),
    "consumer_lag_messages": ("gauge", "Messages between the consumer's position and the partition end, from the "
                                       "last broker probe; absent while it cannot be measured."),
    "consumer_lag_timestamp_seconds": ("gauge", "When the consumer lag was last measured, Unix time."),
    "assigned_partitions": ("gauge", "Partitions of the prediction topic assigned to this replica now (0: idle)."),
    "broker_up": ("gauge", "1 if the Kafka broker answered the last probe (or sent records since), else 0."),
    "last_fetch_timestamp_seconds": ("gauge", "Unix time up to which the assigned partitions had been read: the last "
                                              "records received, or the last probe that found nothing left to read."),
    "checkpoints": ("counter", "State checkpoints written."),
    "batch_processing_seconds": ("histogram", "Time to decode, window and evaluate one polled batch."),
    "alerts_firing": ("gauge", "Alerts currently firing, by kind."),
    "alerts_flapping": ("gauge", "Alert subjects currently flapping (intermittent), by kind."),
    "notifications_sent": ("counter", "Notifications delivered, by sink and alert kind."),
    "notification_failures": ("counter", "Failed notification attempts, by sink and reason."),
    "outbox_pending": ("gauge", "Notifications waiting in the outbox."),
    "labels_received": ("counter", "Labels received (inline or from the labels topic)."),
    "labels_matched": ("counter", "Labels joined to their prediction."),
    "labels_expired": ("counter", "Predictions or early labels dropped unmatched (TTL or cap)."),
    "labels_pending": ("gauge", "Predictions and early labels waiting in the join."),
    "label_delay_seconds": ("histogram", "Time from a prediction to its label (event time)."),
    "performance_windows_evaluated": ("counter", "Labelled windows evaluated."),
    "performance": ("gauge", "Realized performance in the last labelled window, by metric and segment."),
    "baseline_performance": ("gauge", "Performance on the baseline's labelled data, by metric."),
    "estimated_performance": ("gauge", "Performance estimated from scores (no labels) in the last window."),
    "performance_drop_detected": ("gauge", "1 if the metric dropped significantly past its margin, by segment."),
    "error_rate_changes": ("counter", "Increases of the error rate detected by the sequential detector."),
    "fairness_parity_ratio": ("gauge", "Demographic parity ratio (min/max positive rate) across an attribute."),
    "fairness_positive_rate": ("gauge", "Rate of favourable predictions per group of an attribute."),
    "segment_features_drifted": ("gauge", "Features that drifted within a segment value in the last window."),
    "notifications_dropped": ("counter", "Notifications dropped because the outbox was full."),
    "cluster_aggregator": ("gauge", "1 if this replica is the scale-out aggregator of the model, else 0."),
    "cluster_partials_produced": ("counter", "Window partials this replica produced to the partials topic."),
    "cluster_late_partials": ("counter", "Partials that reached the aggregator after their window closed (not merged)."),
    "cluster_duplicate_partials": ("counter", "Partials the aggregator had merged before (a worker's re-read), dropped."),
    "cluster_changelog_writes": ("counter", "Aggregator state records written to the changelog topic."),
    "cluster_join_transactions": ("counter", "Transactions in which this replica wrote its partitions' label join "
                                  "state, partials and offsets (scale-out with labels)."),
    "restoring_partitions": ("gauge", "Source partitions this replica is restoring from the join changelog, paused "
                             "meanwhile (scale-out with labels)."),
    "state_write_failures": ("counter", "Failed writes to the state directory (full or read-only disk), by target "
                             "(checkpoint, window_log, outbox, labels); retried with backoff."),
    "state_last_write_timestamp_seconds": ("gauge", "Last successful write to the state directory, by target, "
                                           "Unix time."),
    "consumption_paused": ("gauge", "1 while consumption is paused because closed windows cannot be made durable."),
    "multivariate_drift_detected": ("gauge", "1 if the multivariate method flagged the last window it judged, else 0."),
    "multivariate_drift_score": ("gauge", "Multivariate statistic of the last window it judged: pca_reconstruction "
                                          "the error shift in per-row stds, domain_classifier the held-out ROC AUC."),
    "multivariate_drift_p_value": ("gauge", "p-value of the multivariate method's test in the last window it judged."),
    "dead_letters_sent": ("counter", "Rejected messages acknowledged by the dead-letter topic."),
    "dead_letters_failed": ("counter", "Dead letters not sent, or not acknowledged before their offsets were checkpointed, "
                                       "by reason."),
    "dead_letters_truncated": ("counter", "Dead letters whose payload was cut to kafka.dead_letter_max_bytes."),
    "dead_letters_pending": ("gauge", "Dead letters queued or in flight: neither acknowledged, failed nor counted "
                                      "unconfirmed yet."),
    "multivariate_evaluations": ("counter", "Domain-classifier evaluations finished, and windows it skipped (rate limit)."),
}


#: The families a window detector may declare samples of (its registry entry's ``metrics`` hook, see
#: :class:`monitor.registry.Sample`): name (a key of NAMES) -> its labels after ``model``. The collector
#: exports these from the registry without knowing the detectors; a family appears once a sample of it is
#: declared (a sample whose value is None exports the family without that series: configured, no value yet).
#: A detector whose results fit a family here needs no edit to this file; a new family is one line here
#: and one in NAMES.
DETECTOR_FAMILIES = {
    "feature_drift_score": ("feature", "method"),
    "feature_drift_p_value": ("feature",),
    "feature_drift_detected": ("feature",),
    "feature_missing_ratio": ("feature",),
    "feature_out_of_range_ratio": ("feature",),
    "feature_unseen_ratio": ("feature",),
    "prediction_drift_score": ("method",),
    "prediction_drift_detected": (),
    "features_drifted": (),
    "performance": ("metric", "segment"),
    "performance_drop_detected": ("metric", "segment"),
    "fairness_parity_ratio": ("attribute",),
    "fairness_positive_rate": ("attribute", "group"),
    "estimated_performance": ("metric",),
    "segment_features_drifted": ("segment",),
    "multivariate_drift_detected": ("method",),
    "multivariate_drift_score": ("method",),
    "multivariate_drift_p_value": ("method",),
    "multivariate_evaluations": ("outcome",),
}


def name(key: str) -> str:
    """Full metric name (without the `_total` counters get on exposition)."""
    return PREFIX + key


def make_registry(model: str, collector: "DriftmonCollector | None" = None) -> tuple[CollectorRegistry, Histogram]:
    """A private registry with process metrics, the driftmon collector and the batch-time histogram."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if collector is not None:
        registry.register(collector)
    histogram = Histogram(
        name("batch_processing_seconds"),
        NAMES["batch_processing_seconds"][1],
        ["model"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    )
    return registry, histogram


def _family(key: str, labels: list[str]):
    kind, help_text = NAMES[key]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name(key), help_text, labels=["model", *labels])


class DriftmonCollector(Collector):
    """Yield every driftmon metric from the service's state at scrape time.

    Parameters
    ----------
    service : object
        Exposes ``model``, ``version``, ``baseline`` (with ``fingerprint``),
        ``pipeline`` (counters and ``last_result``), ``lag`` (partition -> messages),
        ``checkpoints``, ``last_window_end`` (Unix time or None), and optionally ``alert_stats()`` returning a dict with
        ``firing`` (alert -> n), ``flapping`` (alert -> n), ``sent`` ((sink, alert) -> n), ``failures`` ((sink, reason) -> n), ``pending``, ``dropped``.

    What the window detectors measure is exported from the samples their registry entries declare
    (:func:`monitor.registry.detector_samples`), so a new detector needs no edit here.
    """

    def __init__(self, service):
        self.service = service

    def collect(self):
        s = self.service
        m = s.model
        p = s.pipeline
        info = _family("build_info", ["version", "baseline_fingerprint"])
        info.add_metric([m, s.version, s.baseline.fingerprint], 1)
        yield info

        fam = _family("messages_consumed", [])
        fam.add_metric([m], p.consumed)
        yield fam
        fam = _family("messages_invalid", ["reason"])
        for reason in INVALID_REASONS:  # pre-exported zeros so rate() works from the first failure
            fam.add_metric([m, reason], p.invalid.get(reason, 0))
        yield fam
        fam = _family("late_events", [])
        fam.add_metric([m], p.late)
        yield fam
        fam = _family("windows_evaluated", [])
        fam.add_metric([m], p.windows_evaluated)
        yield fam
        fam = _family("window_open_events", [])
        fam.add_metric([m], p.window.events)
        yield fam
        fam = _family("checkpoints", [])
        fam.add_metric([m], s.checkpoints)
        yield fam

        writes = getattr(s, "writes", None)
        if writes is not None:
            failures = _family("state_write_failures", ["target"])
            last = _family("state_last_write_timestamp_seconds", ["target"])
            for target, retry in writes.items():
                failures.add_metric([m, target], retry.failures)
                if retry.last_success is not None:
                    last.add_metric([m, target], retry.last_success)
            paused = _family("consumption_paused", [])
            paused.add_metric([m], 1 if s.paused else 0)
            yield failures
            yield last
            yield paused

        lag = _family("consumer_lag_messages", ["partition"])
        for partition, value in sorted(s.lag.items()):
            lag.add_metric([m, str(partition)], value)
        yield lag
        assigned = getattr(s, "assigned_partitions", None)
        if assigned is not None:
            fam = _family("assigned_partitions", [])
            fam.add_metric([m], len(assigned))
            yield fam
        health = getattr(s, "health", None)
        if health is not None:
            yield from self._health_families(m, health)

        dead = getattr(s, "dead_letters", None)
        if dead is not None:
            yield from self._dead_letter_families(m, dead)

        cluster = getattr(s, "cluster", None)
        if cluster is not None:
            for key, value in (("cluster_aggregator", 1 if cluster.active else 0),
                               ("cluster_partials_produced", cluster.partials_produced),
                               ("cluster_late_partials", cluster.aggregator.late + cluster.aggregator.late_labelled),
                               ("cluster_duplicate_partials", cluster.aggregator.duplicates),
                               ("cluster_changelog_writes", cluster.changelog_writes),
                               ("cluster_join_transactions", cluster.cuts),
                               ("restoring_partitions", len(cluster.restoring_partitions))):
                fam = _family(key, [])
                fam.add_metric([m], value)
                yield fam
        if cluster is None or cluster.active:  # in scale-out the aggregator alone exports the verdicts
            yield from self._window_families(m, p.last_result)
            yield from self._detector_families(m, getattr(p, "detectors", None) or [], p.last_result)
        yield from self._alert_families(m)
        if p.tracker is not None:
            yield from self._performance_families(m, p.tracker, s.baseline)

    @staticmethod
    def _health_families(m: str, health):
        up = _family("broker_up", [])
        up.add_metric([m], 1 if health.up else 0)
        yield up
        for key, value in (("last_fetch_timestamp_seconds", health.last_fetch),
                           ("consumer_lag_timestamp_seconds", health.lag_timestamp)):
            if value is not None:  # never fetched / never measured: no sample rather than a fake time
                fam = _family(key, [])
                fam.add_metric([m], value)
                yield fam

    @staticmethod
    def _dead_letter_families(m: str, dead):
        from monitor.deadletter import FAILURE_REASONS

        fam = _family("dead_letters_sent", [])
        fam.add_metric([m], dead.sent)
        yield fam
        fam = _family("dead_letters_failed", ["reason"])
        failed = dict(dead.failed)
        for reason in FAILURE_REASONS:  # pre-exported zeros
            fam.add_metric([m, reason], failed.get(reason, 0))
        yield fam
        fam = _family("dead_letters_truncated", [])
        fam.add_metric([m], dead.truncated)
        yield fam
        fam = _family("dead_letters_pending", [])
        fam.add_metric([m], dead.pending)
        yield fam

    def _performance_families(self, m: str, tracker, baseline):
        join = tracker.join
        for key, value in (("labels_received", join.received), ("labels_matched", join.matched),
                           ("labels_expired", join.expired), ("labels_pending", join.pending),
                           ("performance_windows_evaluated", tracker.windows_evaluated)):
            fam = _family(key, [])
            fam.add_metric([m], value)
            yield fam
        delay = HistogramMetricFamily(name("label_delay_seconds"), NAMES["label_delay_seconds"][1], labels=["model"])
        cumulative, buckets = 0, []
        for bound, count in zip(DELAY_BUCKETS, tracker.delay_counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), cumulative))
        delay.add_metric([m], buckets, sum_value=tracker.delay_sum)
        yield delay
        reference = (baseline.extras.get("performance") or {}).get("metrics", {})
        fam = _family("baseline_performance", ["metric"])
        for metric in tracker.metrics:
            if reference.get(metric) is not None:
                fam.add_metric([m, metric], reference[metric])
        yield fam
        # the labelled windows' detectors declare theirs (monitor/registry.py LABELLED)
        yield from self._detector_families(m, tracker.prototypes, tracker.last_result, LABELLED)
        fam = _family("error_rate_changes", [])
        fam.add_metric([m], tracker.errors.detections if tracker.errors is not None else 0)
        yield fam

    def _window_families(self, m: str, result: dict | None):
        if result is not None:
            events = _family("window_events", [])
            events.add_metric([m], result["window"]["events"])
            yield events
        end = getattr(self.service, "last_window_end", None)
        if end is not None:
            fam = _family("last_window_end_timestamp_seconds", [])
            fam.add_metric([m], end)
            yield fam

    @staticmethod
    def _detector_families(m: str, detectors: list, result: dict | None, registry: dict | None = None):
        """The samples registered detectors declare (monitor/registry.py), one family per name."""
        families: dict = {}
        for sample in detector_samples(detectors, result, registry):
            labels = DETECTOR_FAMILIES.get(sample.family)
            declared = sample.value is None and not sample.labels  # registry.declare(): the family alone
            if labels is None or not (declared or len(sample.labels) == len(labels)):
                raise ValueError(f"detector metric {sample.family}{sample.labels}: not a family of DETECTOR_FAMILIES "
                                 "with these labels")
            fam = families.get(sample.family)
            if fam is None:
                fam = families[sample.family] = _family(sample.family, list(labels))
            if sample.value is not None:
                fam.add_metric([m, *map(str, sample.labels)], sample.value)
        yield from (families[k] for k in DETECTOR_FAMILIES if k in families)

    def _alert_families(self, m: str):
        stats_fn = getattr(self.service, "alert_stats", None)
        stats = stats_fn() if stats_fn else {"firing": {}, "sent": {}, "failures": {}, "pending": 0, "dropped": 0}
        firing = _family("alerts_firing", ["alert"])
        for alert, n in sorted(stats["firing"].items()):
            firing.add_metric([m, alert], n)
        yield firing
        flapping = _family("alerts_flapping", ["alert"])
        for alert, n in sorted(stats.get("flapping", {}).items()):
            flapping.add_metric([m, alert], n)
        yield flapping
        sent = _family("notifications_sent", ["sink", "alert"])
        for (sink, alert), n in sorted(stats["sent"].items()):
            sent.add_metric([m, sink, alert], n)
        yield sent
        failures = _family("notification_failures", ["sink", "reason"])
        for (sink, reason), n in sorted(stats["failures"].items()):
            failures.add_metric([m, sink, reason], n)
        yield failures
        pending = _family("outbox_pending", [])
        pending.add_metric([m], stats["pending"])
        yield pending
        dropped = _family("notifications_dropped", [])
        dropped.add_metric([m], stats["dropped"])
        yield dropped
