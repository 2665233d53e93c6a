import subprocess
import sys

import pytest
import yaml

from monitor.config import ConfigError, parse_config, parse_duration
from monitor.synth import car_loan


def base() -> dict:
    return car_loan().config(kafka={"bootstrap_servers": "127.0.0.1:9092", "topic": "t", "group_id": "g"})


def error_of(tree) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(tree)
    return info.value


def test_valid_config_parses_with_defaults():
    config = parse_config(base())
    assert config.model == "car-loan"
    assert config.window.size == 5000
    assert config.drift.alpha == 0.01
    assert config.drift.numeric.effect_method == "wasserstein"
    assert config.http.port == 9108
    assert [f.name for f in config.schema.features][:2] == ["car_value", "salary_range"]
    assert config.schema.features[2].source == "inputs.dti"


def test_unknown_key_is_named():
    tree = base()
    tree["windw"] = {"size": 3}
    err = error_of(tree)
    assert err.key == "windw" and "unknown key" in err.problem


def test_nested_unknown_key_is_named_with_its_path():
    tree = base()
    tree["kafka"]["bootstrap_server"] = "x"
    assert error_of(tree).key == "kafka.bootstrap_server"


def test_wrong_type_names_the_key():
    tree = base()
    tree["window"] = {"size": "big"}
    err = error_of(tree)
    assert err.key == "window.size" and "int" in err.problem


def test_missing_required_key():
    tree = base()
    del tree["model"]
    err = error_of(tree)
    assert err.key == "model" and "missing" in err.problem


def test_window_needs_exactly_one_of_size_or_duration():
    tree = base()
    tree["window"] = {"size": 10, "duration": "5m"}
    err = error_of(tree)
    assert err.key == "window" and "exactly one" in err.problem


def test_bad_feature_type_names_the_list_index():
    tree = base()
    tree["schema"]["features"][1]["type"] = "text"
    err = error_of(tree)
    assert err.key == "schema.features[1].type"


def test_duplicate_features_rejected():
    tree = base()
    tree["schema"]["features"].append(dict(tree["schema"]["features"][0]))
    assert "duplicate" in error_of(tree).problem


def test_categorical_cannot_use_numeric_effect():
    tree = base()
    tree["schema"]["features"][1]["drift"] = {"effect_method": "wasserstein"}
    assert error_of(tree).key == "schema.features[1]"


def test_per_feature_threshold_is_accepted():
    tree = base()
    tree["schema"]["features"][0]["drift"] = {"threshold": 0.3, "min_events": 50}
    feature = parse_config(tree).schema.features[0]
    assert feature.drift.threshold == 0.3 and feature.drift.min_events == 50


def test_secret_is_not_a_config_key():
    tree = base()
    tree["kafka"]["sasl_plain_password"] = "hunter2"
    assert error_of(tree).key == "kafka.sasl_plain_password"


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("30s", 30), ("1.5h", 5400), ("250ms", 0.25), (7, 7)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "ten minutes", "-5s", "0s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_check_config_cli_exits_nonzero_and_names_key(tmp_path):
    tree = base()
    tree["http"] = {"port": "nine"}
    path = tmp_path / "driftmon.yaml"
    path.write_text(yaml.safe_dump(tree))
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "--config", str(path), "--no-baseline"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "config error: http.port:" in proc.stderr


def test_check_config_cli_reports_missing_baseline(tmp_path):
    path = tmp_path / "driftmon.yaml"
    path.write_text(yaml.safe_dump(base()))
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "--config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "baseline.json" in proc.stderr


def test_sasl_without_password_fails_at_start(monkeypatch):
    from monitor.kafka_client import client_options

    tree = base()
    tree["kafka"].update(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_plain_username="u")
    config = parse_config(tree)
    monkeypatch.delenv("DRIFTMON_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as info:
        client_options(config.kafka)
    assert info.value.key == "kafka.sasl_password_env"
    monkeypatch.setenv("DRIFTMON_KAFKA_SASL_PASSWORD", "s3cret")
    assert client_options(config.kafka)["sasl_plain_password"] == "s3cret"


@pytest.mark.parametrize("key,value,words", [
    ("max_message_bytes", 0, "max_message_bytes"),
    ("max_message_bytes", "1MiB", "kafka.max_message_bytes"),
    ("dead_letter_topic", " ", "dead_letter_topic"),
    ("dead_letter_max_bytes", 100, "dead_letter_max_bytes"),
    ("dead_letter_timeout", "soon", "dead_letter_timeout"),
])
def test_record_limits_are_validated_by_check_config(tmp_path, key, value, words):
    tree = base()
    tree["kafka"][key] = value
    path = tmp_path / "driftmon.yaml"
    path.write_text(yaml.safe_dump(tree))
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "--config", str(path), "--no-baseline"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("config error: kafka") and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cluster_is_off_by_default_and_refuses_what_it_cannot_merge():
    base = {"model": "m", "baseline": "b.json", "schema": {"features": [{"name": "x", "type": "numeric"}]},
            "kafka": {"bootstrap_servers": "k:9092", "topic": "preds", "group_id": "g"}}
    config = parse_config({**base, "window": {"duration": "1m"}})
    assert config.cluster.enabled is False and "cluster" not in config.hash()  # unchanged hash without it
    on = parse_config({**base, "window": {"duration": "1m"}, "cluster": {"enabled": True}})
    assert on.cluster.names("preds", "m", on.kafka.group_id) == (
        "preds.driftmon.m.partials", "preds.driftmon.m.aggregator", f"{on.kafka.group_id}-aggregator")
    assert on.cluster.grace_seconds == 30.0
    with pytest.raises(ConfigError, match="window.duration"):
        parse_config({**base, "window": {"size": 100}, "cluster": {"enabled": True}})
    with pytest.raises(ConfigError, match="kafka"):
        parse_config({k: v for k, v in base.items() if k != "kafka"} | {"window": {"duration": "1m"},
                                                                         "cluster": {"enabled": True}})
    with pytest.raises(ConfigError, match="cluster.replication_factor"):
        parse_config({**base, "window": {"duration": "1m"}, "cluster": {"enabled": True, "replication_factor": 0}})
    # PCA reconstruction and embeddings merge exactly; the domain classifier's pooled sample does not
    two = {**base, "schema": {"features": [{"name": "x", "type": "numeric"}, {"name": "y", "type": "numeric"},
                                           {"name": "e", "type": "embedding", "dimension": 4}]},
           "window": {"duration": "1m"}, "cluster": {"enabled": True}}
    assert parse_config({**two, "multivariate": {"methods": ["pca_reconstruction"]}}).cluster.enabled
    # labels: event-time performance windows (count windows are per process)
    labelled = {**base, "window": {"duration": "1m"}, "cluster": {"enabled": True},
                "schema": {"id": {"path": "id"}, "features": [{"name": "x", "type": "numeric"}],
                           "prediction": {"name": "p", "type": "categorical"},
                           "label": {"name": "y", "type": "categorical"}},
                "kafka": {**base["kafka"], "labels_topic": "outcomes"}}
    with pytest.raises(ConfigError, match="cluster.enabled with labels needs labels.window_duration"):
        parse_config(labelled)
    assert parse_config({**labelled, "labels": {"window_duration": "10m"}}).labels.window_duration_seconds == 600
    with pytest.raises(ConfigError, match="cluster.enabled: multivariate.methods: domain_classifier"):
        parse_config({**two, "multivariate": {"methods": ["pca_reconstruction", "domain_classifier"]}})
