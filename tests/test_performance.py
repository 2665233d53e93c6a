"""Labels, performance, concept drift and fairness through the pipeline (seeded scenarios)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from monitor.alerting import AlertEngine
from monitor.baseline import Baseline, build_baseline
from monitor.config import load_config
from monitor.join import LabelJoin
from monitor.pipeline import Pipeline
from monitor.values import iso
from tests.labelled import config as labelled_config, labelled, messages


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perf")
    pq.write_table(pa.table(labelled(50_000, seed=1)), tmp / "train.parquet")
    (tmp / "driftmon.yaml").write_text(yaml.safe_dump(labelled_config()))
    config = load_config(tmp / "driftmon.yaml")
    build_baseline(config, str(tmp / "train.parquet")).save(config.baseline)
    return config, Baseline.load(config.baseline)


def feed(pipeline, msgs, batch=2000):
    drift, perf = [], []
    for i in range(0, len(msgs), batch):
        drift += pipeline.process(msgs[i:i + batch])[0]
        perf += pipeline.take_performance()
    return drift, perf


def test_baseline_records_performance_and_segment_values(setup):
    config, baseline = setup
    perf = baseline.extras["performance"]
    cols = labelled(50_000, seed=1)
    y, p = np.array(cols["y"]), np.array(cols["y_pred"])
    assert perf["positive"] == "1" and perf["n"] == 50_000
    assert perf["metrics"]["accuracy"] == pytest.approx(np.mean(y == p))
    tp = np.sum((y == 1) & (p == 1))
    assert perf["metrics"]["precision"] == pytest.approx(tp / np.sum(p == 1))
    assert perf["metrics"]["recall"] == pytest.approx(tp / np.sum(y == 1))
    assert baseline.extras["segments"] == {"group": ["A", "B"]}


def test_realized_metrics_equal_offline_computation(setup):
    config, baseline = setup
    cols = labelled(10_000, seed=7)
    _, perf = feed(Pipeline(config, baseline), messages(cols))
    assert [r["window"]["labelled"] for r in perf] == [5000, 5000]
    y, p = np.array(cols["y"][5000:]), np.array(cols["y_pred"][5000:])
    s = np.array(cols["y_pred_proba"][5000:])
    m = perf[1]["metrics"]
    assert m["accuracy"] == pytest.approx(np.mean(y == p))
    tp, fp, fn = np.sum((y == 1) & (p == 1)), np.sum((y == 0) & (p == 1)), np.sum((y == 1) & (p == 0))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    eps = 1e-15
    sc = np.clip(s, eps, 1 - eps)
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(sc) + (1 - y) * np.log(1 - sc)), rel=1e-9)
    # ROC AUC from the Mann-Whitney U statistic, within the binned estimate's stated bound
    from scipy.stats import mannwhitneyu

    auc = mannwhitneyu(s[y == 1], s[y == 0]).statistic / (np.sum(y == 1) * np.sum(y == 0))
    assert abs(m["roc_auc"] - auc) <= perf[1]["metrics"].get("roc_auc_error_bound", 2e-3) + 1e-12
    seg_b = perf[1]["segments"]["group"]["B"]["metrics"]
    b = np.array(cols["group"][5000:]) == "B"
    assert seg_b["n"] == b.sum() and seg_b["accuracy"] == pytest.approx(np.mean(y[b] == p[b]))


def test_estimated_accuracy_tracks_realized_accuracy_without_labels(setup):
    config, baseline = setup
    cols = labelled(20_000, seed=11)
    drift, perf = feed(Pipeline(config, baseline), messages(cols))
    for window, labelled_window in zip(drift, perf):
        estimated = window["estimated_performance"]["accuracy"]
        assert abs(estimated - labelled_window["metrics"]["accuracy"]) <= 0.02


def test_degradation_in_one_group_fires_fairness_and_segment_alerts_not_overall(setup):
    config, baseline = setup
    engine = AlertEngine(config, baseline.fingerprint)
    pipeline = Pipeline(config, baseline)
    cols = labelled(25_000, seed=21, degrade_group_b=True)
    _, perf = feed(pipeline, messages(cols))
    notes = [n for r in perf for n in engine.observe_performance(r)]
    fired = {(n["alert"], n["subject"]) for n in notes if n["status"] == "firing"}
    assert ("fairness", "group") in fired
    assert ("performance_drop", "group=B:accuracy") in fired
    assert ("performance_drop", "accuracy") not in fired  # overall accuracy stays within the margin
    overall = perf[-1]["drops"]["accuracy"]
    assert overall["baseline"] - overall["value"] < config.performance.margin
    fairness = next(n for n in notes if n["alert"] == "fairness")
    assert fairness["fairness"]["min_group"] == "B" and fairness["fairness"]["groups"]["B"]["positive_rate"] == 0
    assert fairness["fairness"]["demographic_parity_ratio"] < 0.8


def test_no_alerts_without_degradation(setup):
    config, baseline = setup
    engine = AlertEngine(config, baseline.fingerprint)
    _, perf = feed(Pipeline(config, baseline), messages(labelled(25_000, seed=31)))
    notes = [n for r in perf for n in engine.observe_performance(r)]
    assert notes == []


def test_small_groups_never_alert(tmp_path, setup):
    config, baseline = setup
    tree = labelled_config(labels={"window": 2000, "positive": "1"})  # group B: ~200 events < 385
    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
    small = load_config(tmp_path / "driftmon.yaml")
    small.baseline = config.baseline
    engine = AlertEngine(small, baseline.fingerprint)
    _, perf = feed(Pipeline(small, baseline), messages(labelled(10_000, seed=41, degrade_group_b=True)))
    assert perf and all("B" in r["fairness"]["group"]["insufficient"] for r in perf)
    assert not [n for r in perf for n in engine.observe_performance(r) if n["alert"] == "fairness"]


def test_checkpoint_keeps_partial_performance_window(setup):
    config, baseline = setup
    cols = labelled(10_000, seed=51)
    msgs = messages(cols)
    straight = feed(Pipeline(config, baseline), msgs)[1]
    first = Pipeline(config, baseline)
    feed(first, msgs[:3333])
    second = Pipeline(config, baseline).load_state_dict(json.loads(json.dumps(first.state_dict())))
    resumed = feed(second, msgs[3333:])[1]
    from tests.helpers import same

    assert len(resumed) == len(straight) == 2
    assert same([r["metrics"] for r in resumed], [r["metrics"] for r in straight])


def test_label_join_ttl_cap_and_early_labels():
    join = LabelJoin(ttl=100.0, max_pending=3)
    assert join.add_labels(["b"], [5.0], ["1"]) == []  # a label before its prediction waits
    matched = join.add_predictions(["a", "b"], [1.0, 2.0], [["p-a"], ["p-b"]])
    assert matched == [(["p-b"], "1", 3.0)]
    assert join.add_labels(["a"], [50.0], ["0"]) == [(["p-a"], "0", 49.0)]
    join.add_predictions(["c", "d", "e", "f"], [60.0, 61.0, 62.0, 63.0], [[1], [2], [3], [4]])
    assert join.pending == 3 and join.expired == 1  # the cap evicted the oldest, "c"
    state = json.loads(json.dumps(join.state_dict()))
    restored = LabelJoin(ttl=100.0, max_pending=3).load_state_dict(state)
    assert restored.add_labels(["d"], [70.0], ["1"]) == [([2], "1", 9.0)]
    restored.add_predictions(["g"], [200.0], [[5]])
    assert restored.expire() == 2  # e and f are older than the watermark minus the TTL
    assert restored.pending == 1 and restored.matched == 3


def test_baseline_cli_with_a_validation_set(tmp_path):
    import subprocess
    import sys

    pq.write_table(pa.table({k: v for k, v in labelled(5000, seed=2).items() if k not in ("y_pred", "y")}),
                   tmp_path / "train.parquet")  # training data without predictions or labels
    pq.write_table(pa.table(labelled(3000, seed=3)), tmp_path / "val.parquet")
    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(labelled_config()))
    args = [sys.executable, "-m", "monitor.cli", "baseline", "--config", str(tmp_path / "driftmon.yaml"),
            "--data", str(tmp_path / "train.parquet")]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and "y_pred" in proc.stderr and "--validation" in proc.stderr
    proc = subprocess.run(args + ["--validation", str(tmp_path / "val.parquet")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "baseline performance on val.parquet (3000 labelled rows)" in proc.stdout
    perf = json.loads((tmp_path / "baseline.json").read_text())["extras"]["performance"]
    cols = labelled(3000, seed=3)
    assert perf["metrics"]["accuracy"] == pytest.approx(np.mean(np.array(cols["y"]) == np.array(cols["y_pred"])))


def test_a_fairness_attribute_and_segment_may_be_a_monitored_feature_too(tmp_path):
    """`group` is a feature, a segment and a fairness attribute; its cap (max_values) is honoured."""
    tree = labelled_config(segments=[{"name": "group"}],
                           fairness={"attributes": [{"name": "group", "max_values": 1}], "favourable": "1",
                                     "min_group_size": 100})
    tree["schema"]["features"].append({"name": "group", "type": "categorical"})
    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp_path / "driftmon.yaml")
    build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)
    pipeline = Pipeline(config, Baseline.load(config.baseline))
    assert pipeline.decoder.aliases == {"group": "group"}  # same name and field: read once, serves all three
    drift, perf = feed(pipeline, messages(labelled(10_000, seed=3)))
    assert "group" in drift[0]["features"] and set(drift[0]["segments"]["group"]) == {"A", "B"}
    groups = perf[0]["fairness"]["group"]["groups"]
    assert set(groups) == {"A", "other"}  # max_values 1: the first group by name, the rest pooled
    assert groups["A"]["n"] + groups["other"]["n"] == 5000

    renamed = labelled_config(segments=[{"name": "cohort", "path": "group"}],
                              fairness={"attributes": [{"name": "sex", "path": "group"}], "favourable": "1"})
    renamed["schema"]["features"].append({"name": "group", "type": "categorical"})
    (tmp_path / "renamed.yaml").write_text(yaml.safe_dump({**renamed, "baseline": "baseline.json"}))
    config = load_config(tmp_path / "renamed.yaml")
    decoder = Pipeline(config, Baseline.load(config.baseline)).decoder
    assert decoder.aliases == {"cohort": "group", "sex": "group"}
    batch = decoder.decode(messages(labelled(10, seed=4)))
    assert list(batch.columns["sex"]) == list(batch.columns["cohort"]) == list(batch.columns["group"])


def test_fairness_relative_to_the_baselines_group_rates(tmp_path):
    tree = labelled_config(fairness={"attributes": [{"name": "group"}], "favourable": "1", "min_group_size": 100,
                                     "max_gap_widening": 0.05})
    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp_path / "driftmon.yaml")
    build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)
    baseline = Baseline.load(config.baseline)
    counts = baseline.extras["fairness"]["group"]
    assert counts["groups"] == ["A", "B"] or sorted(counts["groups"]) == ["A", "B"]
    _, perf = feed(Pipeline(config, baseline), messages(labelled(10_000, seed=5)))
    assert [r["fairness"]["group"]["alerts"]["widened"] for r in perf] == [False, False]
    _, perf = feed(Pipeline(config, baseline), messages(labelled(10_000, seed=5, degrade_group_b=True)))
    report = perf[0]["fairness"]["group"]
    assert report["alerts"]["widened"] is True and abs(report["overall"]["baseline_gaps"][
        "demographic_parity_difference"]) < 0.05


def test_event_time_performance_windows_by_join_time(tmp_path):
    """labels.window_duration: a joined prediction counts in the window of max(prediction time, label time);
    a window closes once predictions and labels have both moved past its end; joins for a closed window are
    late (counted, in the oldest open window); the open windows survive a checkpoint round trip."""
    from monitor.pipeline import Pipeline as P
    from tests.labelled import label_messages

    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    tree = labelled_config(window={"duration": "10s"},
                           labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp"},
                           kafka={"bootstrap_servers": "k:9092", "topic": "t", "group_id": "g", "labels_topic": "l"})
    tree["baseline"] = str(tmp_path / "baseline.json")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp_path / "c.yaml")
    build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)
    baseline = Baseline.load(config.baseline)
    t0 = 1_700_000_000.0
    phases = [labelled(2000, seed=10 + k, start=t0 + 10 * k, rate=250.0, id_prefix=f"w{k}") for k in range(4)]

    def run(pipeline, ks):
        out = []
        for k in ks:
            pipeline.process(messages(phases[k], with_label=False))
            if k:  # the previous phase's labels, 10 s later: they join in this phase's window
                pipeline.process_labels(label_messages(phases[k - 1], delay=10.0))
            out += pipeline.take_performance()
        return out

    whole = P(config, baseline)
    perf = run(whole, range(4))
    assert [r["window"]["labelled"] for r in perf] == [2000, 2000]  # phases 0 and 1, joined in windows 1 and 2
    assert [r["window"]["start"] for r in perf] == [iso(t0 + 10), iso(t0 + 20)]
    y, p = np.array(phases[1]["y"]), np.array(phases[1]["y_pred"])
    assert perf[1]["metrics"]["accuracy"] == pytest.approx(np.mean(y == p))
    assert perf[1]["fairness"]["group"]["groups"]["B"]["n"] == phases[1]["group"].count("B")
    tracker = whole.tracker
    assert (tracker.join.received, tracker.join.matched, tracker.late) == (6000, 6000, 0)
    assert sorted(tracker.open) == [t0 + 30]

    # stopped after phase 1 and restored from its checkpoint: the same windows
    first = P(config, baseline)
    before = run(first, range(2))
    state = json.loads(json.dumps(first.state_dict()))
    again = P(config, baseline).load_state_dict(state)
    assert [r["metrics"] for r in before + run(again, range(2, 4))] == [r["metrics"] for r in perf]

    # a label for a closed window (its prediction came late): counted as late, in the oldest open window
    late = labelled(1, seed=99, start=t0 + 5, id_prefix="late")
    whole.process(messages(late, with_label=False))
    whole.process_labels(label_messages(late, delay=0.0))
    assert tracker.late == 1 and tracker.open[t0 + 30].labelled == 2001
    assert [r["window"]["labelled"] for r in tracker.tick(t0 + 41)] == [2001] and not tracker.open
    assert tracker.closed_until == t0 + 40
