"""`driftmon demo`: an embedded broker, a drifting stream, and the daemon, live in the terminal."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time

import yaml

from monitor.baseline import build_baseline
from monitor.config import load_config
from monitor.synth import car_loan
from monitor.tansu import TansuBroker

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def _produce(bootstrap: str, topic: str, messages: list[bytes], rate: float, stop: threading.Event) -> None:
    from monitor.config import KafkaConfig
    from monitor.kafka_client import make_producer

    producer = make_producer(KafkaConfig(bootstrap_servers=bootstrap, topic=topic, group_id="driftmon-demo"))
    started = time.monotonic()
    try:
        for i, value in enumerate(messages):
            if stop.is_set():
                break
            producer.send(topic, value)
            if i % 500 == 0:  # pace the stream so windows close one after another, as in production
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0 and stop.wait(ahead):
                    break
        producer.flush(30.0)
    finally:
        producer.close()


def _paint(text: str, color: int) -> str:
    return f"\x1b[{color}m{text}\x1b[0m" if sys.stdout.isatty() else text


def _line(result: dict, drift_at_window: int) -> str:
    w = result["window"]
    head = f"window {w['index']:>3}  {w['start'] or '':<24} events {w['events']:>5}"
    if result["drifted"]:
        parts = []
        for name in result["drifted"]:
            e = result["features"][name]["effect"]
            parts.append(f"{name} ({e['method']} {e['value']:.2f})")
        body = _paint("DRIFT", 31) + " " + ", ".join(parts)
    else:
        body = _paint("no drift", 32)
    pred = result.get("prediction")
    if pred and pred["drift"]:
        body += "  | prediction drift"
    marker = "  <- the stream starts drifting here" if w["index"] == drift_at_window else ""
    return f"{head}  {body}{marker}"


def run_demo(workdir: str | None = None, port: int = 9108, events: int = 200_000, rate: float = 4000.0,
             duration: float | None = None) -> int:
    """Run the demo until Ctrl-C (or ``duration`` seconds, or the end of the stream plus a few seconds)."""
    from monitor.daemon import Daemon

    workdir = workdir or tempfile.mkdtemp(prefix="driftmon-demo-")
    os.makedirs(workdir, exist_ok=True)
    synth = car_loan(seed=7)
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"driftmon demo: files in {workdir}")

    import pyarrow.parquet as pq

    train = os.path.join(workdir, "train.parquet")
    pq.write_table(synth.training_table(50_000), train)
    window = 5000
    config_tree = synth.config(
        model="car-loan",
        kafka={"bootstrap_servers": "", "topic": "predictions", "group_id": "driftmon-demo",
               "max_poll_interval_ms": 5000, "session_timeout_ms": 6000, "lag_interval": "2s"},
        window={"size": window},
        http={"port": port},
        state={"dir": "state", "checkpoint_interval": "5s"},
    )
    broker = TansuBroker(log_path=os.path.join(workdir, "tansu.log")).start()
    config_tree["kafka"]["bootstrap_servers"] = broker.bootstrap
    config_path = os.path.join(workdir, "driftmon.yaml")
    with open(config_path, "w") as fh:
        yaml.safe_dump(config_tree, fh, sort_keys=False)
    config = load_config(config_path)
    baseline = build_baseline(config, train)
    baseline.save(config.baseline)
    say(f"training set: 50,000 rows -> baseline {baseline.fingerprint[:23]}...  (config: {config_path})")
    say(f"broker: Tansu on {broker.bootstrap}, topic 'predictions'")

    broker.create_topic("predictions")
    drift_at = events * 2 // 5
    messages = synth.messages(events, drift_at=drift_at, rate=rate)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(broker.bootstrap, "predictions", messages, rate, stop),
                                daemon=True)

    daemon = Daemon(config, baseline)
    done = threading.Event()
    windows_total = events // window

    def show(result):
        say(_line(result, drift_at // window))
        if result["window"]["index"] + 1 >= windows_total:
            done.set()

    daemon.listeners.append(show)
    daemon.install_signal_handlers()
    daemon.start()
    say(f"metrics: http://127.0.0.1:{daemon.http.port}/metrics   status: http://127.0.0.1:{daemon.http.port}/status")
    say(f"producing {events:,} predictions at {rate:,.0f}/s; the inputs drift from message {drift_at:,} on."
        " Ctrl-C stops.")
    producer.start()
    deadline = None if duration is None else time.monotonic() + duration

    def watchdog():
        while not daemon.stopping.is_set():
            if done.is_set() or (deadline is not None and time.monotonic() > deadline):
                daemon.stop()
            time.sleep(0.2)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        daemon.run()
    finally:
        stop.set()
        producer.join(timeout=5)
        broker.stop()
    p = daemon.pipeline
    say(f"done: {p.consumed:,} messages, {p.windows_evaluated} windows evaluated. Files stay in {workdir}.")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
