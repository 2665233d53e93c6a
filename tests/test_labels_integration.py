"""Late labels on their own topic, joined to predictions on a real broker, across a kill -9."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from monitor.config import load_config
from monitor.baseline import build_baseline
from monitor.tansu import free_port
from tests.daemon_proc import DaemonProcess
from tests.helpers import read_jsonl
from tests.labelled import config as labelled_config, label_messages, labelled, messages
from tests.test_daemon_integration import CLIENTS, produce

pytestmark = pytest.mark.integration

WINDOW = 2000


@pytest.mark.parametrize("client", CLIENTS)
def test_late_out_of_order_labels_join_and_survive_a_kill(tmp_path, broker, client):
    suffix = uuid.uuid4().hex[:8]
    preds_topic, labels_topic = f"preds-{suffix}", f"labels-{suffix}"
    broker.create_topic(preds_topic)
    broker.create_topic(labels_topic)
    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    tree = labelled_config(
        kafka={"bootstrap_servers": broker.bootstrap, "topic": preds_topic, "labels_topic": labels_topic,
               "group_id": f"driftmon-{suffix}", "max_poll_interval_ms": 6000, "session_timeout_ms": 6000,
               "client": client},
        window={"size": WINDOW}, labels={"window": WINDOW, "positive": "1", "ttl": "30d", "timestamp_path": "timestamp"},
        state={"dir": "state", "checkpoint_interval": "1s"})
    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp_path / "driftmon.yaml")
    build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)

    cols = labelled(6000, seed=9)
    labels = label_messages(cols, delay=3600.0)
    order = np.random.default_rng(3).permutation(6000)  # labels arrive out of order
    shuffled = [labels[i] for i in order]

    daemon = DaemonProcess(str(tmp_path / "driftmon.yaml"), free_port(), str(tmp_path / "daemon.log")).start()
    try:
        produce(broker.bootstrap, preds_topic, messages(cols, with_label=False))
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 6000, 60, "predictions consumed")
        produce(broker.bootstrap, labels_topic, shuffled[:3000])
        daemon.wait(lambda: daemon.status()["labels"]["received"] == 3000, 60, "first labels")
        assert daemon.status()["labels"]["pending"] == 3000
        daemon.kill9()  # with 3000 predictions waiting for labels and 1000 in the open performance window
        restarted = DaemonProcess(str(tmp_path / "driftmon.yaml"), daemon.port, str(tmp_path / "daemon2.log")).start()
        try:
            produce(broker.bootstrap, labels_topic, shuffled[3000:])
            status = restarted.wait(lambda: (s := restarted.status())["labels"]["received"] == 6000 and s,
                                    60, "all labels")
            assert status["labels"] == {"received": 6000, "matched": 6000, "expired": 0, "pending": 0}
            metrics = restarted.metrics()
            key = ("driftmon_label_delay_seconds_count", (("model", "lender"),))
            assert metrics[key] == 6000
            le = ("driftmon_label_delay_seconds_bucket", (("le", "1800.0"), ("model", "lender")))
            assert metrics[le] == 0  # every label came an hour after its prediction
        finally:
            restarted.close()
    finally:
        daemon.close()

    windows = read_jsonl(os.path.join(config.state.dir, "performance.jsonl"))
    assert [w["window"]["index"] for w in windows] == [0, 1, 2]
    y, p = np.array(cols["y"]), np.array(cols["y_pred"])
    for k, w in enumerate(windows):
        rows = order[k * WINDOW:(k + 1) * WINDOW]  # labels matched in the order they arrived
        assert w["window"]["labelled"] == WINDOW
        assert w["metrics"]["accuracy"] == pytest.approx(np.mean(y[rows] == p[rows]), abs=1e-12)
        tp = np.sum((y[rows] == 1) & (p[rows] == 1))
        assert w["metrics"]["recall"] == pytest.approx(tp / np.sum(y[rows] == 1), abs=1e-12)
