import json
import subprocess
import sys

import numpy as np
import pytest

from monitor.baseline import Baseline
from monitor.config import load_config
from monitor.pipeline import Pipeline
from monitor.synth import car_loan
from tests.helpers import read_jsonl, same, write_jsonl, write_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    path, config = write_setup(tmp, car_loan(seed=1), window={"size": 1000})
    return path, config, Baseline.load(config.baseline)


def run(pipeline, messages, batch):
    out = []
    for i in range(0, len(messages), batch):
        out += pipeline.process(messages[i:i + batch])[0]
    return out


def test_count_windows_have_exact_sizes_whatever_the_batching(setup):
    _, config, baseline = setup
    msgs = car_loan(seed=2).messages(5500)
    a = run(Pipeline(config, baseline), msgs, 333)
    b = run(Pipeline(config, baseline), msgs, 5500)
    assert [r["window"]["events"] for r in a] == [1000] * 5
    assert same(a, b)
    assert not same(a, run(Pipeline(config, baseline), msgs[1:], 333)[:5])  # the comparison can fail


def test_no_drift_then_drift(setup):
    _, config, baseline = setup
    msgs = car_loan(seed=5).messages(6000, drift_at=3000)
    results = run(Pipeline(config, baseline), msgs, 1000)
    assert [r["drifted"] for r in results[:3]] == [[], [], []]
    for r in results[3:]:
        assert "car_value" in r["drifted"] and "salary_range" in r["drifted"]
        assert r["features"]["car_value"]["effect"]["value"] > r["features"]["car_value"]["effect"]["threshold"]
        assert r["features"]["car_value"]["test"]["p_value_adjusted"] <= config.drift.alpha


def test_invalid_messages_do_not_count_as_events(setup):
    _, config, baseline = setup
    msgs = car_loan(seed=6).messages(1000)
    msgs[10:10] = [b"garbage", b'{"id": "x", "car_value": "nope"}']
    p = Pipeline(config, baseline)
    results = run(p, msgs, 400)
    assert p.consumed == 1002 and dict(p.invalid) == {"not_json": 1, "wrong_type": 1}
    assert len(results) == 1 and results[0]["window"]["events"] == 1000


def test_checkpoint_restore_gives_identical_windows(setup):
    _, config, baseline = setup
    msgs = car_loan(seed=8).messages(4700, drift_at=2500)
    straight = run(Pipeline(config, baseline), msgs, 700)
    first = Pipeline(config, baseline)
    before = run(first, msgs[:2345], 700)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint file holds
    second = Pipeline(config, baseline).load_state_dict(state)
    after = run(second, msgs[2345:], 700)
    assert same(before + after, straight)


def test_time_windows_by_event_time(tmp_path):
    path, config = write_setup(tmp_path, car_loan(seed=1), window={"duration": "2s"}, drift={"min_events": 50})
    baseline = Baseline.load(config.baseline)
    msgs = car_loan(seed=9).messages(1000, start_time=1_000_000.0, rate=100.0)  # 10 s of events
    p = Pipeline(config, baseline)
    assert p.tick(2_000_000_000.0) == [] and p.window.start is None  # an idle start opens no window
    results = run(p, msgs, 128)
    assert [r["window"]["events"] for r in results] == [200] * 4
    assert results[0]["window"]["start"] == "1970-01-12T13:46:40.000Z"
    assert results[0]["window"]["end"] == "1970-01-12T13:46:42.000Z"
    # the open window closes on the wall clock when traffic stops, and an empty window is reported as such
    closed = p.tick(1_000_000.0 + 12.0)
    assert [r["window"]["events"] for r in closed] == [200, 0]
    assert closed[1]["window"]["status"] == "empty" and closed[1]["drifted"] == []


def test_replay_cli_is_deterministic_and_has_the_documented_shape(setup, tmp_path):
    path, config, _ = setup
    logs = tmp_path / "logs.jsonl"
    write_jsonl(logs, car_loan(seed=11).messages(3500, drift_at=2000))
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--config", path, "--input", str(logs),
                               "--out", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    windows = read_jsonl(tmp_path / "a.jsonl")
    assert [w["window"]["events"] for w in windows] == [1000, 1000, 1000, 500]
    assert [w["window"]["complete"] for w in windows] == [True, True, True, False]
    w = windows[2]
    assert set(w["window"]) >= {"start", "end", "events"}
    assert set(w["features"]) == {f.name for f in config.schema.features}
    assert w["features"]["car_value"]["drift"] is True
    assert isinstance(w["features"]["region"]["drift"], bool)
    assert "statistics" in w["features"]["region"]


def test_init_infers_types_with_reasons(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 500
    pq.write_table(pa.table({
        "id": [f"r{i}" for i in range(n)],
        "income": rng.normal(5e4, 1e4, n),
        "rating": rng.integers(1, 6, n),
        "visits": rng.integers(0, 1000, n),
        "city": rng.choice(["a", "b", "c"], n),
        "y_pred": rng.integers(0, 2, n),
    }), tmp_path / "train.parquet")
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "init", "--data", str(tmp_path / "train.parquet")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "{name: income, type: numeric}" in text
    assert "{name: rating, type: categorical}   # integers with only 5 distinct values" in text
    assert "{name: visits, type: numeric}" in text
    assert "{name: city, type: categorical}   # text values" in text
    assert "id: {path: id}" in text and "prediction: {name: y_pred" in text
    # the starter config is a valid config
    (tmp_path / "driftmon.yaml").write_text(text)
    load_config(tmp_path / "driftmon.yaml")


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_baseline_cli_reads_every_format_and_fingerprints_content(tmp_path, fmt):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    synth = car_loan(seed=2)
    table = synth.training_table(3000)
    data = tmp_path / f"train.{fmt}"
    if fmt == "csv":
        pcsv.write_csv(table, data)
    elif fmt == "parquet":
        pq.write_table(table, data)
    else:
        with open(data, "w") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row) + "\n")
    import yaml

    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(synth.config()))
    fingerprints = []
    for out in ("b1.json", "b2.json"):
        proc = subprocess.run([sys.executable, "-m", "monitor.cli", "baseline", "--config", str(tmp_path / "driftmon.yaml"),
                               "--data", str(data), "--out", str(tmp_path / out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads((tmp_path / out).read_text())
        assert doc["format"] == "driftmon.baseline" and doc["version"] == 1
        assert doc["source"]["rows"] == 3000
        fingerprints.append(doc["fingerprint"])
    assert fingerprints[0] == fingerprints[1] and fingerprints[0].startswith("sha256:")
    # editing the file breaks the fingerprint
    doc["columns"]["car_value"]["profile"]["mean"] += 1.0
    (tmp_path / "b1.json").write_text(json.dumps(doc))
    from monitor.baseline import BaselineError

    with pytest.raises(BaselineError, match="fingerprint"):
        Baseline.load(str(tmp_path / "b1.json"))


def test_compare_cli_matches_the_pipeline_on_the_same_rows(setup, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, config, baseline = setup
    synth = car_loan(seed=13)
    cols = synth.columns(1000, drifted=True)
    table = pa.table({k: v.tolist() if v.dtype.kind in "OU" else v for k, v in cols.items()})
    pq.write_table(table, tmp_path / "current.parquet")
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "compare", "--config", path,
                           "--current", str(tmp_path / "current.parquet"), "--exit-code"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr  # drift found, and --exit-code says so
    offline = json.loads(proc.stdout)
    # the same rows as JSON messages through the streaming pipeline
    messages = []
    for i, row in enumerate(table.to_pylist()):
        msg = {"id": i, "y_pred": row["y_pred"], "y_pred_proba": row["y_pred_proba"]}
        for spec in synth.specs:
            *parents, leaf = (spec.path or spec.name).split(".")
            target = msg
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = row[spec.name]
        messages.append(json.dumps(msg).encode())
    streamed = Pipeline(config, baseline).process(messages)[0][0]
    assert offline["drifted"] == streamed["drifted"] and "car_value" in offline["drifted"]
    assert same({k: r["statistics"] for k, r in offline["features"].items()},
                {k: r["statistics"] for k, r in streamed["features"].items()})
    assert [offline["features"][k]["events"] for k in streamed["features"]] == [1000] * len(streamed["features"])
