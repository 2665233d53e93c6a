"""The window detector registry: config section -> detector, for every window.

Each entry (:class:`Entry`) has a builder ``build(config, baseline, background) -> detector | None``
(None when its config section is off) and, for detectors that need something learnt from the training
data, ``fit`` (called when a baseline is built; returns baseline extras) and ``check`` (called when a
baseline is loaded; raises ConfigError when the baseline lacks them). The pipeline builds the list once
and gives every window a
:meth:`~detectors.window.WindowDetector.fresh` twin of each; the window updates, merges,
checkpoints and evaluates them without knowing what they are (see :mod:`detectors.window` and
docs/DESIGN.md "Window detectors"). An entry may also declare what its results mean for Prometheus and
alerting: ``metrics`` (:class:`Sample` values of families from :data:`monitor.metrics.DETECTOR_FAMILIES`),
``evidence`` (:class:`Finding` values for the alert engine) and ``alerts`` (:class:`AlertSpec`: how a
kind's notification reads), so :mod:`monitor.metrics` and :mod:`monitor.alerting` iterate over the registry
instead of reading sections by name: every window detector (features and outputs, embeddings, multivariate,
segments, estimated performance) and every labelled-window one (:data:`LABELLED`) is on that path.
Adding a detector: a module in ``detectors/``, its config section, one entry in :data:`REGISTRY`, docs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from detectors import ConfidenceBasedEstimator, FeaturePolicy
from detectors.labelled import FairnessGroups, LabelDrift, PerformanceDrops, SegmentPerformance
from detectors.window import EstimatedPerformance, FeatureDrift, SegmentDrift, WindowContext
from monitor.config import Column, Config, ConfigError
from monitor.multivariate import ClassifierRunner, MultivariateState, check_artefacts, fit_artefacts, min_interval_seconds
from monitor.values import category_name, segment_value

__all__ = ["LABELLED", "REGISTRY", "AlertSpec", "Entry", "Episode", "Finding", "Sample", "Training",
           "MultivariateDetector", "alert_specs", "declare", "build_detectors", "build_labelled_detectors", "detector_samples", "feature_policies",
           "findings"]


@dataclass(frozen=True)
class Training:
    """The training data as a ``fit`` hook sees it.

    ``column(spec)``: a column as numpy floats (numeric) or a list of values (categorical);
    ``vectors(spec)``: an embedding column as an ``(n, dimension)`` array (NaN rows where absent).
    """

    column: Callable
    vectors: Callable


@dataclass(frozen=True)
class Sample:
    """One metric sample a detector declares.

    ``family`` is a key of :data:`monitor.metrics.DETECTOR_FAMILIES` (the fixed, documented set: names
    are never built from data); ``labels`` are the values of that family's labels after ``model``, from
    the configuration only.
    """

    family: str
    labels: tuple
    value: float | None  # None: the family is exported without this series (configured, no value yet)


@dataclass(frozen=True)
class Finding:
    """What one window says about one alert subject: the alert engine's evidence.

    ``kind`` is one of :data:`monitor.config.ALERT_KINDS`; ``subject`` is bounded by the configuration
    (a method, a feature); ``ratio`` is evidence / threshold (``>= alerts.critical_ratio`` is critical);
    ``details`` go into the notification.
    """

    kind: str
    subject: str
    bad: bool
    ratio: float
    details: dict


@dataclass(frozen=True)
class Episode:
    """Where an alert stands when a notification is worded: ``bad`` consecutive bad windows, ``flapping``."""

    bad: int
    flapping: bool


@dataclass(frozen=True)
class AlertSpec:
    """How a notification of one alert kind reads.

    ``section``: the payload key its details go under (``listed``: as a one-item list while firing, an
    empty one when resolved, as the drift kinds' ``features``); ``anchor``: its section of
    docs/runbook.md (GitHub anchor); ``summary(model, subject, details, firing, episode) -> str`` (the
    engine appends the intermittent note of a flapping alert).
    """

    kind: str
    section: str
    anchor: str
    summary: Callable
    listed: bool = False


@dataclass(frozen=True)
class Entry:
    """One registered detector: how to build it per window, what it learns from the training data, and
    what its results mean for metrics and alerts.

    ``key``: the built detector's ``key`` when it is not the entry's name (how the collector finds it).
    """

    build: Callable  # (config, baseline, background) -> detector or None
    fit: Callable | None = None  # (config, training: Training, seed) -> baseline extras
    check: Callable | None = None  # (config, extras, baseline path) -> None, or ConfigError
    metrics: Callable | None = None  # (detector, last window result or None) -> iterable of Sample
    evidence: Callable | None = None  # (config, window result) -> iterable of Finding
    alerts: tuple = ()  # AlertSpec of the kinds it raises whose notifications it words
    key: str | None = None


def feature_policies(config: Config) -> dict[str, FeaturePolicy]:
    """Column name -> its drift decision rule, from ``drift`` and the column's ``drift:`` overrides."""
    drift = config.drift
    policies = {}
    for _role, spec in config.drift_columns():
        defaults = drift.numeric if spec.type == "numeric" else drift.categorical
        method = spec.drift.effect_method or defaults.effect_method
        threshold = spec.drift.threshold
        if threshold is None and method == defaults.effect_method:
            threshold = defaults.threshold
        # Otherwise None: each effect method has its own calibrated default (detectors.FeaturePolicy).
        policies[spec.name] = FeaturePolicy(effect_method=method, effect_threshold=threshold,
                                            min_events=spec.drift.min_events or drift.min_events)
    return policies


def _features(config: Config, baseline, background: bool) -> FeatureDrift:
    outputs = {role: spec.name for role, spec in config.drift_columns() if role != "feature"}
    features = [spec.name for role, spec in config.schema.columns() if role == "feature"]
    return FeatureDrift(baseline.profiles, feature_policies(config), features, outputs)


def declare(*families: str):
    """Samples that export families without a series (configured, nothing judged yet)."""
    return [Sample(family, (), None) for family in families]


def _ratio(value, threshold) -> float:
    if value is None or not threshold:
        return 0.0
    return float(value) / float(threshold)


def _feature_metrics(detector: FeatureDrift, result: dict | None):
    yield from declare("feature_drift_score", "feature_drift_p_value", "feature_missing_ratio",
                       "feature_out_of_range_ratio", "feature_unseen_ratio", "prediction_drift_score")
    features = (result or {}).get("features", {})
    for feature in detector.features:  # pre-exported zeros for every configured feature
        r = features.get(feature)
        yield Sample("feature_drift_detected", (feature,), 1 if r and r["drift"] else 0)
        if r is None:
            continue
        for method, value in sorted(r["statistics"].items()):
            if value is not None:
                yield Sample("feature_drift_score", (feature, method), value)
        yield Sample("feature_drift_p_value", (feature,), r["test"].get("p_value_adjusted"))
        yield Sample("feature_missing_ratio", (feature,), r.get("missing_ratio"))
        yield Sample("feature_out_of_range_ratio", (feature,), r.get("out_of_range_ratio"))
        yield Sample("feature_unseen_ratio", (feature,), r.get("unseen_ratio"))
    prediction = (result or {}).get("prediction")  # the score and the label have no series of their own
    yield Sample("prediction_drift_detected", (), 1 if prediction and prediction["drift"] else 0)
    if prediction:
        for method, value in sorted(prediction["statistics"].items()):
            if value is not None:
                yield Sample("prediction_drift_score", (method,), value)
    yield Sample("features_drifted", (), len((result or {}).get("drifted", [])))


def _drift_details(name: str, r: dict) -> dict:
    return {"name": name, "method": r["effect"]["method"], "score": r["effect"]["value"],
            "threshold": r["effect"]["threshold"], "p_value": r["test"].get("p_value_adjusted"),
            "test": r["test"]["method"]}


def _drift_finding(kind: str, subject: str, name: str, r: dict) -> Finding:
    return Finding(kind, subject, bool(r["drift"]), _ratio(r["effect"]["value"], r["effect"]["threshold"]),
                   _drift_details(name, r))


def _feature_evidence(config: Config, result: dict):
    """Feature drift and the features' data quality (only an increase of the missing share over the
    baseline's counts), then prediction and (inline) label drift."""
    dq = config.alerts.data_quality
    events = result["window"]["events"]
    for name, r in result["features"].items():
        if r["status"] == "ok":
            yield _drift_finding("feature_drift", name, name, r)
        if events == 0:
            continue
        excess = (r.get("missing_ratio") or 0.0) - (r.get("baseline_missing_ratio") or 0.0)
        checks = [("missing", excess, dq.missing_ratio)]
        if r.get("out_of_range_ratio") is not None:
            checks.append(("out_of_range", r["out_of_range_ratio"], dq.out_of_range_ratio))
        if r.get("unseen_ratio") is not None:
            checks.append(("unseen", r["unseen_ratio"], dq.unseen_ratio))
        for check, value, threshold in checks:
            yield Finding("data_quality", f"{name}:{check}", value >= threshold, _ratio(value, threshold),
                          {"name": name, "check": check, "value": value, "threshold": threshold})
    for role, kind in (("prediction", "prediction_drift"), ("label", "label_drift")):
        r = result.get(role)
        if r is not None and r["status"] == "ok":
            yield _drift_finding(kind, role, getattr(config.schema, role).name, r)


def _drift_summary(what: Callable) -> Callable:
    """The wording of a drift kind's notifications; ``what(subject)`` names the drifting thing."""

    def summary(model: str, subject: str, details: dict, firing: bool, episode: Episode) -> str:
        if not firing:
            return f"{model}: {what(subject)} is back in line with the baseline; resolved"
        verb = "drifts intermittently" if episode.flapping else "drifted"
        return (f"{model}: {what(subject)} {verb} ({details.get('method')} {details.get('score', 0):.3g} >= "
                f"{details.get('threshold', 0):.3g})" + ("" if episode.flapping else f" for {episode.bad} window(s)"))

    return summary


FEATURE_DRIFT = AlertSpec("feature_drift", "features", "driftmonfeaturedrift",
                          _drift_summary(lambda subject: f"feature {subject}"), listed=True)
PREDICTION_DRIFT = AlertSpec("prediction_drift", "features", "driftmonpredictiondrift",
                             _drift_summary(lambda subject: "the prediction"), listed=True)
LABEL_DRIFT = AlertSpec("label_drift", "features", "label-drift", _drift_summary(lambda subject: "the label"),
                        listed=True)


def _estimated_performance(config: Config, baseline, background: bool) -> EstimatedPerformance | None:
    perf = baseline.extras.get("performance") or {}
    if config.schema.score is None or not perf.get("estimator"):
        return None
    estimator = ConfidenceBasedEstimator(positive=1).load_state_dict(perf["estimator"])
    return EstimatedPerformance(estimator, config.schema.score.name, config.labels.threshold)


def _fit_segments(config: Config, training: Training, seed: int) -> dict:
    """The most frequent values of each segment field (the rest is pooled as "other")."""
    if not config.segments:
        return {}
    out = {}
    for segment in config.segments:
        values = [category_name(v) for v in training.column(Column(name=segment.name, type="categorical",
                                                                    path=segment.path))]
        counts = Counter(v for v in values if v is not None)
        out[segment.name] = sorted(sorted(counts, key=lambda v: (-counts[v], v))[:segment.max_values])
    return {"segments": out}


def _check_segments(config: Config, extras: dict, path: str) -> None:
    for segment in config.segments:
        if segment.name not in extras.get("segments", {}):
            raise ConfigError("segments", f"{segment.name!r} is not in the baseline; rebuild it")


def _segments(config: Config, baseline, background: bool) -> SegmentDrift | None:
    if not config.segments:
        return None
    known = baseline.extras.get("segments", {})
    fields = {s.name: set(known.get(s.name, [])) for s in config.segments}
    features = [spec.name for role, spec in config.schema.columns() if role == "feature"]
    names = [spec.name for _role, spec in config.drift_columns()]
    return SegmentDrift(baseline.profiles, feature_policies(config), features, names, fields,
                        config.drift.min_events, segment_value)


@dataclass(frozen=True)
class MultivariateResult:
    """The ``multivariate`` and ``embeddings`` sections (each method's typed result, as its ``to_dict()``)."""

    parts: dict

    def sections(self) -> dict:
        return self.parts


class MultivariateDetector:
    """The multivariate and embedding detectors of a window (:class:`MultivariateState`) under the protocol.

    The domain classifier's evaluation may run on the daemon's worker thread (see
    :class:`ClassifierRunner`); the runner is shared by every window's twin.
    """

    key = "multivariate"

    def __init__(self, state: MultivariateState):
        self.state = state

    def fresh(self) -> "MultivariateDetector":
        return MultivariateDetector(self.state.fresh())

    def update(self, batch) -> "MultivariateDetector":
        if batch.n:
            self.state.update(batch.columns)
        return self

    def merge(self, other: "MultivariateDetector") -> "MultivariateDetector":
        """PCA reconstruction and embedding sums add exactly; the classifier's reservoir samples merge as
        a sample of the union (see :meth:`detectors.multivariate.DomainClassifier.merge`)."""
        for key, detector in self.state.detectors.items():
            detector.merge(other.state.detectors[key])
        for key, detector in self.state.embeddings.items():
            detector.merge(other.state.embeddings[key])
        return self

    def result(self, context: WindowContext) -> MultivariateResult:
        return MultivariateResult(self.state.results(context.index))

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> "MultivariateDetector":
        self.state.load_state_dict(state)
        return self


def _multivariate(config: Config, baseline, background: bool) -> MultivariateDetector | None:
    if config.multivariate is None and not config.schema.embeddings():
        return None
    # background (the daemon): the domain classifier is fitted off the consuming thread
    runner = ClassifierRunner(background=background, min_interval=min_interval_seconds(config))
    return MultivariateDetector(MultivariateState(config, baseline, runner))


def _fit_multivariate(config: Config, training: Training, seed: int) -> dict:
    if config.multivariate is None and not config.schema.embeddings():
        return {}
    return fit_artefacts(config, training.column, training.vectors, seed=seed)


def _check_multivariate(config: Config, extras: dict, path: str) -> None:
    if config.multivariate is not None or config.schema.embeddings():
        check_artefacts(config, extras, path)


def _estimated_metrics(detector: EstimatedPerformance, result: dict | None):
    for metric, value in sorted(((result or {}).get("estimated_performance") or {}).items()):
        if metric in ("accuracy", "precision", "recall", "f1") and value is not None:
            yield Sample("estimated_performance", (metric,), value)


def _segments_metrics(detector: SegmentDrift, result: dict | None):
    for field, values in sorted(((result or {}).get("segments") or {}).items()):
        for value, summary in sorted(values.items()):  # values: the baseline's top ones and "other"
            yield Sample("segment_features_drifted", (f"{field}={value}",), len(summary["drifted"]))


def _embedding_parts(r: dict) -> list:
    """(method, its part, its score) of an embedding feature's verdict, for the methods configured."""
    out = []
    for method in ("mean_distance", "histograms"):
        part = r.get(method)
        if part is not None:
            out.append((method, part, part["distance"] if method == "mean_distance" else part["effect"]))
    return out


def _embedding_metrics(detector: MultivariateDetector, result: dict | None):
    """Embedding features export the features' series: one score per method, the smaller p-value."""
    embeddings = (result or {}).get("embeddings") or {}
    for feature in detector.state.embeddings:  # pre-exported zeros for every embedding feature
        r = embeddings.get(feature)
        yield Sample("feature_drift_detected", (feature,), 1 if r and r["drift"] else 0)
        if r is None:
            continue
        parts = _embedding_parts(r)
        for method, _part, score in parts:
            yield Sample("feature_drift_score", (feature, method), score)
        p_values = [part.get("p_value", part.get("p_value_adjusted")) for _method, part, _score in parts]
        yield Sample("feature_drift_p_value", (feature,), min(p_values) if p_values else None)
        yield Sample("feature_missing_ratio", (feature,), r["missing"] / r["events"] if r["events"] else None)


def _embedding_evidence(config: Config, result: dict):
    """An embedding feature drifts as a feature does (``feature_drift``), by the first method that drifted."""
    for name, r in (result.get("embeddings") or {}).items():
        if r["status"] == "ok":
            parts = _embedding_parts(r)
            method, part, score = next((p for p in parts if p[1]["drift"]), parts[0])
            details = {"name": name, "method": method, "score": score, "threshold": part["threshold"],
                       "p_value": part.get("p_value", part.get("p_value_adjusted")), "test": "chi2"}
            yield Finding("feature_drift", name, bool(r["drift"]), _ratio(score, part["threshold"]), details)


def _multivariate_metrics(detector: MultivariateDetector, result: dict | None):
    yield from _embedding_metrics(detector, result)
    section = (result or {}).get("multivariate") or {}
    detectors = detector.state.detectors
    for method in detectors:  # pre-exported zeros for the configured methods
        r = section.get(method) or {}
        yield Sample("multivariate_drift_detected", (method,), 1 if r.get("drift") else 0)
    for method in detectors:  # None until the method has judged a window: the family without the series
        r = section.get(method) or {}
        value = r.get("auc") if method == "domain_classifier" else r.get("effect")
        yield Sample("multivariate_drift_score", (method,), value)
    for method in detectors:
        yield Sample("multivariate_drift_p_value", (method,), (section.get(method) or {}).get("p_value"))
    if "domain_classifier" in detectors:
        yield Sample("multivariate_evaluations", ("finished",), detector.state.runner.evaluations)
        yield Sample("multivariate_evaluations", ("skipped",), detector.state.runner.skipped)


def _multivariate_evidence(config: Config, result: dict):
    yield from _embedding_evidence(config, result)
    for method, r in (result.get("multivariate") or {}).items():
        # a background classifier result is evidence once, in the first window that reports it
        if r.get("status") == "ok" and r.get("fresh", True):
            score = r["auc"] if method == "domain_classifier" else r["effect"]
            # the classifier's effect is AUC - 0.5 against its threshold's distance from 0.5
            ratio = (_ratio(score - 0.5, r["threshold"] - 0.5) if method == "domain_classifier"
                     else _ratio(abs(score), r["threshold"]))
            yield Finding("multivariate_drift", method, bool(r["drift"]), ratio, {
                "method": method, "score": score, "threshold": r["threshold"], "p_value": r["p_value"],
                "window": r.get("window", result["window"]["index"]), "events": r["events"]})


def _multivariate_summary(model: str, subject: str, details: dict, firing: bool, episode: Episode) -> str:
    if not firing:
        return f"{model}: {subject} is back in line with the baseline; resolved"
    what = "ROC AUC" if subject == "domain_classifier" else "error shift"
    return (f"{model}: multivariate drift by {subject} ({what} {details.get('score', 0):.3g} vs threshold "
            f"{details.get('threshold', 0):.3g}, p={details.get('p_value', 1):.2g})")


#: Window detectors in the order their sections appear in a window result.
REGISTRY: dict[str, Entry] = {
    "features": Entry(_features, metrics=_feature_metrics, evidence=_feature_evidence, key=FeatureDrift.key,
                      alerts=(FEATURE_DRIFT, PREDICTION_DRIFT, LABEL_DRIFT)),
    "estimated_performance": Entry(_estimated_performance, metrics=_estimated_metrics, key=EstimatedPerformance.key),
    "multivariate": Entry(_multivariate, _fit_multivariate, _check_multivariate, metrics=_multivariate_metrics,
                          evidence=_multivariate_evidence,
                          alerts=(AlertSpec("multivariate_drift", "multivariate", "driftmonmultivariatedrift",
                                            _multivariate_summary),)),
    "segments": Entry(_segments, _fit_segments, _check_segments, metrics=_segments_metrics),
}


def build_detectors(config: Config, baseline, background: bool = False) -> list:
    """The configured window detectors (prototypes: each window holds fresh twins of them)."""
    return [d for d in (e.build(config, baseline, background) for e in REGISTRY.values()) if d is not None]


def fit_extras(config: Config, training: Training, seed: int = 0) -> dict:
    """The baseline extras every registered detector learns from the training data."""
    extras: dict = {}
    for entry in REGISTRY.values():
        if entry.fit is not None:
            extras.update(entry.fit(config, training, seed))
    return extras


def detector_samples(detectors: list, result: dict | None, registry: dict | None = None) -> list[Sample]:
    """The metric samples every registered detector declares, from the built detectors and the last result
    (``registry``: :data:`REGISTRY` by default, :data:`LABELLED` for labelled windows)."""
    out: list[Sample] = []
    for name, entry in (REGISTRY if registry is None else registry).items():
        detector = next((d for d in detectors if d.key == (entry.key or name)), None)
        if entry.metrics is not None and detector is not None:
            out.extend(entry.metrics(detector, result))
    return out


def findings(config: Config, result: dict, registry: dict | None = None) -> list[Finding]:
    """The alert evidence every registered detector declares for one window result, in registry order."""
    entries = (REGISTRY if registry is None else registry).values()
    return [f for entry in entries if entry.evidence is not None for f in entry.evidence(config, result)]


def alert_specs() -> dict[str, AlertSpec]:
    """Alert kind -> how its notifications read, for the kinds registered detectors word."""
    return {spec.kind: spec for entries in (REGISTRY, LABELLED) for entry in entries.values()
            for spec in entry.alerts}


def check_extras(config: Config, extras: dict, path: str) -> None:
    """Raise ConfigError when a configured detector's baseline extras are missing or stale."""
    for entry in REGISTRY.values():
        if entry.check is not None:
            entry.check(config, extras, path)


# ---- labelled windows (every labels.window joined predictions; monitor/performance.py) ----------------------
# Builders get the tracker for what it derives from the config and the baseline: the task, the positive
# class, the metrics and the baseline's values of them.


def _performance(config: Config, baseline, tracker) -> PerformanceDrops:
    return PerformanceDrops(tracker.task, tracker.positive, tracker.metrics, tracker.reference,
                            config.performance.margin, config.performance.alpha)


def _segment_performance(config: Config, baseline, tracker) -> SegmentPerformance | None:
    fields = {f: set(known) for f, known in tracker.segment_values.items()}
    if not fields:
        return None
    return SegmentPerformance(tracker.task, tracker.positive, tracker.metrics, tracker.reference, fields,
                              config.performance.margin, config.performance.alpha)


def _fairness(config: Config, baseline, tracker) -> FairnessGroups | None:
    fairness = config.fairness
    if fairness is None or not fairness.attributes:
        return None
    report = {"min_group_size": fairness.min_group_size, "alpha": fairness.alpha,
              "parity_ratio_bound": fairness.parity_ratio_bound,
              "max_equalized_odds_difference": fairness.max_equalized_odds_difference,
              "max_gap_widening": fairness.max_gap_widening}
    return FairnessGroups(fairness.favourable, {a.name: a.max_values for a in fairness.attributes}, tracker.task,
                          report, tracker.reference_groups)


def _label_drift(config: Config, baseline, tracker) -> LabelDrift | None:
    profile = baseline.profiles.get(tracker.label_name)
    return None if profile is None else LabelDrift(profile, config.drift.min_events)


def _performance_samples(detector, segment: str, section: dict):
    for metric in detector.metrics:
        yield Sample("performance", (metric, segment), section["metrics"].get(metric))
    for metric, test in section["drops"].items():
        yield Sample("performance_drop_detected", (metric, segment), 1 if test["drop"] else 0)


def _performance_metrics(detector: PerformanceDrops, result: dict | None):
    yield from declare("performance", "performance_drop_detected")
    if result is not None:
        yield from _performance_samples(detector, "all", result)


def _segment_performance_metrics(detector: SegmentPerformance, result: dict | None):
    for field, values in ((result or {}).get("segments") or {}).items():
        for value, section in values.items():
            yield from _performance_samples(detector, f"{field}={value}", section)


def _fairness_metrics(detector: FairnessGroups, result: dict | None):
    yield from declare("fairness_parity_ratio", "fairness_positive_rate")
    for attr, report in ((result or {}).get("fairness") or {}).items():
        yield Sample("fairness_parity_ratio", (attr,), report["overall"].get("demographic_parity_ratio"))
        for group, g in report["groups"].items():
            yield Sample("fairness_positive_rate", (attr, group), g.get("positive_rate"))


def drop_findings(prefix: str, tests: dict, segment: dict | None = None):
    """Findings of one set of drop tests (``performance_drop``, subject ``prefix + metric``)."""
    for metric, t in tests.items():
        if t.get("p_value") is None:
            continue
        gap = abs((t["value"] or 0.0) - t["baseline"])
        ratio = gap / t["margin"] if t["margin"] else (2.0 if t["drop"] else 0.0)
        details = {"metric": metric, "value": t["value"], "baseline": t["baseline"], "margin": t["margin"],
                   "p_value": t["p_value"], "test": t["test"], "n": t["n"]}
        if segment:
            details["segment"] = segment
        yield Finding("performance_drop", f"{prefix}{metric}", bool(t["drop"]), ratio, details)


def _performance_evidence(config: Config, result: dict):
    yield from drop_findings("", result.get("drops", {}))


def _segment_performance_evidence(config: Config, result: dict):
    for field, values in result.get("segments", {}).items():
        for value, seg in values.items():
            yield from drop_findings(f"{field}={value}:", seg.get("drops", {}), {"field": field, "value": value})


def _fairness_evidence(config: Config, result: dict):
    for attr, report in result.get("fairness", {}).items():
        overall = report["overall"]
        ratio_value = overall.get("demographic_parity_ratio")
        bound = report["parity_ratio_bound"]
        yield Finding("fairness", attr, bool(report["alert"]), 0.0 if not ratio_value else bound / ratio_value, {
            "attribute": attr, "demographic_parity_ratio": ratio_value, "bound": bound,
            "demographic_parity_difference": overall.get("demographic_parity_difference"),
            "equal_opportunity_difference": overall.get("equal_opportunity_difference"),
            "equalized_odds_difference": overall.get("equalized_odds_difference"),
            "false_positive_rate_difference": overall.get("false_positive_rate_difference"),
            "max_equalized_odds_difference": report.get("max_equalized_odds_difference"),
            "p_value": overall.get("p_value"), "equalized_odds_p_value": overall.get("equalized_odds_p_value"),
            "alerts": report.get("alerts", {"demographic_parity": bool(report["alert"])}),
            "max_gap_widening": report.get("max_gap_widening"), "baseline_gaps": overall.get("baseline_gaps"),
            "widened_p_value": overall.get("widened_p_value"),
            "min_group": overall.get("min_group"), "max_group": overall.get("max_group"),
            "groups": {g: {k: v[k] for k in ("n", "positive_rate", "tpr", "fpr", "accuracy")}
                       for g, v in report["groups"].items()},
            "insufficient": report["insufficient"]})


def _label_drift_evidence(config: Config, result: dict):
    label = result.get("label_drift")
    if label is not None and label["status"] == "ok":
        yield _drift_finding("label_drift", "label", "label", label)


def _performance_summary(model: str, subject: str, details: dict, firing: bool, episode: Episode) -> str:
    if not firing:
        return f"{model}: {subject} is back within its margin; resolved"
    value = details.get("value")
    if details.get("metric") == "error_rate" or value is None:
        return f"{model}: the error rate rose (ADWIN detected a change)"
    where = f" for {details['segment']['field']}={details['segment']['value']}" if details.get("segment") else ""
    return (f"{model}: {details.get('metric')}{where} dropped to {value:.3g} (baseline {details.get('baseline'):.3g},"
            f" margin {details.get('margin'):.3g}, p={details.get('p_value'):.2g})")


def _fairness_summary(model: str, subject: str, details: dict, firing: bool, episode: Episode) -> str:
    if not firing:
        return f"{model}: fairness across {subject} is back within bounds; resolved"
    harms = []
    alerts = details.get("alerts") or {}
    if alerts.get("demographic_parity"):
        harms.append(f"demographic parity ratio {details.get('demographic_parity_ratio'):.3g} < "
                     f"{details.get('bound')} ({details.get('min_group')} vs {details.get('max_group')})")
    if alerts.get("equalized_odds"):
        gaps = [f"{what} gap {gap:.3g}" for what, gap in (
            ("TPR", details.get("equal_opportunity_difference")),
            ("FPR", details.get("false_positive_rate_difference"))) if gap is not None]
        harms.append(f"equalized odds: {', '.join(gaps)} (bound {details.get('max_equalized_odds_difference')})")
    if alerts.get("widened"):
        harms.append(f"a gap widened by more than {details.get('max_gap_widening')} beyond the baseline's")
    return f"{model}: {subject}: {'; '.join(harms) or 'fairness bound crossed'}"


PERFORMANCE_DROP = AlertSpec("performance_drop", "performance", "performance-drop", _performance_summary)
FAIRNESS = AlertSpec("fairness", "fairness", "fairness", _fairness_summary)

#: Detectors of labelled windows, in the order their sections appear in a performance window result;
#: ``build(config, baseline, tracker)`` (instead of ``background``), ``metrics`` and ``evidence`` read the
#: last performance window result.
LABELLED: dict[str, Entry] = {
    "performance": Entry(_performance, metrics=_performance_metrics, evidence=_performance_evidence,
                         alerts=(PERFORMANCE_DROP,), key=PerformanceDrops.key),
    "segment_performance": Entry(_segment_performance, metrics=_segment_performance_metrics,
                                 evidence=_segment_performance_evidence, key=SegmentPerformance.key),
    "fairness": Entry(_fairness, metrics=_fairness_metrics, evidence=_fairness_evidence, alerts=(FAIRNESS,),
                      key=FairnessGroups.key),
    "label_drift": Entry(_label_drift, evidence=_label_drift_evidence, alerts=(LABEL_DRIFT,), key=LabelDrift.key),
}


def build_labelled_detectors(config: Config, baseline, tracker) -> list:
    """The configured labelled-window detectors (prototypes: each labelled window holds fresh twins)."""
    return [d for d in (e.build(config, baseline, tracker) for e in LABELLED.values()) if d is not None]
