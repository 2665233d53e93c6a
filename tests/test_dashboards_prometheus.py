"""Every dashboard panel's query returns data from a real Prometheus scraping a real daemon.

The daemon consumes a drifting stream from a real broker (with invalid messages, a webhook that
works and one that fails, so every panel has something to show); Prometheus scrapes its /metrics
every second and loads the shipped alert rules, which must evaluate without error.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests.daemon_proc import DaemonProcess
from tests.helpers import load_module, start_service, write_setup
from tests.receiver import Receiver
from tests.test_daemon_integration import produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: run scripts/setup.sh")
        pytest.skip("prometheus is not installed: run scripts/setup.sh")
    return path


def api(url: str, path: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_query(url: str, expr: str, predicate, timeout: float = 60) -> float:
    """Wait until an instant query's first value satisfies ``predicate``; return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        result = api(url, "/api/v1/query", query=expr)["result"]
        if result:
            last = float(result[0]["value"][1])
            if predicate(last):
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting on {expr} (last value {last})")


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus; yields (url, set_target(port))."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    rules = ROOT / "deploy" / "prometheus" / "driftmon-rules.yml"

    def write_config(target_port: int) -> None:
        config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: driftmon
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
""")

    write_config(1)
    url = f"http://127.0.0.1:{port}"
    proc, log = start_service([prometheus_binary(), f"--config.file={config}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                               "--web.enable-lifecycle"], tmp_path / "prometheus.log", url)

    def set_target(target_port: int) -> None:
        write_config(target_port)
        urllib.request.urlopen(urllib.request.Request(url + "/-/reload", method="POST"), timeout=10).read()

    yield url, set_target
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def test_every_panel_query_returns_data_and_rules_load(tmp_path, prometheus):
    from tests.brokers import TansuBroker

    url, set_target = prometheus
    receiver = Receiver()
    broker = TansuBroker().start()
    try:
        topic = "predictions"
        broker.create_topic(topic)
        kafka = {"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": "driftmon-dash",
                 "max_poll_interval_ms": 6000, "session_timeout_ms": 6000, "lag_interval": "1s"}
        alerts = {"webhooks": [{"url": receiver.url + "/ok"}, {"url": f"http://127.0.0.1:{free_port()}/down"}],
                  "outbox": {"backoff_initial": "100ms", "backoff_max": "1s"}}
        # Inline labels, a segment and a fairness attribute, so the performance dashboard has data too.
        path, _ = write_setup(tmp_path, car_loan(seed=1), window={"size": 1000}, kafka=kafka, alerts=alerts,
                              state={"dir": "state"}, schema={"label": {"name": "repaid", "type": "categorical"}},
                              labels={"window": 2000, "positive": "1"}, segments=[{"name": "channel"}],
                              fairness={"attributes": [{"name": "channel"}], "favourable": "1"},
                              # multivariate drift, with the domain classifier on the daemon's worker thread
                              multivariate={"methods": ["pca_reconstruction", "domain_classifier"],
                                            "sample_size": 300, "min_interval": "1s"})
        daemon = DaemonProcess(path, free_port(), str(tmp_path / "daemon.log")).start()
        try:
            set_target(daemon.port)
            messages = car_loan(seed=3).messages(8000, drift_at=3000)
            messages[50:50] = [b"not json", b'{"id": 1, "car_value": "x"}']
            produce(broker.bootstrap, topic, messages[:4000])
            daemon.wait_windows(3, timeout=60)
            scraped = 'count_over_time(driftmon_messages_consumed_total[10m])'
            wait_query(url, scraped, lambda n: n >= 2)  # two scrapes of the first counters: rate() has points
            produce(broker.bootstrap, topic, messages[4000:], rate=2000)
            daemon.wait_windows(8, timeout=60)
            receiver.wait_for(lambda p: len(p) > 0, timeout=30)
            # waits on what Prometheus has seen, not on a number of scrape intervals passing
            wait_query(url, "driftmon_messages_consumed_total", lambda v: v == 8002)
            seen = wait_query(url, scraped, lambda n: n >= 2)
            wait_query(url, scraped, lambda n: n >= seen + 2)  # the final counters in two scrapes
            wait_query(url, 'count(ALERTS{alertname=~".*Drift.*"})', lambda n: n >= 1)

            target = api(url, "/api/v1/targets")["activeTargets"]
            assert [t["health"] for t in target] == ["up"], target

            generator = load_module(ROOT / "grafana" / "generate.py", "driftmon_grafana")
            # feature: the "All" value; unseen-category panels only have data for categorical features
            variables = dict(generator.DEFAULT_VARIABLES, model="car-loan", feature=".*")
            empty, checked = [], 0
            for uid, dashboard in generator.load_dashboards().items():
                for title, expr in generator.iter_panel_queries(dashboard, variables):
                    result = api(url, "/api/v1/query", query=expr)["result"]
                    checked += 1
                    if not result:
                        empty.append(f"{uid} / {title}: {expr}")
            assert checked >= 20
            assert not empty, "panels without data:\n" + "\n".join(empty)
            # with the broker up and the stream read, the health panels say so
            ops = dict(generator.iter_panel_queries(generator.load_dashboards()["driftmon-operations"],
                                                     variables))
            (up,) = api(url, "/api/v1/query", query=ops["Broker reachable"])["result"]
            assert float(up["value"][1]) == 1.0, up
            (age,) = api(url, "/api/v1/query", query=ops["Time since last fetch"])["result"]
            assert 0 <= float(age["value"][1]) < 60, age

            # the shipped alert rules load and evaluate without error on real data
            groups = api(url, "/api/v1/rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) >= 10
            assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
            firing = {a["labels"]["alertname"] for r in rules for a in r.get("alerts", [])}
            assert any("Drift" in name for name in firing), firing
        finally:
            daemon.close()
    finally:
        broker.stop()
        receiver.close()
