"""Scale-out on a real Apache Kafka broker: one process vs three replicas with `cluster.enabled`.

The stream is produced window by window (event time); each window's messages are produced only after
both deployments have consumed the previous ones, so the single process sees every window whole, in
any partition order, exactly as the replicas' per-partition windows do. Event times lie ahead of the
wall clock, so only events (watermarks) close windows, never the clock: the comparison is exact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from contextlib import closing, contextmanager
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


READY = b"ready: baseline loaded and consuming\n"


@contextmanager
def _running(replicas, single=None, start: bool = True):
    """Run the replicas (and the ``single`` process beside them) for a ``with`` block; yield them as a list, to
    which the block adds the replicas it starts itself.

    With ``start``, start them first and wait until each is ready (it holds an assignment) and until exactly one
    replica is the aggregator. When the block ends normally, every daemon not killed (``kill9``) is stopped with
    SIGTERM and must exit 0; in any case all are then closed (SIGKILL, which also ends a stopped one)."""
    daemons = [d for d in (single, *replicas) if d is not None]
    try:
        if start:
            for d in daemons:
                d.start()
            for d in daemons:
                d.wait(lambda d=d: d.get("/readyz") == READY, 90, "an assignment")
            daemons[0].wait(lambda: len(_aggregators(replicas)) == 1, 60, "one aggregator")
        yield daemons
        for d in daemons:
            if not d.killed:
                assert d.terminate(timeout=30)[0] == 0
    except BaseException:
        # a failure names one daemon's log at most: print every daemon's tail (pytest shows it with the failure)
        for d in daemons:
            print(f"===== {d.log_path} (last 6000 bytes) =====\n{d.log()}")
        raise
    finally:
        for d in daemons:
            d.close()


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


def _groups(daemon) -> tuple[str, str]:
    """The replicas' two consumer groups: the source topic's and the aggregator's (the partials topic's)."""
    group = yaml.safe_load(open(daemon.config_path))["kafka"]["group_id"]
    return group, f"{group}-aggregator"


@pytest.fixture(scope="module")
def admin(kafka_broker):
    """One admin client on the harness's broker for the module's group and topic checks."""
    from kafka.admin import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=15000)
    yield client
    client.close()


def _groups_stable(admin, groups, members: int) -> bool:
    """Every group is Stable (no rebalance under way) with ``members`` members, as the coordinator sees it."""
    described = admin.describe_groups(list(groups))
    return len(described) == len(groups) and all(
        g.get("group_state", g.get("state")) == "Stable" and len(g["members"]) == members for g in described.values())


def _topic_configs(admin, topic: str) -> dict:
    """The topic's configs the broker reports as set on the topic (not defaults)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    (by_name,) = described.values()  # {resource type: {name: {key: {"value": ...}}}}
    return {key: data["value"] for key, data in by_name[topic].items()}


def _settled_aggregator(daemons, waiter, admin, timeout: float = 120, written: bool = True):
    """The one aggregator once the groups have settled: both are Stable with every replica a member, every
    replica answers, exactly one says it is the aggregator and (``written``) it has written its changelog (an
    aggregator displaced by a late join before its first write never writes, and one that never wrote leaves
    nothing for a successor to restore)."""
    def settled():
        if not _groups_stable(admin, _groups(daemons[0]), len(daemons)):
            return None
        statuses = [(d, d.status()) for d in daemons]
        if any(s is None for _d, s in statuses):
            return None
        aggs = [(d, s) for d, s in statuses if s["cluster"]["aggregator"]]
        return len(aggs) == 1 and (aggs[0][1]["cluster"]["changelog_writes"] > 0 or not written) and aggs[0][0]
    return waiter.wait(settled, timeout, "settled groups and one aggregator" + (" that has written its changelog"
                                                                               if written else ""))


def _outbox_empty(daemons) -> bool:
    """Every daemon's outbox holds nothing undelivered: with every window evaluated, nothing more is sent."""
    for d in daemons:
        body = d.get("/metrics")
        if body is None:
            return False
        pending = [v for (name, _labels), v in d.metrics().items() if name == "driftmon_outbox_pending"]
        if not pending or any(pending):
            return False
    return True


def _full_log(d) -> str:
    with open(d.log_path, "rb") as fh:
        return fh.read().decode(errors="replace")


def _roles(text: str) -> list[str]:
    """The aggregator role's transitions in a replica's log, in order: "took" (restored, active) or "left"
    (resigned: fenced, or its partials partition revoked)."""
    out = []
    for line in text.splitlines():
        if re.search(r"aggregator for \S+: restored ", line):
            out.append("took")
        elif "no longer the aggregator for " in line:
            out.append("left")
    return out


@pytest.mark.parametrize("client", CLIENTS)
def test_three_replicas_give_the_single_process_verdicts_and_one_page(tmp_path, kafka_broker, admin, client):
    receiver = Receiver()
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path, _ = _config(tmp_path, kafka_broker, topic, receiver, client)
    single = _replica(tmp_path, path, "single", None)
    replicas = [_replica(tmp_path, path, f"r{i}", {"enabled": True, "grace": "10m"}) for i in range(3)]
    start = (int(time.time() // DURATION) + 30) * DURATION  # ahead of the clock: only events close windows
    stream = _stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    with closing(producer), closing(receiver), _running(replicas, single) as daemons:
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
        single.wait(lambda: _outbox_empty(daemons), 60, "every outbox delivered")  # nothing more to send
        alerts_single, alerts_cluster = receiver.payloads("/single"), receiver.payloads("/cluster")
        agg = _settled_aggregator(replicas, single, admin, 60, written=False)
        status = agg.status()
        metrics = agg.metrics()
        changelog = _topic_configs(admin, status["cluster"]["changelog_topic"])
        workers = [d for d in replicas if d is not agg]
        worker_metrics = [d.metrics() for d in workers]

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
    # the changelog driftmon created rolls its active segment (which compaction never touches) every 10 minutes
    assert changelog["cleanup.policy"] == "compact" and changelog["segment.ms"] == "600000", changelog
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
def test_kill_9_of_the_aggregator_and_a_worker_loses_and_double_counts_nothing(tmp_path, kafka_broker, admin, client):
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
    with closing(producer), closing(receiver), _running(replicas) as everyone:
        first = replicas[0]
        for k, msgs in enumerate(stream):
            for i, m in enumerate(msgs):
                producer.send(topic, value=m, partition=i % PARTITIONS)
            producer.flush()
            if k == 3:  # mid-stream, while the replicas work on it
                # The last replica's join may still move the aggregator (one that has not written yet would
                # never write): pick the one aggregator once it has written its changelog.
                agg = _settled_aggregator(replicas, first, admin)
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
        agg = _settled_aggregator(replicas, alive, admin, 60, written=False)
        alive.wait(lambda: _outbox_empty(replicas), 60, "every outbox delivered")  # nothing more to send
        payloads = receiver.payloads("/cluster")
        status = agg.status()
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
def test_a_stalled_aggregator_that_wakes_up_is_fenced(tmp_path, kafka_broker, admin, client):
    """The aggregator freezes (SIGSTOP) past its session timeout; another replica takes over from its
    changelog; when the frozen one resumes (SIGCONT) it must not write its stale state or page: it is fenced
    by the changelog's transactional id, or finds its partition gone. Windows stay exact and each alert
    pages once."""
    receiver = Receiver()
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path, _ = _config(tmp_path, kafka_broker, topic, receiver, client)
    replicas = [_replica(tmp_path, path, f"r{i}", {"enabled": True, "grace": "10m"}) for i in range(3)]
    start = (int(time.time() // DURATION) + 30) * DURATION
    stream = _stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    with closing(producer), closing(receiver), _running(replicas):
        first = replicas[0]
        produced = 0
        for k, msgs in enumerate(stream):
            for i, m in enumerate(msgs):
                producer.send(topic, value=m, partition=i % PARTITIONS)
            producer.flush()
            produced += len(msgs)
            if k == 2:
                # Windows 0 and 1 are merged and written to the changelog; no alert has fired yet (it fires
                # with window 2, whose close needs window 3's events). Freeze the settled aggregator.
                first.wait(lambda: _consumed(replicas) >= produced, 90, "windows 0-2 consumed")
                def freeze():
                    agg = _settled_aggregator(replicas, first, admin)
                    agg.proc.send_signal(signal.SIGSTOP)
                    # The aggregator at the moment it froze (its log stands still now): its last role step is
                    # a take-over, and no other replica holds the role (the group cannot move it before the
                    # frozen member's session times out). Else the role moved meanwhile: wake it, try again.
                    rest = [d for d in replicas if d is not agg]
                    if _roles(_full_log(agg))[-1:] == ["took"] and not _aggregators(rest):
                        return agg
                    agg.proc.send_signal(signal.SIGCONT)
                    return None

                frozen = first.wait(freeze, 240, "the settled aggregator frozen")
                mark = len(_full_log(frozen))
                others = [d for d in replicas if d is not frozen]
                # another replica takes over from the frozen one's changelog
                successor = others[0].wait(lambda: (a := _aggregators(others)) and len(a) == 1 and a[0], 120,
                                           "a new aggregator while the old one is frozen")
                assert _roles(_full_log(successor))[-1] == "took"
                assert "restored its changelog" in _full_log(successor).rsplit("no longer the aggregator", 1)[-1]
        others[0].wait(lambda: len(_windows(replicas)) >= WINDOWS - 1, 180, "windows closed")
        receiver.wait_for(lambda p: any(x["status"] == "resolved" for x in p), 60, path="/cluster")
        assert len(_full_log(frozen)) == mark  # still frozen: it slept through the take-over and the alerts
        frozen.proc.send_signal(signal.SIGCONT)
        # Awake, its first role step drops the stale state: it stands down (its transaction is fenced, or
        # its partition was revoked), or, given the partition again in the same rebalance, it fences the
        # successor and restores the successor's changelog like any new aggregator.
        others[0].wait(lambda: _roles(_full_log(frozen)[mark:]), 90, "the woken aggregator's next role step")
        woken = _full_log(frozen)[mark:]
        first_step = next(line for line in woken.splitlines() if _roles(line))
        assert "no longer the aggregator" in first_step or "restored its changelog" in first_step, woken
        # the group settles again, with one aggregator (either: the woken one may be assigned the partition
        # again, and then it restores the changelog like any new aggregator)
        _settled_aggregator(replicas, others[0], admin, written=False)  # after the woken one rejoined
        others[0].wait(lambda: _outbox_empty(replicas), 60, "every outbox delivered")  # nothing more to send
        payloads = receiver.payloads("/cluster")
    windows = _windows(replicas)
    starts = sorted(windows)[:WINDOWS - 1]
    assert starts == [start + k * DURATION for k in range(WINDOWS - 1)]
    assert [windows[s]["window"]["events"] for s in starts] == [PER_WINDOW] * (WINDOWS - 1)
    assert {s for s in starts if windows[s]["drifted"]} == {start + k * DURATION for k in DRIFTED}
    # the windows of the stall (2 to 5) were evaluated by the successor, never by the frozen replica
    frozen_log = os.path.join(os.path.dirname(frozen.config_path), "state", "windows.jsonl")
    frozen_starts = {_seconds(w["window"]["start"]) for w in read_jsonl(frozen_log)} if os.path.exists(frozen_log) \
        else set()
    stalled = {start + k * DURATION for k in range(2, WINDOWS - 1)}
    # (unless it is the aggregator again: then it re-emits, from the changelog, what the successor's last
    # record held pending, and the receiver sees the same notification_id again)
    assert not frozen_starts & stalled or "took" in _roles(_full_log(frozen)[mark:]), sorted(frozen_starts)
    # each alert pages once: one notification_id per (alert, status)
    by_step: dict = {}
    for x in payloads:
        by_step.setdefault((x["dedup_key"], x["status"]), set()).add(x["notification_id"])
    assert all(len(keys) == 1 for keys in by_step.values()), by_step
    assert {("car-loan/feature_drift/car_value", "firing"), ("car-loan/feature_drift/car_value", "resolved")} \
        <= set(by_step)


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


# ---- labels: the join at the worker that owns the prediction's partition ------------------------------

PHASES = 6  # phase k: predictions of period k, and the labels (10 s later) of 90% of period k-1's
PER_PHASE = 1200
LABELLED = 1080


def _labelled_config(tmp_path, broker, topic: str, labels_topic: str, receiver, client: str = "kafka-python") -> str:
    """The labelled model of tests/labelled.py, event-time windows of 10 s for predictions and performance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from monitor.baseline import build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled

    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    tree = labelled_config(
        window={"duration": "10s"},
        # ttl 17 s: an unlabelled prediction expires two phases later, whatever the partition's latest time
        labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp", "ttl": "17s"},
        kafka={"bootstrap_servers": broker.bootstrap, "topic": topic, "labels_topic": labels_topic,
               "group_id": f"single-{topic}", "max_poll_interval_ms": 10000, "session_timeout_ms": 6000,
               "lag_interval": "1s", "commit_interval": "200ms", "client": client},
        alerts={"webhooks": [{"url": receiver.url + "/single"}]},
        state={"dir": "state", "checkpoint_interval": "1s"})
    tree["baseline"] = str(tmp_path / "baseline.json")
    path = tmp_path / "driftmon.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    build_baseline(load_config(path), str(tmp_path / "train.parquet")).save(tree["baseline"])
    return str(path)


def _labelled_stream(start: float) -> list[tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]]:
    """Per phase: (partition, prediction) and (partition, label) pairs; a label goes to its prediction's
    partition (co-partitioned, as a producer keyed by id does). Each phase's events lie in the first half of
    its 10 s, so the TTL's horizon falls between phases on every partition."""
    from tests.labelled import label_messages, labelled, messages

    out = []
    for k in range(PHASES):
        cols = labelled(PER_PHASE, seed=40 + k, start=start + 10 * k + 0.01, rate=PER_PHASE / 5.0, id_prefix=f"w{k}")
        preds = [(i % PARTITIONS, m) for i, m in enumerate(messages(cols, with_label=False))]
        labels = label_messages({key: v[:LABELLED] for key, v in cols.items()}, delay=10.0)
        out.append((preds, [(i % PARTITIONS, m) for i, m in enumerate(labels)]))
    return out


def _performance(daemons) -> dict[float, dict]:
    out = {}
    for d in daemons:
        log = os.path.join(os.path.dirname(d.config_path), "state", "performance.jsonl")
        if os.path.exists(log):
            for w in read_jsonl(log):
                out.setdefault(_seconds(w["window"]["start"]), w)
    return out


def _produce_phase(producer, topic, labels_topic, stream, k) -> int:
    preds, _ = stream[k]
    labels = stream[k - 1][1] if k else []
    for p, m in preds:
        producer.send(topic, value=m, partition=p)
    for p, m in labels:
        producer.send(labels_topic, value=m, partition=p)
    producer.flush()
    return len(preds) + len(labels)


def _label_counts(status: dict) -> tuple:
    labels = status["labels"]
    return labels["received"], labels["matched"], labels["expired"], labels["pending"]


#: after the last phase: every label received and matched; the unlabelled predictions of all phases but
#: the last two expired; those of the second-to-last and all of the last one's wait
EXPECTED_LABELS = ((PHASES - 1) * LABELLED, (PHASES - 1) * LABELLED, (PHASES - 2) * (PER_PHASE - LABELLED),
                   (PER_PHASE - LABELLED) + PER_PHASE)


@pytest.mark.parametrize("client", CLIENTS)
def test_labels_three_replicas_give_the_single_process_performance_windows(tmp_path, kafka_broker, receiver, client):
    """Labels joined where each prediction partition is read: the per-window performance, fairness, segment
    and label-drift results of 3 replicas equal one process's (counts exactly, sums to float rounding), and
    the label counts (received, matched, expired, pending) are exact."""
    from tests.test_cluster import assert_same

    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    labels_topic = kafka_broker.create_topic(f"labels-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path = _labelled_config(tmp_path, kafka_broker, topic, labels_topic, receiver, client)
    single = _replica(tmp_path, path, "single", None)
    replicas = [_replica(tmp_path, path, f"r{i}", {"enabled": True, "grace": "10m"}) for i in range(3)]
    start = (int(time.time() // DURATION) + 30) * DURATION  # ahead of the clock: only events close windows
    stream = _labelled_stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    with closing(producer), _running(replicas, single):
        produced = 0
        for k in range(PHASES):
            produced += _produce_phase(producer, topic, labels_topic, stream, k)
            single.wait(lambda: _consumed([single]) >= produced, 90, f"single: phase {k} consumed")
            single.wait(lambda: _consumed(replicas) >= produced, 90, f"replicas: phase {k} consumed")
        single.wait(lambda: len(_performance([single])) >= PHASES - 2, 60, "single: performance windows")
        single.wait(lambda: len(_performance(replicas)) >= PHASES - 2, 90, "replicas: performance windows")
        # re-read each time: the role is Kafka's to move
        agg = single.wait(lambda: (a := _aggregators(replicas)) and len(a) == 1
                          and _label_counts(a[0].status()) == EXPECTED_LABELS and a[0], 60,
                          "the replicas' label counts")
        status_single, status_agg = single.status(), agg.status()
    one, many = _performance([single]), _performance(replicas)
    starts = sorted(one)[:PHASES - 2]
    assert starts == [start + 10 * (k + 1) for k in range(PHASES - 2)]  # phase k's labels join in window k+1
    assert sorted(many)[:PHASES - 2] == starts
    for s in starts:
        a, b = one[s], many[s]
        assert a["window"]["labelled"] == b["window"]["labelled"] == LABELLED
        for section in ("metrics", "drops", "fairness", "segments", "label_drift"):
            assert_same(a[section], b[section], f"{s}.{section}")
    assert _label_counts(status_single) == _label_counts(status_agg) == EXPECTED_LABELS
    assert status_agg["cluster"]["late_performance_partials"] == 0
    # the prediction windows too
    assert [w["window"]["events"] for _s, w in sorted(_windows(replicas).items())][:PHASES - 1] == \
        [PER_PHASE] * (PHASES - 1)


def _caught_up(broker, group_id: str, topics) -> bool:
    """The group's committed offsets are at the end of every partition of ``topics``: with labels the workers
    commit them in the transactions that write their state, so this is "every record is in a durable cut"."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        ends = consumer.end_offsets(tps)
        return all((consumer.committed(tp) or 0) == ends[tp] for tp in tps)
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_labels_kill_9_of_a_worker_loses_and_double_counts_no_label(tmp_path, kafka_broker, receiver, admin, client):
    """Mid-stream a worker dies with kill -9 and a new one starts on an empty state directory: its partitions'
    pending joins and open windows come back from the join changelog, and the label counts and every
    performance window's labelled count are exact."""
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    labels_topic = kafka_broker.create_topic(f"labels-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path = _labelled_config(tmp_path, kafka_broker, topic, labels_topic, receiver, client)
    cluster = {"enabled": True, "grace": "10m"}
    replicas = [_replica(tmp_path, path, f"r{i}", cluster) for i in range(3)]
    group = f"cluster-{topic}"
    start = (int(time.time() // DURATION) + 30) * DURATION
    stream = _labelled_stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    with closing(producer), _running(replicas) as everyone:
        first = replicas[0]
        for k in range(PHASES):
            if k == 3:  # a worker: not the aggregator, once the group has settled
                aggregator = _settled_aggregator(replicas, first, admin)
                victim = next(d for d in replicas if d is not aggregator)
                seen = _consumed([victim])
            _produce_phase(producer, topic, labels_topic, stream, k)
            if k == 3:  # mid-stream, while it reads the phase: its pending joins and open windows are at stake
                victim.wait(lambda: _consumed([victim]) > seen, 60, "the victim reading phase 3")
                victim.kill9()
                back = _replica(tmp_path, path, "worker-again", cluster)
                everyone.append(back)
                back.start()
                replicas = [d for d in replicas if d is not victim] + [back]
            replicas[0].wait(lambda: _caught_up(kafka_broker, group, (topic, labels_topic)), 180, f"phase {k} in cuts")
        alive = replicas[0]
        agg = alive.wait(lambda: (a := _aggregators(replicas)) and len(a) == 1
                         and _label_counts(a[0].status()) == EXPECTED_LABELS and a[0], 60, "exact label counts")
        alive.wait(lambda: len(_performance(everyone)) >= PHASES - 2, 90, "performance windows")
        status = agg.status()
        restored = sum((d.status() or {}).get("cluster", {}).get("partitions_restored", 0) for d in replicas)
    perf = _performance(everyone)
    starts = sorted(perf)[:PHASES - 2]
    assert starts == [start + 10 * (k + 1) for k in range(PHASES - 2)]
    assert [perf[s]["window"]["labelled"] for s in starts] == [LABELLED] * (PHASES - 2)
    assert _label_counts(status) == EXPECTED_LABELS
    assert status["cluster"]["late_performance_partials"] == 0
    assert restored >= 1  # partitions resumed from a state record of the changelog
    windows = _windows(everyone)
    assert [windows[s]["window"]["events"] for s in sorted(windows)[:PHASES - 1]] == [PER_PHASE] * (PHASES - 1)


@pytest.mark.parametrize("client", CLIENTS)
def test_labels_a_stalled_worker_that_wakes_up_is_fenced(tmp_path, kafka_broker, receiver, admin, client):
    """A worker freezes (SIGSTOP) mid-stream past its session timeout; the others take its partitions over
    from the join changelog (which fences its transactional ids). Awake (SIGCONT), it must not commit a
    stale cut: its transactions are fenced (or it finds its partitions gone) and it rejoins. The label counts
    and every window's counts stay exact."""
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    labels_topic = kafka_broker.create_topic(f"labels-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    path = _labelled_config(tmp_path, kafka_broker, topic, labels_topic, receiver, client)
    replicas = [_replica(tmp_path, path, f"r{i}", {"enabled": True, "grace": "10m"}) for i in range(3)]
    group = f"cluster-{topic}"
    start = (int(time.time() // DURATION) + 30) * DURATION
    stream = _labelled_stream(start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    restored = lambda ds: sum((d.status() or {}).get("cluster", {}).get("partitions_restored", 0)  # noqa: E731
                              for d in ds)
    with closing(producer), _running(replicas):
        first = replicas[0]
        for k in range(PHASES):
            if k == 3:  # a worker: not the aggregator, once the group has settled
                aggregator = _settled_aggregator(replicas, first, admin)
                frozen = next(d for d in replicas if d is not aggregator)
                others = [d for d in replicas if d is not frozen]
                seen, before = _consumed([frozen]), restored(others)
            _produce_phase(producer, topic, labels_topic, stream, k)
            if k == 3:  # while it reads the phase: it holds records it has not cut yet
                frozen.wait(lambda: _consumed([frozen]) > seen, 60, "the frozen worker reading phase 3")
                frozen.proc.send_signal(signal.SIGSTOP)
                mark = len(_full_log(frozen))
                # its session expires; the others restore its two partitions from the changelog and cut them
                others[0].wait(lambda: restored(others) >= before + 2, 120, "the others taking its partitions")
                others[0].wait(lambda: _caught_up(kafka_broker, group, (topic, labels_topic)), 180,
                               "phase 3 in the others' cuts")
                assert len(_full_log(frozen)) == mark  # it slept through the take-over
                taken = [len(_full_log(d)) for d in others]  # their logs from here on: after the take-over
                frozen.proc.send_signal(signal.SIGCONT)
                # awake: it leaves the group and rejoins (fenced at its next cut, or its partitions gone)
                others[0].wait(lambda: _groups_stable(admin, _groups(frozen), 3)
                               and frozen.get("/readyz") == READY, 120,
                               "the woken worker back in the group")
            first.wait(lambda: _caught_up(kafka_broker, group, (topic, labels_topic)), 180, f"phase {k} in cuts")
        agg = first.wait(lambda: (a := _aggregators(replicas)) and len(a) == 1
                         and _label_counts(a[0].status()) == EXPECTED_LABELS and a[0], 60, "exact label counts")
        first.wait(lambda: len(_performance(replicas)) >= PHASES - 2, 90, "performance windows")
        status = agg.status()
        after = [_full_log(d)[m:] for d, m in zip(others, taken)]
    # the woken worker never took a transactional id back from a partition's new owner (which would be fenced,
    # and rejoin). Its cut stopped mid-commit may time out on waking (the 10 s passed while it was stopped) rather
    # than be told it is fenced: the next cut finishes that commit on the same producer (same epoch), which the
    # new owner's init has fenced, and it rejoins; its offsets, sent with the old generation's metadata, are
    # refused meanwhile (KIP-447), so counts stay exact either way
    for text in after:
        assert "fenced: another replica took over partition" not in text, text[-3000:]
    perf = _performance(replicas)
    starts = sorted(perf)[:PHASES - 2]
    assert starts == [start + 10 * (k + 1) for k in range(PHASES - 2)]
    assert [perf[s]["window"]["labelled"] for s in starts] == [LABELLED] * (PHASES - 2)
    assert _label_counts(status) == EXPECTED_LABELS
    assert status["cluster"]["late_performance_partials"] == 0
    windows = _windows(replicas)
    assert [windows[s]["window"]["events"] for s in sorted(windows)[:PHASES - 1]] == [PER_PHASE] * (PHASES - 1)


#: the changelog partition of the restore test: a million pending joins, and 1.5 million matched ids whose entry
#: and tombstone compaction has not removed yet: 4 million records, read at most at about 90,000 a second
#: (30,000 on a loaded machine, docs/DESIGN.md "Restore time"), over 40 s: several times the 6 s session timeout
RESTORE_ENTRIES = 1_000_000
RESTORE_GONE = 1_500_000


def _prefill(config, baseline, scratch: str, topic: str, labels_topic: str, join_topic: str,
             start: float) -> tuple[list[bytes], list[bytes]]:
    """Write what a previous owner of partition 0 left in its join changelog: ``RESTORE_ENTRIES`` pending joins
    (ids ``pre-<i>``, real entries), ``RESTORE_GONE`` entries and their tombstones (ids ``gone-<i>``: matched
    since), and its state record after it read 100 predictions and their 100 labels (offsets 0-99 of both
    topics, all matched: returned, to be produced; the partition resumes at 100)."""
    import msgspec

    from monitor.cluster import Worker
    from monitor.join_changelog import PartitionLog
    from tests.labelled import label_messages, labelled, messages

    worker = Worker(config, baseline, scratch)
    cols = labelled(100, seed=4, start=start + 0.01, rate=100.0, id_prefix="tmpl")
    worker.process(f"{topic}:1", messages(cols, with_label=False), None, list(range(100)))
    template = [v for v in worker.cut(f"{topic}:1")[1].values() if v is not None]
    worker.release([f"{topic}:1"])
    assert len(template) == 100
    cols = labelled(100, seed=5, start=start + 0.01, rate=100.0, id_prefix="old")
    old, old_labels = messages(cols, with_label=False), label_messages(cols, delay=0.5)
    key = f"{topic}:0"
    worker.process(key, old, None, list(range(100)))
    worker.process_labels(f"{labels_topic}:0", old_labels, None, list(range(100)))
    _partials, changes, state, _offsets = worker.cut(key)
    worker.release([key])
    assert state["positions"] == {key: 100, f"{labels_topic}:0": 100}
    assert (state["counts"]["received"], state["counts"]["matched"], state["counts"]["pending"]) == (100, 100, 0)
    # confluent-kafka writes a million records in seconds; the replica reads them with its own client
    writer = PartitionLog(msgspec.structs.replace(config.kafka, client="confluent-kafka"), join_topic, 0, None)
    writer.fence()
    try:
        def write(batch):
            writer.write(f"{join_topic}-unused", b"lender", [], batch, state, {}, timeout_s=60.0)

        for lo in range(0, RESTORE_ENTRIES, 50_000):
            write({f"pre-{i}": template[i % 100] for i in range(lo, min(RESTORE_ENTRIES, lo + 50_000))})
        for lo in range(0, RESTORE_GONE, 50_000):
            gone = [f"gone-{i}" for i in range(lo, min(RESTORE_GONE, lo + 50_000))]
            write({k: template[i % 100] for i, k in enumerate(gone)})
            write(dict.fromkeys(gone))  # tombstones
        writer.write(f"{join_topic}-unused", b"lender", [], changes, state, {}, timeout_s=60.0)
    finally:
        writer.close()
    return old, old_labels


def _restore_scenario(tmp_path, kafka_broker, receiver, client, replicas: dict):
    """The restore tests' setup: 2-partition prediction, label and join topics, a labelled config in which nothing
    expires (every count is exact by construction), one replica per name of ``replicas`` (name -> client id, or None
    for the default), partition 0's join changelog prefilled by a previous owner (:func:`_prefill`) and the records
    it had read sent, and the streams the tests send during and after the restore. Returns them as attributes."""
    from types import SimpleNamespace

    from monitor.baseline import Baseline
    from monitor.config import load_config
    from tests.labelled import label_messages, labelled

    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=2)
    labels_topic = kafka_broker.create_topic(f"labels-{uuid.uuid4().hex[:8]}", partitions=2)
    join_topic = kafka_broker.create_topic(f"{topic}.driftmon.lender.join", partitions=2)
    path = _labelled_config(tmp_path, kafka_broker, topic, labels_topic, receiver, client)
    tree = yaml.safe_load(open(path))
    tree["labels"]["ttl"] = "1d"
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    started = []
    for name, client_id in replicas.items():
        d = _replica(tmp_path, path, name, {"enabled": True, "grace": "10m"})
        if client_id is not None:
            replica_tree = yaml.safe_load(open(d.config_path))
            replica_tree["kafka"]["client_id"] = client_id
            with open(d.config_path, "w") as fh:
                yaml.safe_dump(replica_tree, fh, sort_keys=False)
        started.append(d)
    config = load_config(started[0].config_path)
    start = (int(time.time() // DURATION) + 30) * DURATION
    old, old_labels = _prefill(config, Baseline.load(config.baseline), str(tmp_path / "scratch"), topic,
                               labels_topic, join_topic, start)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=5)
    for m in old:  # read by the previous owner: its state record resumes after them (read again, they would count)
        producer.send(topic, value=m, partition=0)
    for m in old_labels:
        producer.send(labels_topic, value=m, partition=0)
    producer.flush()
    # during the restore: predictions on partition 1 (not restoring: read at once)
    early = labelled(200, seed=6, start=start + 1.0, rate=100.0, id_prefix="early")
    # after it: labels for 5,000 restored joins and for 150 early predictions, new predictions on both
    late = labelled(400, seed=7, start=start + 3.0, rate=100.0, id_prefix="late")
    pre_labels = [json.dumps({"id": f"pre-{i}", "timestamp": start + 5.0, "y": i % 2}).encode()
                  for i in range(0, RESTORE_ENTRIES, RESTORE_ENTRIES // 5000)]
    early_labels = label_messages({k: v[:150] for k, v in early.items()}, delay=4.0)
    return SimpleNamespace(topic=topic, labels_topic=labels_topic, join_topic=join_topic, replicas=started,
                           producer=producer, early=early, late=late, pre_labels=pre_labels, early_labels=early_labels)


def _send_after_restore(sc) -> tuple:
    """Send what the restore tests send once partition 0 is restored (new predictions on both partitions, labels for
    5,000 restored joins and for 150 early predictions); return the label counts then expected (received, matched,
    expired, pending): the previous owner's 100 joins, the restored ones and these."""
    from tests.labelled import messages

    for i, m in enumerate(messages(sc.late, with_label=False)):
        sc.producer.send(sc.topic, value=m, partition=i % 2)
    for m in sc.pre_labels:
        sc.producer.send(sc.labels_topic, value=m, partition=0)
    for m in sc.early_labels:
        sc.producer.send(sc.labels_topic, value=m, partition=1)
    sc.producer.flush()
    joined = 100 + len(sc.pre_labels) + len(sc.early_labels)
    return joined, joined, 0, RESTORE_ENTRIES + 200 + 400 - len(sc.pre_labels) - len(sc.early_labels)


@pytest.mark.parametrize("client", CLIENTS)
def test_labels_a_restore_longer_than_the_session_keeps_the_group_membership(tmp_path, kafka_broker, receiver,
                                                                            client):
    """A replica is given a partition whose join changelog holds a million pending joins: restoring it takes
    several times ``kafka.session_timeout_ms``. The restore runs on the consuming thread with the partition
    paused, so the member stays in the group through it (one assignment, no rebalance; in the assignment
    callback, as before, kafka-python sent no heartbeat and was dropped), /status and /readyz say it is
    restoring, and afterwards the restored joins match their labels and the partition resumes at the restored
    offsets (the previous owner's records are not read again): the label counts are exact."""
    from monitor.config import load_config
    from tests.labelled import messages

    sc = _restore_scenario(tmp_path, kafka_broker, receiver, client, {"r0": None})
    (replica,) = sc.replicas
    topic, join_topic, producer = sc.topic, sc.join_topic, sc.producer
    assert load_config(replica.config_path).kafka.session_timeout_ms == 6000
    restoring = lambda: ((replica.status() or {}).get("cluster") or {}).get("restoring_partitions")  # noqa: E731
    with closing(producer), _running(sc.replicas, start=False):
        replica.start()
        # partition 1's changelog is empty: restored at once, while partition 0's takes tens of seconds
        seen = replica.wait(lambda: (r := restoring()) and [x["partition"] for x in r] == [f"{topic}:0"] and r,
                            90, "partition 0 alone restoring")
        assert seen[0]["phase"] in ("fence", "read", "fill"), seen
        ready = replica.get("/readyz").decode()
        assert ready.startswith(f"ready: consuming; restoring the state of {topic}:0 from {join_topic}"), ready
        for m in messages(sc.early, with_label=False):
            producer.send(topic, value=m, partition=1)
        producer.flush()
        replica.wait(lambda: restoring() == [], 600, "the restore of partition 0 done")
        status = replica.status()
        assert status["cluster"]["partitions_restored"] == 1
        assert status["kafka"]["assignments"] == 1  # kept through the restore
        expected = _send_after_restore(sc)
        replica.wait(lambda: (s := replica.status()) and s["cluster"]["aggregator"]
                     and _label_counts(s) == expected, 180, "exact label counts")
        status = replica.status()
        log_text = _full_log(replica)
    assert status["kafka"]["assignments"] == 1, log_text[-5000:]  # no rebalance through the restore
    done = re.search(rf"partition {topic}:0 restored from \S+ in ([0-9.]+) s: (\d+) records, (\d+) pending", log_text)
    assert done and int(done[2]) > 2 * RESTORE_GONE + RESTORE_ENTRIES and int(done[3]) == RESTORE_ENTRIES, \
        log_text[-5000:]
    assert "lost with the group membership" not in log_text and "rejoining" not in log_text, log_text[-5000:]


@pytest.mark.parametrize("client", CLIENTS)
def test_labels_a_partition_revoked_while_it_restores_is_abandoned(tmp_path, kafka_broker, receiver, client):
    """Replica A is restoring partition 0 (4 million changelog records) when replica B joins, and the range
    assignor gives B partition 0 (member ids begin with the client id, and B's sorts first). A abandons the
    restore: it installs nothing for partition 0 and closes its reader, store and transactional producer; B
    restores the partition itself, and the label counts are exact."""
    from tests.labelled import messages

    # B's member id sorts first: the range assignor gives it partition 0
    sc = _restore_scenario(tmp_path, kafka_broker, receiver, client, {"ra": "driftmon-b", "rb": "driftmon-a"})
    a, b = sc.replicas
    topic, producer = sc.topic, sc.producer
    restoring = lambda d: ((d.status() or {}).get("cluster") or {}).get("restoring_partitions")  # noqa: E731
    abandoned = f"partition {topic}:0: restore abandoned (revoked)"
    with closing(producer), _running(sc.replicas, start=False):
        a.start()
        a.wait(lambda: (r := restoring(a)) and [x["partition"] for x in r] == [f"{topic}:0"], 90,
               "A restoring partition 0")
        b.start()  # a restore of tens of seconds: A is still at it when B joins
        a.wait(lambda: abandoned in _full_log(a), 120, "A abandoning the restore of partition 0")
        b.wait(lambda: (s := b.status()) and s["kafka"]["assigned_partitions"] == [0] and restoring(b) == []
               and s["cluster"]["partitions_restored"] == 1, 600, "B holding partition 0, restored")
        assert a.status()["kafka"]["assigned_partitions"] == [1] and restoring(a) == []
        for m in messages(sc.early, with_label=False):
            producer.send(topic, value=m, partition=1)
        expected = _send_after_restore(sc)
        a.wait(lambda: (g := _aggregators([a, b])) and len(g) == 1 and _label_counts(g[0].status()) == expected,
               180, "exact label counts")
        log_a, log_b = _full_log(a), _full_log(b)
    assert f"partition {topic}:0 restored from" not in log_a, log_a[-5000:]  # nothing installed at A
    done = re.search(rf"partition {topic}:0 restored from \S+ in [0-9.]+ s: (\d+) records, (\d+) pending", log_b)
    assert done and int(done[2]) == RESTORE_ENTRIES, log_b[-5000:]
    assert "rejoining" not in log_a + log_b, (log_a + log_b)[-5000:]


def test_labels_topic_not_co_partitioned_stops_the_start_with_one_line(tmp_path, kafka_broker, receiver):
    """The label join runs where the prediction's partition is read: a labels topic with another partition
    count is refused at start, exit 2, one line naming both topics and both counts."""
    import subprocess
    import sys

    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=2)
    labels_topic = kafka_broker.create_topic(f"labels-{uuid.uuid4().hex[:8]}", partitions=3)
    path = _labelled_config(tmp_path, kafka_broker, topic, labels_topic, receiver)
    daemon = _replica(tmp_path, path, "r0", {"enabled": True})
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--config", daemon.config_path,
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last == (f"config error: kafka.labels_topic: {labels_topic} has 3 partitions and {topic} has 2: "
                    "scale-out joins labels where the prediction's partition is consumed, so both must have the "
                    "same partition count (and labels keyed by the prediction id)"), last
    assert "Traceback" not in proc.stderr
