"""Health tells the truth through a broker outage: a real Apache Kafka broker is stopped and restarted
on its data directory under `driftmon run`; /readyz, /healthz, /status and the health gauges follow."""

from __future__ import annotations

import time

import pytest
import yaml

from monitor.synth import car_loan
from tests.helpers import http_get
from tests.test_daemon_integration import CLIENTS, produce, setup_daemon

pytestmark = pytest.mark.integration

MODEL = (("model", "car-loan"),)


def sample(metrics: dict, name: str, labels=MODEL):
    return metrics.get((name, tuple(sorted(labels))))


def test_readyz_and_gauges_through_a_broker_outage(tmp_path, own_broker):
    topic, path, config, daemon = setup_daemon(tmp_path, own_broker)
    with open(path) as fh:
        tree = yaml.safe_load(fh)
    tree["kafka"]["unavailable_after"] = "4s"  # probes every 1 s (lag_interval), so seen well within it
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    synth = car_loan(seed=5)
    try:
        daemon.start()
        daemon.wait(lambda: http_get(daemon.port, "/readyz") == (200, b"ready: baseline loaded and consuming\n"),
                    60, "ready")
        before = time.time()
        produce(own_broker.bootstrap, topic, synth.messages(3000))
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 3000, 60, "3000 consumed")
        # Healthy: the broker is up, the data fresh, the lag measured (and 0 once the probe sees the end).
        m = daemon.wait(lambda: (m := daemon.metrics()) and sample(m, "driftmon_consumer_lag_messages",
                                                                   MODEL + (("partition", "0"),)) == 0 and m,
                        60, "lag 0")
        assert sample(m, "driftmon_broker_up") == 1
        assert sample(m, "driftmon_last_fetch_timestamp_seconds") >= before
        assert sample(m, "driftmon_consumer_lag_timestamp_seconds") >= before

        own_broker.halt()
        halted = time.time()
        code, body = daemon.wait(lambda: (r := http_get(daemon.port, "/readyz")) and r[0] != 200 and r, 60,
                                 "/readyz not ready")
        text = body.decode()
        assert code == 503 and "unreachable" in text and own_broker.bootstrap in text, text
        assert int(text.split("unreachable for ")[1].split(" s")[0]) >= 4, text  # not before unavailable_after
        assert http_get(daemon.port, "/healthz") == (200, b"ok\n")  # the process works: no restart
        status = daemon.status()
        assert status["ready"] is False and status["ready_reason"] == text.strip()
        assert status["kafka"]["up"] is False and status["kafka"]["error"]
        assert status["consumer_lag_messages"] == {}
        down = daemon.metrics()
        assert sample(down, "driftmon_broker_up") == 0
        assert sample(down, "driftmon_consumer_lag_messages", MODEL + (("partition", "0"),)) is None  # unknown
        fetched = sample(down, "driftmon_last_fetch_timestamp_seconds")
        measured = sample(down, "driftmon_consumer_lag_timestamp_seconds")
        assert fetched <= halted + 1 and measured <= halted + 1
        # Probes go on (every second) and fail: nothing freshens while the broker is away.
        first_error = status["kafka"]["error"]
        daemon.wait(lambda: daemon.status()["kafka"]["unreachable_seconds"] >= 8, 60, "8 s of outage")
        later = daemon.metrics()
        assert sample(later, "driftmon_last_fetch_timestamp_seconds") == fetched
        assert sample(later, "driftmon_consumer_lag_timestamp_seconds") == measured
        assert first_error

        own_broker.restart()
        restarted = time.time()
        daemon.wait(lambda: http_get(daemon.port, "/readyz") == (200, b"ready: baseline loaded and consuming\n"),
                    120, "ready again")
        produce(own_broker.bootstrap, topic, synth.messages(1000))
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 4000, 120, "4000 consumed")
        up = daemon.wait(lambda: (m := daemon.metrics()) and sample(m, "driftmon_consumer_lag_messages",
                                                                    MODEL + (("partition", "0"),)) == 0 and m,
                         60, "lag measured again")
        assert sample(up, "driftmon_broker_up") == 1
        assert sample(up, "driftmon_last_fetch_timestamp_seconds") >= restarted
        assert daemon.status()["kafka"]["error"] is None
        code, seconds = daemon.terminate(timeout=30)
        assert code == 0 and seconds < 5, (code, seconds)
    finally:
        daemon.close()
    log = open(daemon.log_path, errors="replace").read()
    assert "Traceback" not in log, log[-3000:]
    assert "unreachable" in log and "reachable again" in log


def test_status_and_metrics_answer_while_every_lock_is_held(tmp_path):
    """/status, /metrics and /readyz read snapshots: they answer while the pipeline lock, the checkpoint's
    save lock and the outbox's database lock are all held (as a checkpoint fsync or a dead-letter flush
    holds them)."""
    from monitor.baseline import Baseline
    from monitor.daemon import Daemon
    from monitor.tansu import free_port
    from tests.helpers import write_setup

    kafka = {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "t", "group_id": "g"}
    _, config = write_setup(tmp_path, car_loan(seed=1), window={"size": 1000}, kafka=kafka,
                            state={"dir": "state"}, http={"host": "127.0.0.1", "port": 0})
    daemon = Daemon(config, Baseline.load(config.baseline))
    daemon.http.start()
    try:
        port = daemon.http.port
        with daemon.lock, daemon.policy._save_lock, daemon.outbox._lock:
            status = http_get(port, "/status")
            metrics = http_get(port, "/metrics")
            ready = http_get(port, "/readyz")
        assert status is not None and status[0] == 200 and b'"model": "car-loan"' in status[1]
        assert metrics is not None and metrics[0] == 200 and b"driftmon_broker_up" in metrics[1]
        assert ready is not None and ready[0] == 503 and b"connecting to the Kafka broker" in ready[1]
    finally:
        daemon.http.stop()
        daemon.outbox.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_sigterm_while_the_broker_is_down_exits_0_within_5_s(tmp_path, own_broker, client):
    # confluent-kafka: the consumer's close revokes the partitions, whose commit waited out the session timeout
    topic, path, config, daemon = setup_daemon(tmp_path, own_broker, client=client)
    with open(path) as fh:
        tree = yaml.safe_load(fh)
    tree["kafka"]["unavailable_after"] = "3s"
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    try:
        daemon.start()
        daemon.wait(lambda: http_get(daemon.port, "/readyz") == (200, b"ready: baseline loaded and consuming\n"),
                    60, "ready")
        produce(own_broker.bootstrap, topic, car_loan(seed=6).messages(500))
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 500, 60, "500 consumed")
        lines = lambda: open(daemon.log_path, errors="replace").read().count("\n")  # noqa: E731
        up_to_halt = lines()
        own_broker.halt()
        try:
            daemon.wait(lambda: (r := http_get(daemon.port, "/readyz")) and r[0] == 503, 60, "not ready")
            down = lines() - up_to_halt
            code, seconds = daemon.terminate(timeout=30)
        finally:
            own_broker.restart()
        assert code == 0 and seconds < 5, (code, seconds, daemon.log())
        # a few lines while it is down, not the client's every reconnect (librdkafka's: about 20 a second)
        assert down < 20, daemon.log()
    finally:
        daemon.close()
    log = open(daemon.log_path, errors="replace").read()
    assert "Traceback" not in log, log[-3000:]



def test_a_broker_down_at_start_is_retried_until_it_comes_back(tmp_path, own_broker):
    """Started while its broker is down, driftmon serves (not ready), retries with a log line each time,
    and consumes as soon as the broker is back; no restart of the process is needed."""
    topic, path, config, daemon = setup_daemon(tmp_path, own_broker)
    produce(own_broker.bootstrap, topic, car_loan(seed=7).messages(700))
    own_broker.halt()
    try:
        daemon.start()  # waits for /healthz only
        daemon.wait(lambda: daemon.log().count("retrying in") >= 2, 60, "two connection retries")
        code, body = http_get(daemon.port, "/readyz")
        assert code == 503 and b"connecting to the Kafka broker" in body, body
    finally:
        own_broker.restart()
    try:
        daemon.wait(lambda: http_get(daemon.port, "/readyz") == (200, b"ready: baseline loaded and consuming\n"),
                    120, "ready once the broker is back")
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 700, 60, "700 consumed")
        assert sample(daemon.metrics(), "driftmon_broker_up") == 1
        assert daemon.terminate(timeout=30)[0] == 0
    finally:
        daemon.close()
    log = open(daemon.log_path, errors="replace").read()
    assert "Traceback" not in log, log[-3000:]
    assert "kafka: connected to" in log


def test_broker_health_turns_unready_after_unavailable_after_and_back():
    """BrokerHealth alone, on a fake clock: when /readyz flips, what the lag and timestamps say."""
    from monitor.health import BrokerHealth

    now = [1000.0]
    health = BrokerHealth(30.0, "k:9092", clock=lambda: now[0])
    assert health.ready() == (False, "connecting to the Kafka broker at k:9092 for 0 s")
    now[0] += 12
    health.error = "KafkaTimeoutError: Unable to bootstrap"
    assert health.ready()[0] is False and "for 12 s (KafkaTimeoutError" in health.ready()[1]
    health.bootstrapped()
    assert health.ready() == (True, "") and health.up and health.last_fetch is None  # no fetch yet
    now[0] += 1
    health.probe_succeeded({0: 5}, caught_up=False)  # behind: not fresh
    assert health.lag == {0: 5} and health.lag_timestamp == 1013 and health.last_fetch is None
    now[0] += 1
    health.records_received()
    assert health.last_fetch == 1014
    now[0] += 1
    health.probe_succeeded({0: 0}, caught_up=True)
    assert health.last_fetch == 1015 and health.lag_timestamp == 1015
    now[0] += 5
    health.probe_failed("KafkaTimeoutError: Failed to get offsets")
    assert not health.up and health.lag == {} and health.lag_timestamp == 1015  # unknown, not frozen
    assert health.ready() == (True, "")  # 5 s since the last answer: not yet
    now[0] += 24.9
    assert health.ready()[0] is True
    now[0] += 0.2
    ready, why = health.ready()
    assert not ready and why.startswith("Kafka broker at k:9092 unreachable for 30 s (KafkaTimeoutError")
    assert health.last_fetch == 1015
    now[0] += 40
    health.probe_succeeded({0: 0}, caught_up=True)
    assert health.ready() == (True, "") and health.up and health.error is None and health.last_fetch == now[0]


def test_scale_out_turns_unready_while_its_commits_wait_for_the_broker(tmp_path, own_broker):
    """With cluster.enabled the consuming thread commits under the daemon's lock with a 10 s timeout, again and
    again while the broker is down: the probe must not wait for that lock, or /readyz stays 200 (40 s of outage
    with unavailable_after 3 s; this test failed 2 runs of 3 with the probe under the lock)."""
    topic, path, config, daemon = setup_daemon(tmp_path, own_broker)
    with open(path) as fh:
        tree = yaml.safe_load(fh)
    tree["kafka"]["unavailable_after"] = "2s"
    tree["window"] = {"duration": "10s"}  # (scale-out needs time windows)
    tree["cluster"] = {"enabled": True}
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    try:
        daemon.start()
        daemon.wait(lambda: http_get(daemon.port, "/readyz")[0] == 200, 90, "ready")
        produce(own_broker.bootstrap, topic, car_loan(seed=6).messages(500))
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 500, 60, "500 consumed")
        own_broker.halt()
        try:
            # probes every 0.67 s: well within this deadline, shorter than one commit's timeout
            code, body = daemon.wait(lambda: (r := http_get(daemon.port, "/readyz")) and r[0] != 200 and r, 9,
                                     "/readyz not ready")
            assert code == 503 and b"unreachable" in body, body
            assert sample(daemon.metrics(), "driftmon_broker_up") == 0
        finally:
            own_broker.restart()
    finally:
        daemon.close()
