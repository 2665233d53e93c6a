"""`driftmon init`: a first config that is right on a typical training file."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from monitor.config import load_config
from monitor.infer import infer_columns
from monitor.synth import car_loan

ROWS = 50_000


def driftmon(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """The car-loan training set as people export it: request ids, ISO event times, a free-text note,
    the model's prediction, score and the outcome (`repaid`, not named like a label)."""
    tmp = tmp_path_factory.mktemp("init")
    table = car_loan(seed=4).training_table(ROWS)
    rng = np.random.default_rng(4)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    times = [(start + timedelta(seconds=17 * i + int(s))).isoformat().replace("+00:00", "Z")
             for i, s in enumerate(rng.integers(0, 10, ROWS))]
    notes = [f"customer called about offer {k}" for k in rng.permutation(ROWS)]
    table = table.append_column("request_id", pa.array([f"req-{i:08d}" for i in range(ROWS)]))
    table = table.append_column("timestamp", pa.array(times)).append_column("note", pa.array(notes))
    path = tmp / "train.parquet"
    pq.write_table(table, path)
    return tmp, path


def test_init_proposes_event_time_ids_and_model_outputs_with_reasons(training):
    tmp, path = training
    text = driftmon("init", "--data", str(path), "--model", "car-loan").stdout
    tree = yaml.safe_load(text)
    schema = tree["schema"]
    assert schema["timestamp"] == {"path": "timestamp"}
    assert schema["id"] == {"path": "request_id"}
    features = {f["name"]: f["type"] for f in schema["features"]}
    assert features == {"car_value": "numeric", "salary_range": "categorical", "debt_to_income_ratio": "numeric",
                        "age": "numeric", "credit_score": "numeric", "region": "categorical",
                        "loan_term_months": "categorical", "prior_loans": "numeric", "channel": "categorical"}
    assert schema["prediction"] == {"name": "y_pred", "type": "categorical"}
    assert schema["score"] == {"name": "y_pred_proba", "type": "numeric"}
    assert schema["label"] == {"name": "repaid", "type": "categorical"}
    # every choice says why, and the free text is named as such
    line = {key: next(x for x in text.splitlines() if x.strip().startswith(key)) for key in
            ("timestamp:", "id:", "prediction:", "score:", "label:", "#   note:")}
    assert "ISO 8601" in line["timestamp:"] and f"{ROWS} distinct" in line["timestamp:"]
    assert f"{ROWS} distinct values in {ROWS} rows" in line["id:"]
    assert "equals score >= 0.5 in 100% of rows" in line["prediction:"]
    assert "floats in [" in line["score:"]
    assert "ROC AUC" in line["label:"]
    assert "an id or free text" in line["#   note:"] and f"all {ROWS} values distinct" in line["#   note:"]

    # the first baseline a new user builds from it is one they keep
    (tmp / "driftmon.yaml").write_text(text)
    driftmon("baseline", "--config", str(tmp / "driftmon.yaml"), "--data", str(path))
    assert "config ok: model car-loan, 9 features" in driftmon("check-config", "--config",
                                                                str(tmp / "driftmon.yaml")).stdout


def test_init_names_the_positive_class_the_score_is_for_when_it_is_the_majority(training):
    """car_loan's `repaid` is 1 in 57% of rows and the score is P(repaid = 1): left to its default (the
    minority class, 0), the baseline performance read the score backwards (ROC AUC 0.34, ECE 0.25)."""
    import json

    tmp, path = training
    text = driftmon("init", "--data", str(path), "--model", "car-loan").stdout
    assert yaml.safe_load(text)["labels"] == {"positive": "1"}
    assert "the score is its probability" in next(x for x in text.splitlines() if x.strip().startswith("positive:"))
    (tmp / "positive.yaml").write_text(text)
    driftmon("baseline", "--config", str(tmp / "positive.yaml"), "--data", str(path), "--out",
             str(tmp / "positive.json"))
    performance = json.loads((tmp / "positive.json").read_text())["extras"]["performance"]
    assert performance["positive"] == "1"
    assert performance["metrics"]["roc_auc"] > 0.6 and performance["metrics"]["ece"] < 0.05, performance["metrics"]


def test_init_reads_datetime_types_epoch_seconds_and_labels_by_name(tmp_path):
    n = 2000
    rng = np.random.default_rng(1)
    score = rng.random(n)
    table = pa.table({
        "event_time": pa.array(np.datetime64("2026-01-01") + np.arange(n).astype("timedelta64[s]")),
        "created_at": (1.76e9 + np.arange(n)).astype(np.int64),
        "x": rng.normal(size=n),
        "comment": [f"free text {i}" for i in rng.permutation(n)],
        "tag": rng.choice(["a", "b"], n),
        "probability": score,
        "target": (rng.random(n) < 0.5).astype(np.int64),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    found = infer_columns(str(tmp_path / "t.parquet"))
    assert found.roles["timestamp"][0] == "event_time"
    assert dict(found.skipped)["created_at"].startswith("epoch seconds: another time column")
    assert "an id or free text" in dict(found.skipped)["comment"]
    assert found.roles["score"][0] == "probability" and found.roles["label"][0] == "target"
    assert "named like a label" in found.roles["label"][2]
    assert "prediction" not in found.roles  # nothing equals score >= 0.5, and no name says so
    assert [f[0] for f in found.features] == ["x", "tag"]
    assert "id" not in found.roles  # `comment` is free text, not an id: no name says id


def test_init_proposes_embeddings_and_skips_other_nested_columns(tmp_path):
    n = 600
    rng = np.random.default_rng(2)
    ragged = [list(range(1 + i % 3)) for i in range(n)]
    table = pa.table({
        "x": rng.normal(size=n),
        "text_emb": pa.array(rng.normal(size=(n, 16)).tolist(), type=pa.list_(pa.float32())),
        "tags": pa.array(ragged, type=pa.list_(pa.int64())),
        "words": pa.array([["a", "b"]] * n, type=pa.list_(pa.string())),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    found = infer_columns(str(tmp_path / "t.parquet"))
    assert ("text_emb", "embedding", "lists of 16 numbers: an embedding vector") in found.features
    assert found.dimensions == {"text_emb": 16}
    skipped = dict(found.skipped)
    assert "lists of lengths [1, 2, 3]" in skipped["tags"] and "lists of string" in skipped["words"]
    # the starter config builds a baseline and checks
    config = driftmon("init", "--data", str(tmp_path / "t.parquet")).stdout
    (tmp_path / "driftmon.yaml").write_text(config)
    assert "- {name: text_emb, type: embedding, dimension: 16}" in config
    driftmon("baseline", "--config", str(tmp_path / "driftmon.yaml"), "--data", str(tmp_path / "t.parquet"),
             "--out", str(tmp_path / "baseline.json"))
    driftmon("check-config", "--config", str(tmp_path / "driftmon.yaml"))
    assert load_config(tmp_path / "driftmon.yaml").schema.embeddings()[0].components == 10
