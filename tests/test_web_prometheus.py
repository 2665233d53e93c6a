"""A real Prometheus scrapes the real daemon over HTTPS with basic auth (exporter-toolkit web config).

The daemon consumes from a real broker with ``http.web_config_file`` (TLS with a certificate from the
test CA, a bcrypt user); Prometheus scrapes it with ``scheme: https``, ``tls_config.ca_file`` and
``basic_auth`` (password from a file), as the chart's ServiceMonitor configures it. A second job with
a wrong password must be refused (401) while the first is up and driftmon's series arrive.
"""

from __future__ import annotations

import ssl
import uuid

import bcrypt
import pytest
import yaml

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests.certs import make_pki
from tests.daemon_proc import DaemonProcess
from tests.helpers import start_service, write_setup
from tests.test_dashboards_prometheus import api, prometheus_binary, wait_query
from tests.test_daemon_integration import produce

pytestmark = pytest.mark.integration

PASSWORD = "prom-scrape-8d1c"


def wait_targets(url: str, predicate, timeout: float = 60) -> list[dict]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        targets = api(url, "/api/v1/targets")["activeTargets"]
        if predicate({t["labels"]["job"]: t for t in targets}):
            return targets
        assert time.monotonic() < deadline, f"targets never as expected: {targets}"
        time.sleep(0.3)


def test_prometheus_scrapes_the_daemon_over_https_with_basic_auth(tmp_path, kafka_broker):
    pki = make_pki(tmp_path / "pki")
    web_config = tmp_path / "web-config.yml"
    web_config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": "pki/server.pem", "key_file": "pki/server.key"},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()}}))
    topic = kafka_broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}")
    kafka = {"bootstrap_servers": kafka_broker.bootstrap, "topic": topic, "group_id": f"driftmon-{topic}",
             "max_poll_interval_ms": 6000, "session_timeout_ms": 6000, "lag_interval": "1s"}
    path, _ = write_setup(tmp_path, car_loan(seed=1), window={"size": 1000}, kafka=kafka,
                          state={"dir": "state"}, http={"web_config_file": "web-config.yml"})
    tls = ssl.create_default_context(cafile=str(pki.ca))
    daemon = DaemonProcess(path, free_port(), str(tmp_path / "daemon.log"), tls=tls,
                           auth=("prometheus", PASSWORD))
    (tmp_path / "scrape-password").write_text(PASSWORD)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = log = None
    try:
        daemon.start()  # waits for /healthz over HTTPS, without credentials
        messages = car_loan(seed=3).messages(3000)
        produce(kafka_broker.bootstrap, topic, messages)
        daemon.wait(lambda: daemon.status()["messages_consumed"] == 3000, 60, "3000 consumed")
        job = {"scheme": "https", "tls_config": {"ca_file": str(pki.ca)},
               "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]}
        config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
            {"job_name": "driftmon", **job,
             "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "scrape-password")}},
            {"job_name": "wrong-password", **job, "basic_auth": {"username": "prometheus", "password": "guess"}},
            {"job_name": "no-tls-trust", "scheme": "https", "static_configs": job["static_configs"],
             "basic_auth": {"username": "prometheus", "password": PASSWORD}},
        ]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc, log = start_service([prometheus_binary(), f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "prometheus.log", url)
        targets = wait_targets(url, lambda t: len(t) == 3 and all(x["health"] != "unknown" for x in t.values())
                               and t["driftmon"]["health"] == "up")
        by_job = {t["labels"]["job"]: t for t in targets}
        assert by_job["wrong-password"]["health"] == "down"
        assert "401" in by_job["wrong-password"]["lastError"], by_job["wrong-password"]
        assert by_job["no-tls-trust"]["health"] == "down"
        assert "certificate" in by_job["no-tls-trust"]["lastError"], by_job["no-tls-trust"]
        value = wait_query(url, 'driftmon_messages_consumed_total{job="driftmon"}', lambda v: v == 3000)
        assert value == 3000
        assert wait_query(url, 'driftmon_windows_evaluated_total{job="driftmon"}', lambda v: v >= 3) >= 3
        assert not api(url, "/api/v1/query", query='driftmon_messages_consumed_total{job!="driftmon"}')["result"]
        assert PASSWORD not in daemon.log()
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
