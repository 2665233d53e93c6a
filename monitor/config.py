"""The driftmon configuration: one validated tree, read from YAML.

Unknown keys are errors, so a misspelled key fails at start instead of being
silently ignored. Secrets never live in the file: they are read from the
environment variable (or mounted file) that the config names.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Literal

import msgspec
import yaml

from detectors.stats import EFFECT_METHODS

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_secret",
]


class ConfigError(ValueError):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as ``"10m"``, ``"30s"``, ``"1.5h"`` or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"duration must be positive, got {text!r}")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 1h)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


class _Node(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True, dict=True):
    """A config section. ``dict=True`` lets a section keep values derived at load time (the seconds
    of its durations) next to its fields; they are not fields, so they are neither read from YAML
    nor part of :meth:`Config.hash`."""


def _check_duration(value, what: str) -> float:
    """The seconds of a configured duration; a ValueError naming the key when it is not one."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"`{what}`: {exc}") from None


def _durations(node: _Node, *names: str) -> None:
    """Parse the node's duration fields once, at load: ``node.<name>_seconds`` (None when unset).

    The YAML keeps durations as text (``"10m"``); the service reads only the typed seconds.
    """
    for name in names:
        value = getattr(node, name)
        setattr(node, f"{name}_seconds", None if value is None else _check_duration(value, name))


def _check_bootstrap(servers: str | list[str]) -> None:
    """Every bootstrap server is ``host:port`` with a port in 1..65535."""
    items = [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers)
    if not items or not all(items):
        raise ValueError("`bootstrap_servers` must list at least one host:port")
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"`bootstrap_servers`: {item!r} is not host:port with a port in 1..65535")


class KafkaConfig(_Node):
    bootstrap_servers: str | list[str]
    topic: str
    group_id: str
    client_id: str = "driftmon"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = 5000
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 8_388_608
    commit_interval: str = "1s"
    lag_interval: str = "15s"
    # Records larger than this are rejected unparsed (reason too_large); Kafka's own default record limit.
    max_message_bytes: int = 1_048_576
    dead_letter_topic: str | None = None
    # Dead-letter copies are cut to this many bytes (headers driftmon-truncated, driftmon-original-bytes),
    # under the broker's default max.message.bytes (1048588) with room for the headers.
    dead_letter_max_bytes: int = 1_000_000
    # How long a checkpoint waits for dead letters to be acknowledged before counting them unconfirmed.
    dead_letter_timeout: str = "10s"
    labels_topic: str | None = None  # labels arriving later, joined to predictions by id
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    # The password is a secret: only the name of the variable or file holding it is configured.
    sasl_password_env: str = "DRIFTMON_KAFKA_SASL_PASSWORD"
    sasl_password_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # The passphrase of an encrypted ssl_keyfile is a secret too: env variable or mounted file.
    ssl_password_env: str = "DRIFTMON_KAFKA_SSL_KEY_PASSWORD"
    ssl_password_file: str | None = None
    ssl_check_hostname: bool = True
    # Broker unreachable this long (no answer to fetches or probes): /readyz turns 503 until it is back.
    unavailable_after: str = "30s"
    # The client library: kafka-python (pure Python) or confluent-kafka (librdkafka; `pip install driftmon[confluent]`).
    client: Literal["kafka-python", "confluent-kafka"] = "kafka-python"

    def __post_init__(self):
        if not self.topic.strip():
            raise ValueError("`topic` must not be empty")
        _check_bootstrap(self.bootstrap_servers)
        if not self.group_id.strip():
            raise ValueError("`group_id` must not be empty")
        if self.max_poll_records < 1:
            raise ValueError("`max_poll_records` must be at least 1")
        # What Kafka (with its default group.min/max.session.timeout.ms) or kafka-python would refuse
        # only when the consumer joins, long after start: refuse it here, naming the key.
        if not 6000 <= self.session_timeout_ms <= 1_800_000:
            raise ValueError(f"`session_timeout_ms` must be between 6000 and 1800000 (the broker's "
                             f"default group.min/max.session.timeout.ms), got {self.session_timeout_ms}")
        if not 1 <= self.max_poll_interval_ms <= 2_147_483_647:
            raise ValueError(f"`max_poll_interval_ms` must be between 1 and 2147483647, got {self.max_poll_interval_ms}")
        for key in ("fetch_max_bytes", "max_partition_fetch_bytes"):
            if not 1 <= getattr(self, key) <= 2_147_483_647:
                raise ValueError(f"`{key}` must be between 1 and 2147483647, got {getattr(self, key)}")
        _durations(self, "commit_interval")
        _durations(self, "lag_interval")
        _durations(self, "dead_letter_timeout")
        if not 1024 <= self.dead_letter_max_bytes <= 104_857_600:
            raise ValueError("`dead_letter_max_bytes` must be between 1024 and 104857600")
        if self.max_message_bytes < 1:
            raise ValueError("`max_message_bytes` must be at least 1")
        if self.dead_letter_topic is not None and not self.dead_letter_topic.strip():
            raise ValueError("`dead_letter_topic` must not be empty (leave it out to send no dead letters)")
        _durations(self, "unavailable_after")
        if self.client == "confluent-kafka":
            import importlib.util

            if importlib.util.find_spec("confluent_kafka") is None:
                raise ValueError("`client: confluent-kafka` needs the confluent-kafka package "
                                 "(pip install 'driftmon[confluent]')")
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError("`sasl_mechanism` is required with a SASL security_protocol")


class FieldRef(_Node):
    path: str | None = None
    name: str | None = None


FeatureType = Literal["numeric", "categorical"]
EffectMethod = Literal[EFFECT_METHODS["numeric"]]


class DriftPolicy(_Node):
    """Per-feature overrides of the drift decision (None: the type's default)."""

    effect_method: EffectMethod | None = None
    threshold: float | None = None
    min_events: int | None = None

    def __post_init__(self):
        if self.threshold is not None and self.threshold <= 0:
            raise ValueError("`threshold` must be positive")
        if self.min_events is not None and self.min_events < 1:
            raise ValueError("`min_events` must be at least 1")


class Feature(_Node):
    name: str
    type: Literal["numeric", "categorical", "embedding"]
    path: str | None = None
    drift: DriftPolicy = msgspec.field(default_factory=DriftPolicy)
    key: bool = False  # a key feature: sustained drift here alone recommends retraining
    weight: float = 1.0  # its share of the model's drift weight, for the retraining policy
    # embedding features only (a fixed-length list of floats; see docs/statistics.md "Embedding drift")
    dimension: int | None = None
    components: int | None = None  # principal components watched (default: 10, fewer than the dimension)
    methods: list[Literal["mean_distance", "histograms"]] = msgspec.field(
        default_factory=lambda: ["mean_distance", "histograms"])

    def __post_init__(self):
        if not self.name:
            raise ValueError("`name` must not be empty")
        if self.type == "categorical" and self.drift.effect_method not in (None, *EFFECT_METHODS["categorical"]):
            raise ValueError(f"`drift.effect_method` {self.drift.effect_method} needs a numeric feature")
        if self.type == "embedding":
            if self.dimension is None or self.dimension < 2:
                raise ValueError("`dimension` (the vector length, at least 2) is required for an embedding feature")
            if self.components is None:
                self.components = min(10, self.dimension - 1)  # leave a residual to watch
            if not 1 <= self.components <= self.dimension:
                raise ValueError("`components` must be between 1 and `dimension`")
            if not self.methods or len(set(self.methods)) != len(self.methods):
                raise ValueError("`methods` must list distinct embedding methods")
            if self.drift.effect_method is not None:
                raise ValueError("`drift.effect_method` does not apply to an embedding feature")
        elif self.dimension is not None:
            raise ValueError("`dimension` applies only to embedding features")

    @property
    def source(self) -> str:
        return self.path or self.name


class Column(_Node):
    name: str
    type: FeatureType = "numeric"
    path: str | None = None
    drift: DriftPolicy = msgspec.field(default_factory=DriftPolicy)

    @property
    def source(self) -> str:
        return self.path or self.name


class SchemaConfig(_Node):
    features: list[Feature]
    id: FieldRef | None = None
    timestamp: FieldRef | None = None
    prediction: Column | None = None
    score: Column | None = None
    label: Column | None = None

    def __post_init__(self):
        if not self.features:
            raise ValueError("`features` must list at least one feature")
        seen: set[str] = set()
        for feature in self.features:
            if feature.name in seen:
                raise ValueError(f"`features`: duplicate feature name {feature.name!r}")
            seen.add(feature.name)
        if self.score is not None and self.score.type != "numeric":
            raise ValueError("`score.type` must be numeric")

    def columns(self) -> list[tuple[str, Column | Feature]]:
        """Every monitored scalar column as (role, spec): features first, then prediction, score, label.

        Embedding features are not columns: see :meth:`embeddings`.
        """
        out: list[tuple[str, Column | Feature]] = [("feature", f) for f in self.features if f.type != "embedding"]
        for role in ("prediction", "score", "label"):
            spec = getattr(self, role)
            if spec is not None:
                out.append((role, spec))
        return out


    def embeddings(self) -> list[Feature]:
        """The embedding features."""
        return [f for f in self.features if f.type == "embedding"]


class MultivariateConfig(_Node):
    """Drift across features together (see docs/statistics.md "Multivariate drift"); off when absent."""

    methods: list[Literal["pca_reconstruction", "domain_classifier"]] = msgspec.field(
        default_factory=lambda: ["pca_reconstruction"])
    features: list[str] | None = None  # default: every numeric and categorical feature
    alpha: float | None = None  # false-alarm rate per window of each method (default: drift.alpha)
    variance: float = 0.65  # pca_reconstruction: share of the variance the kept components explain
    threshold: float = 0.1  # pca_reconstruction: shift of the mean error, in stds of the per-row error
    auc_threshold: float = 0.55  # domain_classifier: held-out ROC AUC that counts as drift
    sample_size: int = 1000  # domain_classifier: rows sampled per window and from the baseline
    min_interval: str = "1m"  # domain_classifier: at most one evaluation per interval (daemon; replay: every window)

    def __post_init__(self):
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError("`methods` must list distinct methods")
        if self.features is not None and len(self.features) < 2:
            raise ValueError("`features` must list at least two features")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError("`alpha` must be between 0 and 1")
        if not 0 < self.variance < 1:
            raise ValueError("`variance` must be between 0 and 1")
        if self.threshold < 0:
            raise ValueError("`threshold` must not be negative")
        if not 0.5 <= self.auc_threshold <= 1:
            raise ValueError("`auc_threshold` must be between 0.5 and 1")
        if not 20 <= self.sample_size <= 100_000:
            raise ValueError("`sample_size` must be between 20 and 100000")
        _durations(self, "min_interval")


class TypeDefaults(_Node):
    effect_method: EffectMethod
    threshold: float


class DriftConfig(_Node):
    """Decision rule shared by every feature (see docs/statistics.md)."""

    alpha: float = 0.01
    min_events: int = 100
    bins: int = 20
    max_categories: int = 50
    numeric: TypeDefaults = msgspec.field(
        default_factory=lambda: TypeDefaults(effect_method="wasserstein", threshold=0.1)
    )
    categorical: TypeDefaults = msgspec.field(
        default_factory=lambda: TypeDefaults(effect_method="jensen_shannon", threshold=0.05)
    )

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError("`alpha` must be between 0 and 1")
        if self.bins < 2:
            raise ValueError("`bins` must be at least 2")
        if self.min_events < 1:
            raise ValueError("`min_events` must be at least 1")
        if self.categorical.effect_method not in EFFECT_METHODS["categorical"]:
            raise ValueError(f"`categorical.effect_method` must be one of {', '.join(EFFECT_METHODS['categorical'])}")


class WindowConfig(_Node):
    size: int | None = None
    duration: str | None = None
    grace: str = "0s"  # how long a time window stays open for late events after its end

    def __post_init__(self):
        if (self.size is None) == (self.duration is None):
            raise ValueError("set exactly one of `size` (events) or `duration` (e.g. 10m)")
        if self.size is not None and self.size < 1:
            raise ValueError("`size` must be at least 1")
        _durations(self, "duration")
        # no grace is the one duration that may be zero
        self.grace_seconds = 0.0 if self.grace in ("0", "0s") else _check_duration(self.grace, "grace")


class HttpConfig(_Node):
    host: str = "0.0.0.0"
    port: int = 9108
    # TLS and basic auth: a Prometheus exporter-toolkit web configuration file (monitor/webconfig.py).
    web_config_file: str | None = None
    request_timeout: str = "10s"  # from accept to the response written; idle and slow clients are dropped
    max_connections: int = 64  # open at once; past it the connection idle the longest is closed

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError("`port` must be between 0 and 65535")
        _durations(self, "request_timeout")
        if not 1 <= self.max_connections <= 10_000:
            raise ValueError("`max_connections` must be between 1 and 10000")


class StateConfig(_Node):
    dir: str = "state"
    checkpoint_interval: str = "10s"

    def __post_init__(self):
        _durations(self, "checkpoint_interval")


class Webhook(_Node):
    url: str
    timeout: str = "5s"

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("`url` must start with http:// or https://")
        _durations(self, "timeout")


#: Every alert kind, the one definition (sinks' `alerts:` filters, the engine's per-kind counts).
ALERT_KINDS = ("feature_drift", "prediction_drift", "label_drift", "data_quality", "retrain_recommended",
               "performance_drop", "fairness", "multivariate_drift")
AlertKind = Literal[ALERT_KINDS]


class Sink(_Node):
    """Where notifications go. Secrets (HMAC key, PagerDuty routing key) come from env or a mounted file."""

    type: Literal["webhook", "slack", "pagerduty", "alertmanager", "kafka"]
    name: str | None = None  # the `sink` metric label; default type-index
    url: str | None = None
    topic: str | None = None  # kafka
    alerts: list[AlertKind] | None = None  # which kinds; default all (kafka: retrain_recommended)
    timeout: str = "5s"
    hmac_secret_env: str | None = None
    hmac_secret_file: str | None = None
    routing_key_env: str = "DRIFTMON_PAGERDUTY_ROUTING_KEY"
    routing_key_file: str | None = None
    # Alertmanager: a firing alert's endsAt is `alertmanager_ttl` ahead; driftmon re-sends every active alert
    # every `alertmanager_resend` on the wall clock, so it expires only when driftmon stops sending it.
    alertmanager_ttl: str = "5m"
    alertmanager_resend: str = "1m"

    def __post_init__(self):
        if self.type == "kafka":
            if not self.topic:
                raise ValueError("`topic` is required for a kafka sink")
        elif self.type != "pagerduty" and not self.url:
            raise ValueError(f"`url` is required for a {self.type} sink")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("`url` must start with http:// or https://")
        _durations(self, "timeout")
        _durations(self, "alertmanager_ttl")
        _durations(self, "alertmanager_resend")
        if self.type == "alertmanager":
            ttl, resend = self.alertmanager_ttl_seconds, self.alertmanager_resend_seconds
            if resend <= 0:
                raise ValueError("`alertmanager_resend` must be positive")
            # Two resends in a row may fail (or wait out a slow Alertmanager) before the alert expires there:
            # a shorter TTL lets Alertmanager resolve an alert that driftmon still holds firing.
            if ttl < 3 * resend + self.timeout_seconds:
                raise ValueError(f"`alertmanager_ttl` ({self.alertmanager_ttl}) must be at least 3 x "
                                 f"`alertmanager_resend` ({self.alertmanager_resend}) + `timeout` ({self.timeout}), "
                                 "or Alertmanager resolves alerts that are still firing")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise ValueError("`name` must be 1-64 characters of letters, digits, _ . -")

    def kinds(self) -> tuple[str, ...]:
        if self.alerts is not None:
            return tuple(self.alerts)
        return ("retrain_recommended",) if self.type == "kafka" else ALERT_KINDS


class DataQualityThresholds(_Node):
    """A `data_quality` alert fires when a window passes one of these (0..1 shares)."""

    missing_ratio: float = 0.05  # increase of the missing share over the baseline's
    out_of_range_ratio: float = 0.05
    unseen_ratio: float = 0.05
    invalid_ratio: float = 0.01  # of the messages consumed while the window was open

    def __post_init__(self):
        for key in ("missing_ratio", "out_of_range_ratio", "unseen_ratio", "invalid_ratio"):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f"`{key}` must be in (0, 1]")


class RetrainPolicy(_Node):
    """When to recommend retraining (see docs/alerting.md)."""

    windows: int = 3  # K: drift must be sustained this many consecutive windows
    drift_weight_share: float = 0.3  # share of the total feature weight that is in sustained drift
    on_critical_prediction_drift: bool = True

    def __post_init__(self):
        if self.windows < 1:
            raise ValueError("`windows` must be at least 1")
        if not 0 < self.drift_weight_share <= 1:
            raise ValueError("`drift_weight_share` must be in (0, 1]")


class FlappingPolicy(_Node):
    """When an alert subject flaps (see docs/alerting.md): the share of state changes over its last windows."""

    windows: int = 20  # N: judged windows remembered per subject
    high: float = 0.15  # flapping starts at this share of changes (3 of the 19 pairs of 20 windows)
    low: float = 0.1  # and ends at or below this one (at most 1 change in 20 windows)
    min_bad: float = 0.2  # and starts only with at least this share of them bad (4 of 20): scattered noise is not flapping

    def __post_init__(self):
        if self.windows < 3:
            raise ValueError("`windows` must be at least 3")
        if not 0 <= self.low < self.high <= 1:
            raise ValueError("need 0 <= `low` < `high` <= 1")
        if not 0 <= self.min_bad <= 1:
            raise ValueError("`min_bad` must be in [0, 1]")


class OutboxConfig(_Node):
    max_pending: int = 10_000
    backoff_initial: str = "1s"
    backoff_max: str = "60s"

    def __post_init__(self):
        if self.max_pending < 1:
            raise ValueError("`max_pending` must be at least 1")
        _durations(self, "backoff_initial")
        _durations(self, "backoff_max")


class AlertsConfig(_Node):
    webhooks: list[Webhook] = msgspec.field(default_factory=list)  # shorthand for sinks of type webhook
    sinks: list[Sink] = msgspec.field(default_factory=list)
    fire_after: int = 2  # consecutive drifted windows before an alert fires
    resolve_after: int = 3  # consecutive clean windows before it resolves
    repeat_interval: str = "4h"
    # false drift pages a week that on-call accepts; when set, the per-window level (drift.alpha) is derived
    # from it, the observed window rate, the paging families and the hysteresis (monitor/budget.py)
    false_pages_per_week: float | None = None
    critical_ratio: float = 2.0  # evidence this many times its threshold makes an alert critical
    runbook_url: str = "https://github.com/driftmon/driftmon/blob/main/docs/runbook.md"
    data_quality: DataQualityThresholds = msgspec.field(default_factory=DataQualityThresholds)
    retrain: RetrainPolicy = msgspec.field(default_factory=RetrainPolicy)
    flapping: FlappingPolicy = msgspec.field(default_factory=FlappingPolicy)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)

    def __post_init__(self):
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ValueError("`fire_after` and `resolve_after` must be at least 1")
        if self.critical_ratio <= 1:
            raise ValueError("`critical_ratio` must be above 1")
        if self.false_pages_per_week is not None and not 0 < self.false_pages_per_week < float("inf"):
            raise ValueError("`false_pages_per_week` must be a positive number")
        _durations(self, "repeat_interval")
        names = [s.name for s in self.all_sinks()]
        if len(set(names)) != len(names):
            raise ValueError("`sinks`: sink names must be unique")

    def all_sinks(self) -> list[Sink]:
        """Configured sinks, webhooks shorthand included, each with its name set."""
        sinks = [Sink(type="webhook", url=w.url, timeout=w.timeout) for w in self.webhooks] + list(self.sinks)
        out = []
        for i, sink in enumerate(sinks):
            out.append(sink if sink.name else msgspec.structs.replace(sink, name=f"{sink.type}-{i}"))
        return out


class LabelsConfig(_Node):
    """Ground truth: inline on the prediction message, or late on `kafka.labels_topic`."""

    id_path: str | None = None  # id in label messages (default: schema.id.path)
    timestamp_path: str | None = None  # event time in label messages (default: the broker timestamp)
    ttl: str = "7d"  # how long a prediction waits for its label
    max_pending: int = 10_000_000  # predictions plus early labels waiting (on disk); the oldest are evicted past it
    window: int = 1000  # labelled predictions per performance window
    # event-time performance windows instead (e.g. 10m): a joined prediction counts in the window of its join
    # time, max(prediction time, label time); required with cluster.enabled (count windows are per process)
    window_duration: str | None = None
    positive: str | None = None  # the positive class of a binary classifier (default: the baseline's minority)
    threshold: float = 0.5  # score threshold for the positive class (confidence-based estimation)

    def __post_init__(self):
        _durations(self, "ttl", "window_duration")
        if self.window_duration_seconds is not None and self.window_duration_seconds <= 0:
            raise ValueError("`window_duration` must be positive")
        if self.max_pending < 1 or self.window < 1:
            raise ValueError("`max_pending` and `window` must be at least 1")
        if not 0 < self.threshold < 1:
            raise ValueError("`threshold` must be between 0 and 1")


class PerformanceConfig(_Node):
    """When a metric counts as dropped (see docs/performance.md)."""

    metrics: list[Literal["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece",
                          "mae", "rmse", "mape", "r2"]] | None = None
    margin: float = 0.05  # absolute drop below the baseline that matters
    alpha: float = 0.01  # one-sided test that the drop exceeds the margin
    error_delta: float = 0.002  # ADWIN confidence of the in-window error-rate detector

    def __post_init__(self):
        if self.margin < 0:
            raise ValueError("`margin` must not be negative")
        if not 0 < self.alpha < 1:
            raise ValueError("`alpha` must be between 0 and 1")


class Segment(_Node):
    name: str
    path: str | None = None
    max_values: int = 10  # the baseline's most frequent values; the rest are "other"

    def __post_init__(self):
        if not 1 <= self.max_values <= 100:
            raise ValueError("`max_values` must be between 1 and 100")

    @property
    def source(self) -> str:
        return self.path or self.name


class FairnessConfig(_Node):
    attributes: list[Segment]
    favourable: str = "1"  # the prediction value that benefits the subject (e.g. the loan is approved)
    parity_ratio_bound: float = 0.8  # the four-fifths rule
    # alert when a TPR or FPR gap between groups is shown to exceed this (0.1 is customary); null: never
    max_equalized_odds_difference: float | None = 0.1
    # with group rates in the baseline (`baseline --validation` data that has the attributes): alert when a
    # gap is shown to exceed the baseline's same gap by more than this; null (the default): no such alert
    max_gap_widening: float | None = None
    min_group_size: int | None = None  # default 385: a rate's 95% interval is at most +-0.05 wide
    alpha: float = 0.05

    def __post_init__(self):
        if not self.attributes:
            raise ValueError("`attributes` must list at least one attribute")
        if not 0 < self.parity_ratio_bound <= 1:
            raise ValueError("`parity_ratio_bound` must be in (0, 1]")
        if self.max_equalized_odds_difference is not None and not 0 <= self.max_equalized_odds_difference < 1:
            raise ValueError("`max_equalized_odds_difference` must be in [0, 1)")
        if self.max_gap_widening is not None and not 0 <= self.max_gap_widening < 1:
            raise ValueError("`max_gap_widening` must be in [0, 1)")


class ClusterConfig(_Node):
    """Scale-out (docs/DESIGN.md, "Scale-out"): replicas are workers that produce per-partition window
    partials to an internal topic; the replica assigned that topic's partition merges them and alone
    evaluates, exports the global metrics and alerts. Internal names default from ``kafka.topic``,
    ``model`` and ``kafka.group_id``."""

    enabled: bool = False
    partials_topic: str | None = None  # default <kafka.topic>.driftmon.<model>.partials
    changelog_topic: str | None = None  # default <kafka.topic>.driftmon.<model>.aggregator (compacted)
    # with labels: the workers' pending joins and open windows, one partition per source partition (compacted)
    join_changelog_topic: str | None = None  # default <kafka.topic>.driftmon.<model>.join
    aggregator_group_id: str | None = None  # default <kafka.group_id>-aggregator
    # how long after a window's end the aggregator waits for partitions that have not reported past it
    grace: str = "30s"
    create_topics: bool = True  # create the two internal topics at start when they are missing
    replication_factor: int = -1  # of created internal topics; -1: the broker's default

    def __post_init__(self):
        _durations(self, "grace")
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ValueError("`replication_factor` must be -1 (the broker's default) or at least 1")

    def names(self, topic: str, model: str, group_id: str) -> tuple[str, str, str]:
        """(partials topic, changelog topic, aggregator group) with the defaults filled in."""
        return (self.partials_topic or f"{topic}.driftmon.{model}.partials",
                self.changelog_topic or f"{topic}.driftmon.{model}.aggregator",
                self.aggregator_group_id or f"{group_id}-aggregator")


class Config(_Node):
    model: str
    schema: SchemaConfig
    baseline: str
    window: WindowConfig
    kafka: KafkaConfig | None = None
    drift: DriftConfig = msgspec.field(default_factory=DriftConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    labels: LabelsConfig = msgspec.field(default_factory=LabelsConfig)
    performance: PerformanceConfig = msgspec.field(default_factory=PerformanceConfig)
    segments: list[Segment] = msgspec.field(default_factory=list)
    fairness: FairnessConfig | None = None
    multivariate: MultivariateConfig | None = None
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", self.model):
            raise ValueError("`model` must be 1-128 characters of letters, digits, _ . : -")
        if self.kafka is not None and self.kafka.labels_topic:
            if self.schema.label is None:
                raise ValueError("`schema.label` is required with `kafka.labels_topic`")
            if self.schema.id is None:
                raise ValueError("`schema.id` is required to join labels from `kafka.labels_topic`")
        if self.fairness is not None and self.schema.prediction is None:
            raise ValueError("`fairness` needs `schema.prediction`")
        extras = list(self.segments) + list(self.fairness.attributes if self.fairness else [])
        taken = {spec.name: spec.source for _role, spec in self.schema.columns()}
        # the same field may be a feature, a segment and a fairness attribute; a name may not mean two fields
        clash = [e.name for e in extras if e.name in taken and taken[e.name] != e.source]
        if clash:
            raise ValueError(f"segment/fairness names that are monitored columns must read the same field: {clash}")
        if self.multivariate is not None:
            tabular = [f.name for f in self.schema.features if f.type != "embedding"]
            unknown = [n for n in self.multivariate.features or [] if n not in tabular]
            if unknown:
                raise ValueError(f"`multivariate.features`: not numeric or categorical features: {unknown}")
            if len(self.multivariate_features()) < 2:
                raise ValueError("`multivariate` needs at least two numeric or categorical features")
        if self.cluster.enabled:
            self._check_cluster()

    def _check_cluster(self) -> None:
        """What scale-out merges today (docs/DESIGN.md, "Scale-out"); the rest is refused, not approximated."""
        if self.kafka is None:
            raise ValueError("`cluster.enabled` needs a `kafka` section")
        if self.window.duration is None:
            raise ValueError("`cluster.enabled` needs `window.duration`: count windows are per process "
                             "(the n-th event of a partition says nothing about the others)")
        # PCA reconstruction and embedding drift merge exactly (sums and fixed-bin counts add); the domain
        # classifier's merged sample is a sample of the union, not the one a single process draws
        if self.multivariate is not None and "domain_classifier" in self.multivariate.methods:
            raise ValueError("`cluster.enabled`: `multivariate.methods: domain_classifier` is not merged exactly "
                             "across replicas (a pooled sample, not the one process's); use pca_reconstruction")
        if self.schema.label is not None and self.schema.prediction is not None \
                and self.labels.window_duration is None:
            raise ValueError("`cluster.enabled` with labels needs `labels.window_duration`: count windows of "
                             "labelled predictions are per process (the n-th join of a partition says nothing "
                             "about the others)")

    def multivariate_features(self) -> list:
        """The features the multivariate methods watch (empty when they are off)."""
        if self.multivariate is None:
            return []
        chosen = self.multivariate.features
        return [f for f in self.schema.features if f.type != "embedding" and (chosen is None or f.name in chosen)]

    @property
    def labels_on_topic(self) -> bool:
        return bool(self.kafka is not None and self.kafka.labels_topic)

    def drift_columns(self) -> list:
        """Columns read from prediction messages and compared window by window (label only when inline)."""
        return [(role, spec) for role, spec in self.schema.columns()
                if not (role == "label" and self.labels_on_topic)]

    def extra_columns(self) -> list[Segment]:
        """Segment and fairness fields read from prediction messages (no drift statistics of their own)."""
        out = {s.name: s for s in self.segments}
        for a in self.fairness.attributes if self.fairness else []:
            out.setdefault(a.name, a)
        return list(out.values())

    def hash(self) -> str:
        """sha256 of the canonical config, to tie results and triggers to the config that made them."""
        return "sha256:" + hashlib.sha256(msgspec.json.encode(self, order="sorted")).hexdigest()


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_FIELD_FIRST = re.compile(r"^`(?P<field>[A-Za-z_][A-Za-z0-9_]*)`:?\s+(?P<rest>.+)$", re.S)
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")


def _readable(error: msgspec.ValidationError) -> ConfigError:
    """Turn msgspec's message into ``key.path: problem``."""
    match = _AT.match(str(error))
    message, path = match.group("msg"), (match.group("path") or "")
    key = re.sub(r"\[(\d+)\]", r"[\1]", path.lstrip("."))
    for pattern, problem in ((_UNKNOWN, "unknown key (check the spelling)"), (_MISSING, "required key is missing")):
        found = pattern.match(message)
        if found:
            key = f"{key}.{found.group('field')}" if key else found.group("field")
            return ConfigError(key, problem)
    field = _FIELD_FIRST.match(message)  # "`session_timeout_ms` must be ...": name the field itself
    if field:
        key = f"{key}.{field.group('field')}" if key else field.group("field")
        message = field.group("rest")
    message = message.replace("`", "")
    return ConfigError(key or "(top level)", message[:1].lower() + message[1:])


def parse_config(data: object) -> Config:
    """Validate a parsed YAML tree; raise ConfigError naming the key on any problem."""
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "the config must be a mapping of keys")
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise _readable(exc) from None


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file.

    Relative paths in the config (``baseline``, ``state.dir``) are resolved
    against the config file's folder, so a config works from any cwd.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    config = parse_config(data)
    base = os.path.dirname(os.path.abspath(path))
    config.baseline = os.path.join(base, config.baseline)
    config.state.dir = os.path.join(base, config.state.dir)
    if config.http.web_config_file:
        config.http.web_config_file = os.path.join(base, config.http.web_config_file)
    if config.kafka is not None:  # certificates, keys and secret files too
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password_file", "sasl_password_file"):
            if getattr(config.kafka, key):
                setattr(config.kafka, key, os.path.join(base, getattr(config.kafka, key)))
    return config


def read_secret(env: str | None, path: str | None, key: str, required: bool = False) -> str | None:
    """A secret from the mounted file ``path``, else from the environment variable ``env``.

    The one reader of secrets (Kafka passwords, sink keys), so none is ever logged or kept in the config.

    Parameters
    ----------
    env, path : str or None
        The configured variable name and file (the file wins when both are set).
    key : str
        The config key naming the variable (``..._env``); an unreadable file is reported under its
        ``..._file`` twin.
    required : bool
        A configured variable that is unset or empty is an error (else None is returned).
    """
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ConfigError(key.replace("_env", "_file"), f"cannot read {path}: {exc.strerror}") from None
    if not env:
        return None
    value = os.environ.get(env)
    if required and not value:
        raise ConfigError(key, f"environment variable {env} is not set")
    return value


def ssl_key_password(kafka: KafkaConfig) -> str | None:
    """The passphrase of ``kafka.ssl_keyfile`` (None when neither its variable nor its file is set)."""
    return read_secret(kafka.ssl_password_env, kafka.ssl_password_file, "kafka.ssl_password_env")


def kafka_secrets(kafka: KafkaConfig) -> dict:
    """Client options holding secrets, read from the environment or a mounted file."""
    if not kafka.security_protocol.startswith("SASL"):
        return {}
    password = read_secret(kafka.sasl_password_env, kafka.sasl_password_file, "kafka.sasl_password_env")
    if kafka.sasl_mechanism != "OAUTHBEARER" and not password:
        raise ConfigError(
            "kafka.sasl_password_env",
            f"no SASL password: set the environment variable {kafka.sasl_password_env} or kafka.sasl_password_file",
        )
    return {"sasl_plain_password": password}
