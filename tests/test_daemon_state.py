"""Checkpoint semantics of the daemon that need no broker: re-emission after a crash."""

import json

from monitor.baseline import Baseline
from monitor.daemon import Daemon
from monitor.pipeline import Pipeline
from monitor.synth import car_loan
from tests.helpers import read_jsonl, write_setup


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
    second._emit({"windows": results, "performance": [], "notifications": notes})
    assert len(read_jsonl(tmp_path / "state" / "windows.jsonl")) == 2
    assert second.outbox.pending() == len(notes)
    second.outbox.close()
    assert json.loads(json.dumps(Pipeline(config, baseline).state_dict()))  # state stays JSON
