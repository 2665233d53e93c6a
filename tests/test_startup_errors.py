"""Every start-up failure a user can cause: `driftmon run / replay / check-config` as a subprocess exits 2
with exactly one stderr line naming the file, key or address and what is wrong, and no traceback.
A broker that cannot be reached is not such a failure: the daemon keeps retrying, not ready, and
SIGTERM stops it at once with exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests.helpers import http_get, write_jsonl, write_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A valid config (Kafka on a port where nothing listens) and baseline; tests copy and break them."""
    tmp = tmp_path_factory.mktemp("startup")
    kafka = {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "predictions", "group_id": "g",
             "session_timeout_ms": 6000}
    path, config = write_setup(tmp, car_loan(seed=1), window={"size": 1000}, kafka=kafka, state={"dir": "state"})
    with open(path) as fh:
        tree = yaml.safe_load(fh)
    with open(config.baseline) as fh:
        baseline = json.load(fh)
    write_jsonl(tmp / "logs.jsonl", car_loan(seed=2).messages(2000))
    return tmp, tree, baseline


def write(tmp, tree, name="driftmon.yaml") -> str:
    path = os.path.join(tmp, name)
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    return path


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def assert_one_line(proc, *names: str) -> str:
    """Exit 2, one stderr line, no traceback, naming every one of ``names``."""
    report = f"$ {' '.join(proc.args)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr + proc.stdout, report
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, report
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def every_command(config: str, tmp) -> list[list[str]]:
    return [["check-config", "--config", config],
            ["replay", "--config", config, "--input", str(tmp / "logs.jsonl"), "--out", str(tmp / "out.jsonl")],
            ["run", "--config", config, "--port", "0"]]


@pytest.mark.parametrize("case, content, problem", [
    ("array", b"[1, 2, 3]", "JSON array"),
    ("utf8", b'{"format": "driftmon.baseline", "model": "\xff\xfe"}', "not UTF-8"),
    ("columns", None, "`columns`"),
    ("type", None, "no `type`"),
])
def test_a_broken_baseline_is_one_line_naming_the_file(setup, case, content, problem):
    tmp, tree, baseline = setup
    if content is None:
        doc = json.loads(json.dumps(baseline))
        if case == "columns":
            del doc["columns"]
        else:
            del doc["columns"][next(iter(doc["columns"]))]["type"]
        content = json.dumps(doc).encode()
    name = f"baseline-{case}.json"
    (tmp / name).write_bytes(content)
    config = write(tmp, {**tree, "baseline": name}, f"driftmon-{case}.yaml")
    for command in every_command(config, tmp):
        line = assert_one_line(cli(*command), str(tmp / name), problem)
        assert line.startswith("baseline error: ")


@pytest.mark.parametrize("key, value, problem", [
    ("session_timeout_ms", -1, "between 6000 and 1800000"),
    ("max_poll_interval_ms", 0, "between 1 and"),
    ("fetch_max_bytes", -5, "between 1 and"),
    ("bootstrap_servers", "localhost", "host:port"),
])
def test_client_settings_kafka_would_refuse_are_caught_by_check_config(setup, key, value, problem):
    tmp, tree, _ = setup
    config = write(tmp, {**tree, "kafka": {**tree["kafka"], key: value}}, f"driftmon-{key}.yaml")
    for command in every_command(config, tmp)[::2]:  # check-config and run (replay ignores kafka but validates)
        assert_one_line(cli(*command), f"kafka.{key}", problem)


def test_an_http_port_in_use_is_one_line_naming_the_address(setup):
    tmp, tree, _ = setup
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        config = write(tmp, {**tree, "http": {"host": "127.0.0.1", "port": port}}, "driftmon-port.yaml")
        assert_one_line(cli("run", "--config", config), "http.port", f"127.0.0.1:{port}", "in use")
    finally:
        holder.close()


def test_an_unwritable_state_dir_is_one_line_naming_it(setup):
    tmp, tree, _ = setup
    (tmp / "not-a-dir").write_text("a file where the state directory should be\n")  # root can't write here either
    config = write(tmp, {**tree, "state": {"dir": "not-a-dir/state"}}, "driftmon-state.yaml")
    assert_one_line(cli("run", "--config", config, "--port", "0"), "state.dir", str(tmp / "not-a-dir" / "state"))


def test_a_segment_reading_a_feature_path_works_in_check_config_and_replay(setup):
    tmp, tree, _ = setup
    # `salary_range` is a monitored feature; a segment and a fairness attribute read the same field
    extra = {"segments": [{"name": "salary_segment", "path": "salary_range"}],
             "fairness": {"attributes": [{"name": "salary_group", "path": "salary_range"}], "favourable": "1"}}
    clash = tmp / "clash"
    clash.mkdir(exist_ok=True)
    path, config = write_setup(clash, car_loan(seed=1), window={"size": 1000}, state={"dir": "state"}, **extra)
    for command in every_command(path, tmp)[:2]:
        proc = cli(*command)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    windows = [json.loads(line) for line in open(tmp / "out.jsonl")]
    assert sum(w["window"]["events"] for w in windows) == 2000


def test_a_broker_nobody_listens_on_is_retried_not_ready_and_sigterm_exits_0_at_once(setup):
    tmp, tree, _ = setup
    servers = tree["kafka"]["bootstrap_servers"]
    config = write(tmp, tree, "driftmon-nobroker.yaml")
    port = free_port()
    log_path = tmp / "nobroker.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "--config", config, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("retrying in") < 2:  # at least two backoffs: it keeps trying
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert http_get(port, "/healthz") == (200, b"ok\n")  # alive: Kubernetes must not restart it
        code, body = http_get(port, "/readyz")
        assert code == 503 and servers.encode() in body, body  # not ready, and says why
        status = json.loads(http_get(port, "/status")[1])
        assert status["ready"] is False and status["kafka"]["connected"] is False
        metrics = http_get(port, "/metrics")[1].decode()
        assert 'driftmon_broker_up{model="car-loan"} 0.0' in metrics
        assert "driftmon_last_fetch_timestamp_seconds{" not in metrics  # never fetched: no fake time
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # while a bootstrap attempt or a backoff is under way
        assert proc.wait(timeout=30) == 0, log_path.read_text()
        assert time.monotonic() - started < 5, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text
    retries = [line for line in text.splitlines() if "retrying in" in line]
    assert all(servers in line for line in retries), retries


@pytest.mark.parametrize("missing", ["ssl_certfile", "ssl_keyfile"])
def test_a_missing_client_certificate_or_key_is_named_by_its_path(setup, missing):
    from tests.certs import make_pki

    tmp, tree, _ = setup
    pki = make_pki(tmp / "pki")
    files = {"ssl_certfile": str(pki.client), "ssl_keyfile": str(pki.client_key), missing: f"absent-{missing}.pem"}
    config = write(tmp, {**tree, "kafka": {**tree["kafka"], "security_protocol": "SSL", **files}},
                   f"driftmon-{missing}.yaml")
    line = assert_one_line(cli("check-config", "--config", config), f"kafka.{missing}",
                           str(tmp / f"absent-{missing}.pem"), "No such file")
    assert "None" not in line


def test_a_missing_sasl_password_file_is_named_by_its_path(setup):
    tmp, tree, _ = setup
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "driftmon",
            "sasl_password_file": "absent-password.txt"}
    config = write(tmp, {**tree, "kafka": {**tree["kafka"], **sasl}}, "driftmon-password-file.yaml")
    assert_one_line(cli("check-config", "--config", config), "kafka.sasl_password_file",
                    str(tmp / "absent-password.txt"), "No such file")


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_a_port_flag_out_of_range_is_one_line(setup, port):
    tmp, tree, _ = setup
    config = write(tmp, tree, "driftmon-port-flag.yaml")
    assert_one_line(cli("run", "--config", config, "--port", port), "http.port", port, "between 0 and 65535")


def test_a_missing_input_or_an_output_in_a_missing_folder_is_one_line(setup):
    tmp, tree, _ = setup
    config = write(tmp, tree, "driftmon-files.yaml")
    nowhere = str(tmp / "no-such-folder")
    cases = [(["replay", "--config", config, "--input", str(tmp / "absent.jsonl")], "replay error: ",
              str(tmp / "absent.jsonl")),
             (["replay", "--config", config, "--input", str(tmp / "logs.jsonl"), "--out", f"{nowhere}/w.jsonl"],
              "replay error: ", f"{nowhere}/w.jsonl"),
             (["replay", "--config", config, "--input", str(tmp / "logs.jsonl"), "--out", str(tmp / "w.jsonl"),
               "--alerts", f"{nowhere}/a.jsonl"], "replay error: ", f"{nowhere}/a.jsonl"),
             (["report", "--config", config, "--current", str(tmp / "train.parquet"), "--out", f"{nowhere}/r.html"],
              "report error: ", f"{nowhere}/r.html"),
             (["baseline", "--config", config, "--data", str(tmp / "train.parquet"), "--out", f"{nowhere}/b.json"],
              "baseline error: ", f"{nowhere}/b.json")]
    for command, prefix, name in cases:
        line = assert_one_line(cli(*command), name, "No such file or directory")
        assert line.startswith(prefix), line
        assert ".tmp" not in line, line


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka"])
def test_a_topic_that_does_not_exist_is_named_not_reported_as_a_broker_outage(setup, kafka_broker, tmp_path, client):
    """A typo'd kafka.topic on a broker that does not create topics: the broker answers, so it is no
    outage (before: /readyz said "more replicas than partitions", then 503 "broker unreachable" and
    driftmon_broker_up 0 once the probe of partition 0 of no topic had timed out for unavailable_after)."""
    import uuid

    from tests.daemon_proc import DaemonProcess

    tmp, tree, _ = setup
    topic = f"predictionz-{uuid.uuid4().hex[:8]}"
    kafka = {**tree["kafka"], "bootstrap_servers": kafka_broker.bootstrap, "topic": topic,
             "unavailable_after": "2s", "lag_interval": "1s", "client": client}
    config = write(tmp, {**tree, "kafka": kafka, "state": {"dir": str(tmp_path / "state")}}, f"driftmon-{client}.yaml")
    daemon = DaemonProcess(config, free_port(), str(tmp_path / "daemon.log")).start()
    try:
        daemon.wait(lambda: f"the topic {topic} does not exist" in http_get(daemon.port, "/readyz")[1].decode(),
                    60, "/readyz naming the topic")
        started = daemon.status()["kafka"]["last_contact_timestamp"]
        # probes go on answering past unavailable_after: the broker is up, the topic is what is missing
        status = daemon.wait(lambda: (s := daemon.status()) and s["kafka"]["lag_timestamp"] and
                             s["kafka"]["lag_timestamp"] - started > 4 and s, 60, "probes past unavailable_after")
        reason = http_get(daemon.port, "/readyz")[1].decode()  # 200 idle (kafka-python), 503 unassigned (confluent)
        assert f"the topic {topic} does not exist" in reason and "check kafka.topic" in reason, reason
        assert "unreachable" not in reason, reason
        assert status["kafka"]["up"] is True and status["kafka"]["error"] is None, status["kafka"]
        assert daemon.metrics()[("driftmon_broker_up", (("model", "car-loan"),))] == 1.0
        assert f"topic {topic} does not exist" in daemon.log()
    finally:
        daemon.close()
