"""Multivariate and embedding drift through the service: config, baseline artefacts, replay, checkpoints.

The stream's second half flips the correlation of two features (marginals unchanged) and moves an
embedding's first latent factor: the univariate features stay quiet, the multivariate methods and the
embedding feature do not.
"""

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from monitor.baseline import Baseline
from monitor.config import ConfigError, parse_config
from monitor.pipeline import Pipeline
from tests.helpers import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
DIM = 32
LOADINGS = np.random.default_rng(99).normal(size=(4, DIM))
WINDOW = 2000


def rows(rng, n, flipped=False):
    a, b = rng.normal(size=(2, n))
    rho = -0.8 if flipped else 0.8
    z = rng.normal(size=(n, 4)) * [2.0, 1.5, 1.0, 0.5]
    if flipped:
        z[:, 0] += 0.5  # a quarter of the first factor's std
    return {"x0": a, "x1": rho * a + 0.6 * b, "x2": rng.lognormal(0, 1, n),
            "plan": np.array(["basic", "plus", "pro"])[rng.integers(0, 3, n)],
            "emb": z @ LOADINGS + 0.2 * rng.normal(size=(n, DIM))}


def messages(rng, n, flipped=False):
    r = {k: v.tolist() for k, v in rows(rng, n, flipped).items()}
    return [msgspec.json.encode({"id": f"m{i}", "inputs": {"x0": r["x0"][i], "x1": r["x1"][i], "x2": r["x2"][i],
                                                           "plan": r["plan"][i]}, "emb": r["emb"][i]})
            for i in range(n)]


def config_tree(**multivariate):
    return {
        "model": "mv-test",
        "schema": {"id": {"path": "id"}, "features": [
            {"name": "x0", "type": "numeric", "path": "inputs.x0"},
            {"name": "x1", "type": "numeric", "path": "inputs.x1"},
            {"name": "x2", "type": "numeric", "path": "inputs.x2"},
            {"name": "plan", "type": "categorical", "path": "inputs.plan"},
            {"name": "emb", "type": "embedding", "dimension": DIM, "components": 4}]},
        "baseline": "baseline.json",
        "window": {"size": WINDOW},
        # a small false-alarm rate, so the drift-free windows are quiet whatever the seed (the calibration
        # itself is tested in tests/test_detectors_multivariate.py and tests/test_detectors_embedding.py)
        "drift": {"alpha": 0.001},
        "multivariate": {"methods": ["pca_reconstruction", "domain_classifier"], "sample_size": 500, **multivariate},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mv")
    r = rows(np.random.default_rng(1), 20_000)
    table = pa.table({"x0": r["x0"], "x1": r["x1"], "x2": r["x2"], "plan": r["plan"],
                      "emb": pa.array(r["emb"].tolist(), type=pa.list_(pa.float64()))})
    pq.write_table(table, tmp / "train.parquet")
    (tmp / "driftmon.yaml").write_text(yaml.safe_dump(config_tree()))
    subprocess.run([sys.executable, "-m", "monitor.cli", "baseline", "--config", str(tmp / "driftmon.yaml"),
                    "--data", str(tmp / "train.parquet"), "--out", str(tmp / "baseline.json")], check=True)
    rng = np.random.default_rng(2)
    write_jsonl(tmp / "stream.jsonl", messages(rng, 3 * WINDOW) + messages(rng, 3 * WINDOW, flipped=True))
    return tmp


def test_config_shape_and_errors():
    config = parse_config(config_tree())
    assert [f.name for f in config.multivariate_features()] == ["x0", "x1", "x2", "plan"]
    assert [s.name for _r, s in config.schema.columns()] == ["x0", "x1", "x2", "plan"]  # no embedding column
    assert parse_config({k: v for k, v in config_tree().items() if k != "multivariate"}).multivariate is None
    bad = [
        ({"methods": ["pca"]}, "multivariate.methods"),
        ({"features": ["x0", "emb"]}, "multivariate.features"),
        ({"features": ["x0"]}, "at least two"),
        ({"auc_threshold": 0.3}, "auc_threshold"),
        ({"min_interval": "soon"}, "min_interval"),
        ({"sample_size": 5}, "sample_size"),
    ]
    for override, needle in bad:
        with pytest.raises(ConfigError, match=needle):
            parse_config(config_tree(**override))
    tree = config_tree()
    tree["schema"]["features"][4].pop("dimension")
    with pytest.raises(ConfigError, match="dimension"):
        parse_config(tree)


def test_replay_reports_multivariate_and_embedding_drift(setup):
    tmp = setup
    subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--config", str(tmp / "driftmon.yaml"),
                    "--input", str(tmp / "stream.jsonl"), "--out", str(tmp / "windows.jsonl"),
                    "--alerts", str(tmp / "alerts.jsonl")], check=True)
    windows = read_jsonl(tmp / "windows.jsonl")
    assert len(windows) == 6
    for i, w in enumerate(windows):
        mv, emb = w["multivariate"], w["embeddings"]["emb"]
        pca, clf = mv["pca_reconstruction"], mv["domain_classifier"]
        assert pca["status"] == clf["status"] == emb["status"] == "ok"
        assert clf["window"] == i  # replay evaluates every window inline
        flipped = i >= 3
        assert pca["drift"] is flipped and clf["drift"] is flipped and emb["drift"] is flipped, (i, pca, clf, emb)
        assert w["drifted"] == []  # the marginals did not move: the univariate tests stay quiet
        if flipped:
            assert pca["effect"] > pca["threshold"] and clf["auc"] > 0.7
            assert emb["mean_distance"]["drift"] and emb["mean_distance"]["distance"] > 0.15
        assert "emb" not in w["features"]
    # fire_after 2: the flip pages once per method from window 4, and the embedding as a drifting feature
    firing = {(a["alert"], a["subject"]): a for a in read_jsonl(tmp / "alerts.jsonl") if a["status"] == "firing"}
    assert set(firing) == {("multivariate_drift", "pca_reconstruction"), ("multivariate_drift", "domain_classifier"),
                           ("feature_drift", "emb")}
    pca_alert = firing[("multivariate_drift", "pca_reconstruction")]
    assert pca_alert["window"]["index"] == 4 and pca_alert["runbook_url"].endswith("#driftmonmultivariatedrift")
    assert "\n## DriftmonMultivariateDrift\n" in (ROOT / "docs" / "runbook.md").read_text()
    assert "multivariate drift by pca_reconstruction" in pca_alert["summary"]
    assert firing[("feature_drift", "emb")]["features"][0]["method"] in ("mean_distance", "histograms")


def test_checkpoint_restore_continues_the_same_windows(setup):
    tmp = setup
    config_path = tmp / "driftmon.yaml"
    from monitor.config import load_config

    config = load_config(config_path)
    baseline = Baseline.load(config.baseline)
    msgs = (tmp / "stream.jsonl").read_bytes().splitlines()[: 2 * WINDOW]
    whole = Pipeline(config, baseline)
    expected = []
    for i in range(0, len(msgs), 700):
        expected += whole.process(msgs[i:i + 700])[0]
    first = Pipeline(config, baseline)
    got = first.process(msgs[:2900])[0]
    state = json.loads(json.dumps(first.state_dict()))
    second = Pipeline(config, baseline).load_state_dict(state)
    got += second.process(msgs[2900:])[0]
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):
        assert a["multivariate"]["pca_reconstruction"]["error"] == pytest.approx(
            b["multivariate"]["pca_reconstruction"]["error"], rel=1e-9)
        assert a["embeddings"]["emb"]["mean_distance"]["distance"] == pytest.approx(
            b["embeddings"]["emb"]["mean_distance"]["distance"], rel=1e-9)


def test_background_classifier_is_off_thread_and_rate_limited(setup):
    from monitor.config import load_config

    config = load_config(setup / "driftmon.yaml")
    baseline = Baseline.load(config.baseline)
    pipeline = Pipeline(config, baseline, background=True)
    runner = pipeline.multivariate.runner
    clock = [0.0]
    runner.clock = lambda: clock[0]  # min_interval 1m on a clock the test moves
    msgs = (setup / "stream.jsonl").read_bytes().splitlines()
    first = pipeline.process(msgs[:WINDOW])[0][0]["multivariate"]["domain_classifier"]
    assert first["status"] == "pending" and first["drift"] is False  # the fit runs on the worker
    assert runner.wait(120)
    second = pipeline.process(msgs[WINDOW:2 * WINDOW])[0][0]["multivariate"]["domain_classifier"]
    assert second["window"] == 0 and second["status"] == "ok" and second["fresh"]  # the latest finished one
    third = pipeline.process(msgs[2 * WINDOW:3 * WINDOW])[0][0]["multivariate"]["domain_classifier"]
    assert third["window"] == 0 and not third["fresh"]  # reported again, but counted by alerts once
    assert runner.skipped == 2 and runner.evaluations == 1  # within min_interval: not started
    clock[0] = 61.0
    pipeline.process(msgs[3 * WINDOW:4 * WINDOW])
    assert runner.wait(120) and runner.evaluations == 2
    fourth = pipeline.process(msgs[4 * WINDOW:5 * WINDOW])[0][0]["multivariate"]["domain_classifier"]
    assert fourth["window"] == 3 and fourth["fresh"] and fourth["drift"]  # window 3 is flipped
    # a thin window is judged at once (insufficient data) and uses neither the worker nor the rate limit
    pipeline.process(msgs[5 * WINDOW:5 * WINDOW + 50])
    thin = pipeline.flush()["multivariate"]["domain_classifier"]
    assert thin["status"] == "insufficient_data" and runner.skipped == 3 and runner.evaluations == 2


def test_baseline_without_artefacts_is_a_config_error(setup, tmp_path):
    from monitor.config import load_config

    tree = config_tree()
    tree["baseline"] = str(setup / "baseline.json")
    tree["multivariate"]["features"] = ["x0", "x1"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="other features"):
        Baseline.load(config.baseline).check(config)
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "check-config", "--config", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "multivariate.features" in proc.stderr


@pytest.mark.integration
def test_daemon_on_a_real_broker(setup, tmp_path):
    """The daemon reads embeddings from Kafka, fits the classifier on its worker thread and reports it all."""
    from monitor.tansu import free_port
    from tests.brokers import TansuBroker
    from tests.daemon_proc import DaemonProcess
    from tests.test_daemon_integration import produce

    broker = TansuBroker().start()
    try:
        broker.create_topic("predictions")
        tree = config_tree(min_interval="1s")
        tree.update(baseline=str(setup / "baseline.json"), state={"dir": str(tmp_path / "state")},
                    kafka={"bootstrap_servers": broker.bootstrap, "topic": "predictions", "group_id": "driftmon-mv"})
        (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
        daemon = DaemonProcess(str(tmp_path / "driftmon.yaml"), free_port(), str(tmp_path / "daemon.log")).start()
        try:
            stream = (setup / "stream.jsonl").read_bytes().splitlines()
            produce(broker.bootstrap, "predictions", stream)
            status = daemon.wait_windows(6, timeout=120)
            last = status["last_window"]
            assert last["window"]["index"] == 5 and last["drifted"] == []
            assert last["multivariate"]["pca_reconstruction"]["drift"] is True
            assert last["embeddings"]["emb"]["drift"] is True and last["embeddings"]["emb"]["missing"] == 0
            # the classifier finishes off the consuming thread; its result lands in /metrics
            daemon.wait(lambda: daemon.metrics().get(("driftmon_multivariate_evaluations_total",
                                                      (("model", "mv-test"), ("outcome", "finished")))), 60,
                        "a finished classifier evaluation")
            metrics = daemon.metrics()
            assert metrics[("driftmon_multivariate_drift_detected",
                            (("method", "pca_reconstruction"), ("model", "mv-test")))] == 1
            assert metrics[("driftmon_feature_drift_detected", (("feature", "emb"), ("model", "mv-test")))] == 1
            assert ("driftmon_feature_drift_score", (("feature", "emb"), ("method", "mean_distance"),
                                                     ("model", "mv-test"))) in metrics
            logged = read_jsonl(tmp_path / "state" / "windows.jsonl")
            assert [w["multivariate"]["pca_reconstruction"]["drift"] for w in logged] == [False] * 3 + [True] * 3
            assert all(w["multivariate"]["domain_classifier"]["status"] in ("pending", "ok") for w in logged)
        finally:
            daemon.close()
    finally:
        broker.stop()
