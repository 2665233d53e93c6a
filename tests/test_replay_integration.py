"""`driftmon replay` is the daemon without Kafka: same windows, same notifications, for the same messages."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from monitor.baseline import build_baseline
from monitor.config import load_config
from monitor.tansu import free_port
from tests.daemon_proc import DaemonProcess
from tests.helpers import read_jsonl, write_jsonl
from tests.labelled import config as labelled_config, labelled, messages
from tests.receiver import Receiver
from tests.test_daemon_integration import produce

WINDOW = 2000


def stream() -> list[bytes]:
    """22 seconds of labelled traffic: 6,000 fine, 8,000 where x drifts and group B is refused, 8,000 fine."""
    blocks = [labelled(6000, seed=2, id_prefix="a"),
              labelled(8000, seed=3, degrade_group_b=True, start=1.7e9 + 6, id_prefix="b"),
              labelled(8000, seed=4, start=1.7e9 + 14, id_prefix="c")]
    blocks[1]["x"] = (np.asarray(blocks[1]["x"]) + 0.5).tolist()
    out = []
    for cols in blocks:
        out += messages(cols)
    return out


#: Kafka offsets are the one thing a file has not got; starts_at/ends_at are the daemon's wall clock
#: (as Alertmanager needs them) and the windows' event time in a replay.
NOT_COMPARABLE = ("offsets", "starts_at", "ends_at")


def comparable(value):
    """Everything but :data:`NOT_COMPARABLE`."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in NOT_COMPARABLE}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def assert_same(got, want, where="") -> None:
    """Equal, floats to rounding (sums over differently split batches round differently)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(got), sorted(want))
        for k in want:
            assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def of_kind(records: list[dict], kind: str) -> list[dict]:
    return comparable([{k: v for k, v in r.items() if k != "kind"} for r in records if r["kind"] == kind])


def by_id(note: dict) -> str:
    """Batches interleave the kinds of alert differently; within a kind the order is fixed."""
    return note["notification_id"]


def write_config(tmp_path, **overrides) -> str:
    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    tree = labelled_config(window={"size": WINDOW}, labels={"window": WINDOW, "positive": "1"},
                           fairness={"attributes": [{"name": "group"}], "favourable": "1", "min_group_size": 100},
                           state={"dir": "state", "checkpoint_interval": "1s"}, **overrides)
    tree["alerts"] = {"repeat_interval": "3s", **tree.get("alerts", {})}
    path = tmp_path / "driftmon.yaml"
    path.write_text(yaml.safe_dump(tree))
    config = load_config(path)
    build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)
    return str(path)


def replay(path: str, logs, tmp_path, *extra) -> tuple[list[dict], list[dict]]:
    out, alerts = tmp_path / "replay.jsonl", tmp_path / "alerts.jsonl"
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--config", path, "--input", str(logs),
                           "--out", str(out), "--alerts", str(alerts), *extra], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return read_jsonl(out), read_jsonl(alerts)


def test_replay_writes_every_window_and_notification(tmp_path):
    path = write_config(tmp_path)
    logs = tmp_path / "logs.jsonl"
    write_jsonl(logs, stream())
    records, notes = replay(path, logs, tmp_path, "--batch-size", "1234")
    drift = [r for r in records if r["kind"] == "drift"]
    performance = [r for r in records if r["kind"] == "performance"]
    assert len(records) == len(drift) + len(performance)
    assert [r["window"]["index"] for r in drift] == list(range(11))
    assert [r["window"]["index"] for r in performance] == list(range(11))
    for r in performance:
        assert set(r) >= {"metrics", "drops", "segments", "fairness", "error_rate"}
        assert r["window"]["labelled"] == WINDOW
    assert [r["fairness"]["group"]["alert"] for r in performance] == [False] * 3 + [True] * 4 + [False] * 4
    kinds = {(n["alert"], n["subject"], n["status"]) for n in notes}
    for kind, subject in (("feature_drift", "x"), ("fairness", "group"), ("retrain_recommended", "model")):
        assert (kind, subject, "firing") in kinds and (kind, subject, "resolved") in kinds
    fired = [n for n in notes if (n["alert"], n["subject"], n["status"]) == ("fairness", "group", "firing")]
    assert len(fired) >= 2, "a repeat 3 s of event time after the first page"
    assert fired[0]["starts_at"] == fired[1]["starts_at"] == "2023-11-14T22:13:29.999Z"
    # independent of the batch size, which only interleaves drift and performance results differently
    again_records, again_notes = replay(path, logs, tmp_path, "--batch-size", "5000")
    for kind in ("drift", "performance"):
        assert_same(of_kind(again_records, kind), of_kind(records, kind))
    assert_same(sorted(again_notes, key=by_id), sorted(notes, key=by_id))


@pytest.mark.integration
def test_replay_matches_the_daemon_on_a_real_broker(tmp_path, broker):
    receiver = Receiver()
    topic = f"preds-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    port = free_port()  # in the file: the config hash on retraining notifications covers the effective config
    path = write_config(tmp_path, http={"port": port}, kafka={
        "bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": f"driftmon-{topic}",
        "max_poll_interval_ms": 6000, "session_timeout_ms": 6000, "commit_interval": "200ms"},
        alerts={"webhooks": [{"url": receiver.url + "/hook"}]})
    msgs = stream()
    logs = tmp_path / "logs.jsonl"
    write_jsonl(logs, msgs)
    records, notes = replay(path, logs, tmp_path, "--no-flush")
    assert len(notes) >= 6
    daemon = DaemonProcess(path, port, str(tmp_path / "daemon.log")).start()
    try:
        produce(broker.bootstrap, topic, msgs)
        daemon.wait(lambda: daemon.status()["windows_evaluated"] == 11, 120, "11 windows")
        got = receiver.wait_for(lambda p: len(p) >= len(notes), 60, path="/hook")
        code, _ = daemon.terminate(timeout=30)
        assert code == 0
    finally:
        daemon.close()
        receiver.close()
    got, notes = comparable(receiver.payloads("/hook")), comparable(notes)
    assert_same(sorted(got, key=by_id), sorted(notes, key=by_id))
    for kind in ("feature_drift", "fairness", "retrain_recommended"):
        assert_same([n for n in got if n["alert"] == kind], [n for n in notes if n["alert"] == kind])
    state = os.path.join(str(tmp_path), "state")
    perf = [{"kind": "performance", **r} for r in read_jsonl(os.path.join(state, "performance.jsonl"))]
    assert_same(of_kind(perf, "performance"), of_kind(records, "performance"))
    windows = [{"kind": "drift", **r} for r in read_jsonl(os.path.join(state, "windows.jsonl"))]
    assert_same(of_kind(windows, "drift"), of_kind(records, "drift"))
