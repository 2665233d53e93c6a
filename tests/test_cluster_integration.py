"""Scale-out on a real Apache Kafka broker: one process vs three replicas with `cluster.enabled`.

The stream is produced window by window (event time); each window's messages are produced only after
both deployments have consumed the previous ones, so the single process sees every window whole, in
any partition order, exactly as the replicas' per-partition windows do. Event times lie ahead of the
wall clock, so only events (watermarks) close windows, never the clock: the comparison is exact.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime

import pytest
import yaml
from kafka import KafkaProducer

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests.daemon_proc import DaemonProcess
from tests.helpers import read_jsonl, write_setup
from tests.receiver import Receiver
from tests.test_daemon_integration import CLIENTS

pytestmark = pytest.mark.integration

PARTITIONS = 6
DURATION = 10.0  # seconds of event time per window
PER_WINDOW = 1200
# windows 1-3 drift: feature alerts fire with window 2 (fire_after 2) and resolve with window 5
DRIFTED = {1, 2, 3}
WINDOWS = 7  # the 7th only closes the 6th


def _config(tmp_path, broker, topic: str, receiver: Receiver, client: str = "kafka-python") -> tuple[str, object]:
    kafka = {"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": f"single-{topic}",
             "max_poll_interval_ms": 10000, "session_timeout_ms": 6000, "lag_interval": "1s",
             "commit_interval": "200ms", "client": client}
    return write_setup(tmp_path, car_loan(seed=1), window={"duration": "10s"}, kafka=kafka,
                       segments=[{"name": "channel"}],
                       alerts={"webhooks": [{"url": receiver.url + "/single"}], "fire_after": 2, "resolve_after": 2},
                       state={"dir": "state", "checkpoint_interval": "1s"})


def _replica(tmp_path, path: str, name: str, cluster: dict | None) -> DaemonProcess:
    home = tmp_path / name
    home.mkdir()
    tree = yaml.safe_load(open(path))
    tree["baseline"] = str(tmp_path / "baseline.json")
    tree["state"]["dir"] = str(home / "state")
    if cluster is not None:
        tree["cluster"] = cluster
        tree["kafka"]["group_id"] = tree["kafka"]["group_id"].replace("single-", "cluster-")
        tree["alerts"]["webhooks"][0]["url"] = tree["alerts"]["webhooks"][0]["url"].replace("/single", "/cluster")
    config = home / "driftmon.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    return DaemonProcess(str(config), free_port(), str(tmp_path / f"{name}.log"))


def _windows(daemons) -> dict[float, dict]:
    """Closed windows by start, over the window logs of all daemons (an aggregator that moved logged
    some windows on each replica; one logged twice after a crash is the same window)."""
    out = {}
    for d in daemons:
        log = os.path.join(os.path.dirname(d.config_path), "state", "windows.jsonl")
        if os.path.exists(log):
            for w in read_jsonl(log):
                out.setdefault(_seconds(w["window"]["start"]), w)
    return out


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _stream(start: float) -> list[list[bytes]]:
    synth = car_loan(seed=5)
    out = []
    for k in range(WINDOWS):
        t0 = start + k * DURATION
        msgs = synth.messages(PER_WINDOW, drift_at=0 if k in DRIFTED else None, start_time=t0 + 0.01,
                              rate=PER_WINDOW / (DURATION - 0.1), id_prefix=f"w{k}")
        out.append(msgs)
    return out


def _lifecycle(payloads) -> set:
    """The notifications as (alert, status, window): a redelivery (at-least-once, after an aggregator
    take-over) is the same entry."""
    return {(x["dedup_key"], x["status"], x["window"]["start"]) for x in payloads}


def _consumed(daemons) -> int:
    return sum((d.status() or {}).get("messages_consumed", 0) for d in daemons)


def _aggregators(daemons) -> list:
    return [d for d in daemons if d.proc.poll() is None and ((d.status() or {}).get("cluster") or {}).get("aggregator")]


@pytest.mark.parametrize("client", CLIENTS)
def test_three_replicas_give_the_single_process_verdicts_and_one_page(tmp_path, kafka_broker, client):
    receiver = Receiver()
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path, _ = _config(tmp_path, kafka_broker, topic, receiver, client)
    single = _replica(tmp_path, path, "single", None)
    replicas = [_replica(tmp_path, path, f"r{i}", {"enabled": True, "grace": "10m"}) for i in range(3)]
    start = (int(time.time() // DURATION) + 30) * DURATION  # ahead of the clock: only events close windows
    stream = _stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    daemons = [single, *replicas]
    try:
        for d in daemons:
            d.start()
        ready = b"ready: baseline loaded and consuming\n"
        for d in daemons:
            d.wait(lambda d=d: d.get("/readyz") == ready, 90, "an assignment")
        single.wait(lambda: len(_aggregators(replicas)) == 1, 60, "one aggregator")
        produced = 0
        for k, msgs in enumerate(stream):
            for i, m in enumerate(msgs):
                producer.send(topic, value=m, partition=i % PARTITIONS)
            producer.flush()
            produced += len(msgs)
            single.wait(lambda: _consumed([single]) >= produced, 90, f"single: window {k} consumed")
            single.wait(lambda: _consumed(replicas) >= produced, 90, f"replicas: window {k} consumed")
        single.wait(lambda: len(_windows([single])) >= WINDOWS - 1, 60, "single: windows closed")
        single.wait(lambda: len(_windows(replicas)) >= WINDOWS - 1, 90, "replicas: windows closed")
        ((alerts_single, alerts_cluster)) = [
            receiver.wait_for(lambda p: sum(x["status"] == "resolved" for x in p) >= 1, 60, path=p)
            for p in ("/single", "/cluster")]
        # both deliver the same notifications (each path's outbox at its own pace), then nothing more
        single.wait(lambda: _lifecycle(receiver.payloads("/cluster")) == _lifecycle(receiver.payloads("/single")),
                    60, "the same notifications from both")
        time.sleep(3)  # a duplicate page would come within the outbox's first retry
        alerts_single, alerts_cluster = receiver.payloads("/single"), receiver.payloads("/cluster")
        [agg] = _aggregators(replicas)
        status = agg.status()
        metrics = agg.metrics()
        workers = [d for d in replicas if d is not agg]
        worker_metrics = [d.metrics() for d in workers]
        for d in daemons:
            assert d.terminate(timeout=30)[0] == 0
    finally:
        producer.close()
        for d in daemons:
            d.close()
        receiver.close()

    one, many = _windows([single]), _windows(replicas)
    starts = sorted(one)[:WINDOWS - 1]
    assert sorted(many)[:WINDOWS - 1] == starts
    for s in starts:
        a, b = one[s], many[s]
        assert a["window"]["events"] == b["window"]["events"] == PER_WINDOW
        assert a["drifted"] == b["drifted"]
        for name, fa in a["features"].items():
            fb = b["features"][name]
            assert fa["drift"] == fb["drift"], (s, name)
            assert fa["distribution"]["counts"] == fb["distribution"]["counts"], (s, name)  # exact: counts add
            assert fa["distribution"]["missing"] == fb["distribution"]["missing"]
            # the means and variances combine in another order (Chan et al.): equal to rounding
            for key in ("score", "p_value"):
                va, vb = fa.get(key), fb.get(key)
                if isinstance(va, float):
                    assert vb == pytest.approx(va, rel=1e-9, abs=1e-12), (s, name, key)
        assert a["segments"]["channel"].keys() == b["segments"]["channel"].keys()
        for value, seg in a["segments"]["channel"].items():
            other = b["segments"]["channel"][value]
            assert (seg["events"], seg["drifted"]) == (other["events"], other["drifted"])
    assert {k for k, w in one.items() if w["drifted"]} == {start + k * DURATION for k in DRIFTED}

    # one page per alert: the same notifications as the single process, each exactly once
    assert _lifecycle(alerts_cluster) == _lifecycle(alerts_single)
    by_step: dict = {}  # each (alert, status) under one notification_id: redeliveries are the same notification
    for x in alerts_cluster:
        by_step.setdefault((x["dedup_key"], x["status"]), set()).add(x["notification_id"])
    assert all(len(ids) == 1 for ids in by_step.values()), by_step
    assert {("car-loan/feature_drift/car_value", "firing"), ("car-loan/feature_drift/car_value", "resolved")} \
        <= set(by_step)

    # the global metrics on the aggregator only; every replica consumed a share
    key = lambda name, **labels: (name, tuple(sorted({"model": "car-loan", **labels}.items())))  # noqa: E731
    assert status["cluster"]["late_partials"] == 0 and status["windows_evaluated"] == WINDOWS - 1
    assert metrics[key("driftmon_cluster_aggregator")] == 1
    assert metrics[key("driftmon_windows_evaluated_total")] == WINDOWS - 1
    assert key("driftmon_feature_drift_detected", feature="car_value") in metrics
    for m in worker_metrics:
        assert m[key("driftmon_cluster_aggregator")] == 0
        assert key("driftmon_feature_drift_detected", feature="car_value") not in m
        assert m[key("driftmon_messages_consumed_total")] > 0
    assert sum(m[key("driftmon_messages_consumed_total")] for m in [metrics, *worker_metrics]) \
        == WINDOWS * PER_WINDOW


@pytest.mark.parametrize("client", CLIENTS)
def test_kill_9_of_the_aggregator_and_a_worker_loses_and_double_counts_nothing(tmp_path, kafka_broker, client):
    """Mid-stream, the aggregator and another replica die with kill -9 and come back on empty state
    directories (emptyDir): every window still holds exactly its events, and each notification reaches
    the receiver with one notification_id (at-least-once delivery, one alert lifecycle)."""
    receiver = Receiver()
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path, _ = _config(tmp_path, kafka_broker, topic, receiver, client)
    cluster = {"enabled": True, "grace": "10m"}
    replicas = [_replica(tmp_path, path, f"r{i}", cluster) for i in range(3)]
    start = (int(time.time() // DURATION) + 30) * DURATION
    stream = _stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    everyone = list(replicas)
    try:
        for d in replicas:
            d.start()
        for d in replicas:
            d.wait(lambda d=d: d.get("/readyz") == b"ready: baseline loaded and consuming\n", 90, "an assignment")
        first = replicas[0]
        first.wait(lambda: len(_aggregators(replicas)) == 1, 60, "one aggregator")
        for k, msgs in enumerate(stream):
            for i, m in enumerate(msgs):
                producer.send(topic, value=m, partition=i % PARTITIONS)
            producer.flush()
            if k == 3:  # mid-stream, while the replicas work on it
                # The last replica's join may still move the aggregator (one that has not written yet would
                # never write): pick the one aggregator once it has written its changelog.
                def settled():
                    aggs = _aggregators(replicas)
                    return len(aggs) == 1 and aggs[0].status()["cluster"]["changelog_writes"] > 0 and aggs
                [agg] = first.wait(settled, 60, "one aggregator with a changelog record")
                other = next(d for d in replicas if d is not agg)
                first.wait(lambda: (agg.status() or {}).get("messages_consumed", 0) > 0, 30, "consuming")
                agg.kill9()
                other.kill9()
                survivors = [d for d in replicas if d not in (agg, other)]
                back = [_replica(tmp_path, path, f"{name}-again", cluster) for name in ("agg", "worker")]
                everyone += back
                for d in back:
                    d.start()
                replicas = survivors + back
        alive = replicas[0]
        alive.wait(lambda: len(_windows(everyone)) >= WINDOWS - 1, 180, "windows closed")
        payloads = receiver.wait_for(lambda p: any(x["status"] == "resolved" for x in p), 60, path="/cluster")
        time.sleep(3)
        payloads = receiver.payloads("/cluster")
        [agg] = alive.wait(lambda: (a := _aggregators(replicas)) and len(a) == 1 and a, 60, "one aggregator")
        status = agg.status()
        for d in replicas:
            assert d.terminate(timeout=30)[0] == 0
    finally:
        producer.close()
        for d in everyone:
            d.close()
        receiver.close()
    logs = "\n".join(open(d.log_path, errors="replace").read() for d in everyone)
    assert "restored its changelog" in logs  # a new aggregator took over from the changelog
    windows = _windows(everyone)
    starts = sorted(windows)[:WINDOWS - 1]
    assert starts == [start + k * DURATION for k in range(WINDOWS - 1)]
    assert [windows[s]["window"]["events"] for s in starts] == [PER_WINDOW] * (WINDOWS - 1)
    assert {s for s in starts if windows[s]["drifted"]} == {start + k * DURATION for k in DRIFTED}
    assert status["cluster"]["late_partials"] == 0
    # one lifecycle: each (alert, status) once, or again with the same notification_id (at-least-once)
    by_step: dict = {}
    for x in payloads:
        by_step.setdefault((x["dedup_key"], x["status"]), set()).add(x["notification_id"])
    assert all(len(keys) == 1 for keys in by_step.values()), by_step
    assert {("car-loan/feature_drift/car_value", "firing"), ("car-loan/feature_drift/car_value", "resolved")} \
        <= set(by_step)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_stalled_aggregator_that_wakes_up_is_fenced(tmp_path, kafka_broker, client):
    """The aggregator freezes (SIGSTOP) past its session timeout; another replica takes over; when the
    frozen one resumes (SIGCONT) it must not write its stale state or page: it is fenced by the changelog's
    transactional id, or finds its partition gone. Windows stay exact and each alert pages once."""
    receiver = Receiver()
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path, _ = _config(tmp_path, kafka_broker, topic, receiver, client)
    replicas = [_replica(tmp_path, path, f"r{i}", {"enabled": True, "grace": "10m"}) for i in range(3)]
    start = (int(time.time() // DURATION) + 30) * DURATION
    stream = _stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    try:
        for d in replicas:
            d.start()
        for d in replicas:
            d.wait(lambda d=d: d.get("/readyz") == b"ready: baseline loaded and consuming\n", 90, "an assignment")
        first = replicas[0]
        [frozen] = first.wait(lambda: (a := _aggregators(replicas)) and len(a) == 1 and a, 60, "one aggregator")
        others = [d for d in replicas if d is not frozen]
        for k, msgs in enumerate(stream):
            for i, m in enumerate(msgs):
                producer.send(topic, value=m, partition=i % PARTITIONS)
            producer.flush()
            if k == 2:
                frozen.proc.send_signal(signal.SIGSTOP)
                others[0].wait(lambda: len(_aggregators(others)) == 1, 120, "a new aggregator")
        others[0].wait(lambda: len(_windows(replicas)) >= WINDOWS - 1, 180, "windows closed")
        frozen.proc.send_signal(signal.SIGCONT)
        others[0].wait(lambda: "no longer the aggregator" in frozen.log() or "fenced" in frozen.log(), 60,
                       "the woken aggregator stands down")
        receiver.wait_for(lambda p: any(x["status"] == "resolved" for x in p), 60, path="/cluster")
        time.sleep(3)
        payloads = receiver.payloads("/cluster")
        others[0].wait(lambda: len(_aggregators(replicas)) == 1, 60, "one aggregator after the rejoin")
        for d in replicas:
            assert d.terminate(timeout=30)[0] == 0
    finally:
        producer.close()
        for d in replicas:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
            d.close()
        receiver.close()
    windows = _windows(replicas)
    starts = sorted(windows)[:WINDOWS - 1]
    assert [windows[s]["window"]["events"] for s in starts] == [PER_WINDOW] * (WINDOWS - 1)
    by_step: dict = {}
    for x in payloads:
        by_step.setdefault((x["dedup_key"], x["status"]), set()).add(x["notification_id"])
    assert all(len(keys) == 1 for keys in by_step.values()), by_step
    assert ("car-loan/feature_drift/car_value", "resolved") in by_step


@pytest.mark.parametrize("client", CLIENTS)
def test_internal_topics_that_cannot_be_created_stop_the_start_with_one_line(tmp_path, kafka_broker, client):
    """A replication factor the cluster cannot give (3 on one broker): exit 2, one line naming the key."""
    import subprocess
    import sys

    receiver = Receiver()
    try:
        topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=2)
        path, _ = _config(tmp_path, kafka_broker, topic, receiver, client)
        daemon = _replica(tmp_path, path, "r0", {"enabled": True, "replication_factor": 3})
        proc = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--config", daemon.config_path,
                               "--port", str(free_port())], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        receiver.close()
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last.startswith("config error: cluster.create_topics: cannot create ") and "Traceback" not in proc.stderr
    assert f"{topic}.driftmon.car-loan.partials" in last
