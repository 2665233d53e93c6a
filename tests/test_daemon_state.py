"""Checkpoint semantics of the daemon that need no broker: re-emission after a crash."""

import json
import os

import numpy as np

from monitor.baseline import Baseline
from monitor.daemon import Daemon
from monitor.pipeline import Pipeline
from monitor.state import WriteRetry
from monitor.synth import car_loan
from tests.helpers import fill_disk, mount_tmpfs, read_jsonl, write_setup


def test_windows_checkpointed_but_not_emitted_are_emitted_on_start(tmp_path):
    path, config = write_setup(tmp_path, car_loan(seed=1), window={"size": 500},
                               alerts={"webhooks": [{"url": "http://127.0.0.1:9/hook"}], "fire_after": 1},
                               kafka={"bootstrap_servers": "127.0.0.1:9", "topic": "t", "group_id": "g"})
    baseline = Baseline.load(config.baseline)
    first = Daemon(config, baseline)
    results, _ = first.pipeline.process(car_loan(seed=2).messages(1000, drift_at=0))
    notes = [n for r in results for n in first.alerts.observe(r)]
    assert len(results) == 2 and notes
    # the crash comes right after the checkpoint that holds the closed windows
    first._outgoing = {"windows": results, "performance": [], "notifications": notes}
    first.checkpoint()
    first.outbox.close()
    assert not (tmp_path / "state" / "windows.jsonl").exists()

    second = Daemon(config, baseline)
    logged = read_jsonl(tmp_path / "state" / "windows.jsonl")
    assert [w["window"]["index"] for w in logged] == [0, 1]
    assert second.outbox.pending() == len(notes)
    assert second.pipeline.window.index == 2 and second.pipeline.window.events == 0
    # emitting again (a second crash) adds nothing: the log and the outbox dedupe
    second._outgoing = {"windows": results, "performance": [], "notifications": notes}
    assert second._emit_pending()
    assert len(read_jsonl(tmp_path / "state" / "windows.jsonl")) == 2
    assert second.outbox.pending() == len(notes)
    second.outbox.close()
    assert json.loads(json.dumps(Pipeline(config, baseline).state_dict()))  # state stays JSON


def test_a_full_disk_holds_closed_windows_until_checkpoint_log_and_outbox_take_them(tmp_path):
    """Checkpoint, window log and outbox each fail on a real full disk (or its SQLite equivalent):
    the closed windows stay pending (not emitted, offsets not committable), the failures are counted,
    and once the disk takes writes again they are written exactly once."""
    state = tmp_path / "state"
    unmount = mount_tmpfs(state, "1m")
    try:
        path, config = write_setup(tmp_path, car_loan(seed=1), window={"size": 500},
                                   alerts={"webhooks": [{"url": "http://127.0.0.1:9/hook"}], "fire_after": 1,
                                           "resolve_after": 1},
                                   kafka={"bootstrap_servers": "127.0.0.1:9", "topic": "t", "group_id": "g"})
        daemon = Daemon(config, Baseline.load(config.baseline))
        # drifted, then clean: alerts fire with the first two windows and resolve with the next two
        messages = car_loan(seed=2).messages(1000, drift_at=0) + car_loan(seed=3).messages(1000)
        filler = fill_disk(state)
        with daemon.lock:
            results, _ = daemon.pipeline.process(messages[:1000], None, "t:0", np.arange(1000))
            daemon._handle(results)
        health = daemon.state_health()
        assert health["checkpoint"]["failing"] and health["checkpoint"]["failures"] >= 1
        assert "No space left" in health["checkpoint"]["last_error"]
        assert health["windows_pending"] == 2
        assert daemon._durable_positions == {}  # nothing may be committed
        assert not (state / "windows.jsonl").exists() and daemon.outbox.pending() == 0
        assert not os.path.exists(daemon.store.checkpoint_path + ".tmp")  # no partial copy left taking space

        os.remove(filler)
        os.mkdir(state / "windows.jsonl")  # the window log cannot be written (a directory in its way)
        daemon.writes["checkpoint"].retry_at = 0.0  # skip the backoff
        with daemon.lock:
            daemon._handle([])
        assert not daemon.writes["checkpoint"].failing and daemon._durable_positions == {"t:0": 1000}
        notes = daemon.outbox.pending()
        assert notes >= 1  # the outbox took the notifications
        assert daemon.writes["window_log"].failures == 1 and daemon.state_health()["windows_pending"] == 2

        os.rmdir(state / "windows.jsonl")
        daemon.writes["window_log"].retry_at = 0.0
        with daemon.lock:
            daemon._handle([])
        assert daemon.state_health()["windows_pending"] == 0
        assert [w["window"]["index"] for w in read_jsonl(state / "windows.jsonl")] == [0, 1]
        assert daemon.outbox.pending() == notes  # submitted again, deduplicated

        # the outbox full (SQLite's own limit, SQLITE_FULL as on a full disk)
        pages = daemon.outbox._db.execute("PRAGMA page_count").fetchone()[0]
        daemon.outbox._db.execute(f"PRAGMA max_page_count = {pages}")
        with daemon.lock:
            results, _ = daemon.pipeline.process(messages[1000:], None, "t:0", np.arange(1000, 2000))
            daemon._handle(results)
        assert daemon.outbox.writes.failures >= 1 and daemon.state_health()["windows_pending"] == 2
        assert len(read_jsonl(state / "windows.jsonl")) == 2
        daemon.outbox._db.execute("PRAGMA max_page_count = 1073741823")
        daemon.outbox.writes.retry_at = 0.0
        with daemon.lock:
            daemon._handle([])
        assert daemon.state_health()["windows_pending"] == 0 and daemon.outbox.pending() > notes
        assert [w["window"]["index"] for w in read_jsonl(state / "windows.jsonl")] == [0, 1, 2, 3]
        daemon.outbox.close()
    finally:
        unmount()


def test_write_retry_backs_off_doubling_to_its_cap_and_resets_on_success():
    now = [100.0]
    retry = WriteRetry("the checkpoint", initial=0.5, maximum=4.0, clock=lambda: now[0])
    assert retry.due() and not retry.failing
    waits = []
    for _ in range(6):
        retry.failed(OSError(28, "No space left on device"))
        waits.append(retry.retry_at - now[0])
        assert not retry.due()
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert retry.failures == 6 and retry.failing and "No space left" in retry.last_error
    now[0] += 4.0
    assert retry.due()
    retry.ok()
    assert not retry.failing and retry.due() and retry.failures == 6 and retry.last_success is not None
