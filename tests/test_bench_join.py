"""bench.join (figure 6): its reference, the join before the store, does the work today's join does, and the
children that measure against it run (small sizes; no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import join as bj
from bench.join_before import LabelJoin as BeforeJoin
from monitor.join import LabelJoin
from tests.test_join_store import feed, stream

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_join_before_the_store_joins_as_todays_in_memory():
    before, today = BeforeJoin(ttl=300.0, max_pending=10**9), LabelJoin(ttl=300.0, max_pending=10**9)
    batches = list(stream(seed=3, n=400, ids=300))
    assert feed(before, batches) == feed(today, batches)
    assert (before.received, before.matched, before.expired, before.pending) == \
        (today.received, today.matched, today.expired, today.pending)
    assert before.matched > 100 and before.expired > 0  # the stream joins and expires


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    return bj._setup(str(tmp_path_factory.mktemp("bench-join")))


def test_the_three_pipelines_close_the_same_performance_windows(config, tmp_path):
    from monitor.baseline import Baseline
    from monitor.config import load_config

    cfg = load_config(config)
    pipelines = bj._pipelines(cfg, Baseline.load(cfg.baseline), bj.STORES, str(tmp_path / "labels"))
    assert type(pipelines["before"].tracker.join) is BeforeJoin
    assert type(pipelines["memory"].tracker.join.store).__name__ == "MemoryStore"
    assert type(pipelines["disk"].tracker.join.store).__name__ == "RocksStore"
    windows = {}
    for name, p in pipelines.items():
        bj._feed_predictions(p, 0, 3000)
        for i in range(0, 10_000, bj.BATCH):  # as bench.join's rounds: 10,000 labels, 5,000 per labelled window
            p.process([bj._prediction(j) for j in range(3000 + i, 3000 + i + bj.BATCH)])
            p.process_labels([bj._label(j) for j in range(i, i + bj.BATCH)])
        windows[name] = p.take_performance()
        assert p.tracker.join.pending == 3000
    pipelines["disk"].tracker.join.close()
    assert len(windows["before"]) == 2
    assert windows["before"] == windows["memory"] == windows["disk"]


def test_the_join_before_the_store_checkpoints_in_a_daemon(config, tmp_path):
    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.daemon import Daemon

    cfg = load_config(config)
    cfg.state.dir = str(tmp_path / "state")
    daemon = Daemon(cfg, Baseline.load(cfg.baseline))
    bj._before(daemon.pipeline, bj._DaemonBefore)
    bj._feed_predictions(daemon.pipeline, 0, 500)
    assert daemon.checkpoint(force=True)
    with open(daemon.store.checkpoint_path, "rb") as fh:
        assert b'"p-499"' in fh.read()  # the whole join in the checkpoint, as before the store
    daemon.pipeline.tracker.join.close()


@pytest.mark.parametrize("ids", ["sequential", "random"])
def test_the_throughput_child_measures_three_joins(config, tmp_path, ids):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "bench.join", "child", "throughput", "--config", config,
                           "--dir", str(tmp_path / "tp"), "--pending", "4000", "--memory-pending", "2000",
                           "--per-round", "2000", "--rounds", "2", "--ids", ids],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["before_pending"], out["memory_pending"], out["disk_pending"]) == (2000, 2000, 4000)
    summary = bj._summary(out, 2000, 2)
    for name in bj.STORES:
        assert len(out[f"{name}_rates"]) == len(out[f"{name}_cpu_rates"]) == len(out[f"{name}_join_rates"]) == 2
        assert summary[f"{name}_pairs_per_s"] > 0
    for r in range(2):  # the target's ratio is against the join before the store, the second against MemoryStore
        assert summary["ratios"][r] == out["disk_rates"][r] / out["before_rates"][r]
    assert summary["memory_ratio"] == pytest.approx(
        sorted(d / m for d, m in zip(out["disk_rates"], out["memory_rates"]))[0] / 2
        + sorted(d / m for d, m in zip(out["disk_rates"], out["memory_rates"]))[1] / 2)
