"""Soak: `driftmon run` for a long time on a real Apache Kafka broker that restarts every few minutes.

A producer thread writes car-loan predictions at a steady rate, with a poison record (every kind the
issue tracker has seen crash a decoder: not JSON, wrong type, a JSON array, empty, invalid UTF-8, a
tombstone, nesting 10,000 deep) every ``POISON_EVERY`` messages. Every ``restart_every`` seconds the
broker is stopped for ``down_seconds`` and started again on the same data directory. The daemon runs
as its own process (`python -m monitor.cli run`) the whole time and is never restarted.

Reported: the daemon's RSS over time (sampled every second, summarized per minute), whether it ever
exited, for each broker outage how long ``/readyz`` took to go non-200 after the stop and to come back
after the restart, and the exact counts at the end: the events over every window logged plus the open
window of the last checkpoint must equal the valid records in the topic (read back after the run), and
the invalid ones the poison records.

Not in CI and not in the default ``python -m bench.run``: run it with
``python -m bench.run --only soak [--soak-minutes 30]`` (env ``DRIFTMON_SOAK_MINUTES`` also works).
"""

from __future__ import annotations

import os
import threading
import time

from bench.common import log, make_setup, scratch_dir

RATE = 1000.0  # messages per second
POISON_EVERY = 997  # one poison record in about a thousand
WINDOW = 5000
POISON = {
    "not_json": b"{not json",
    "wrong_type": b'{"id": "p", "car_value": "cheap"}',
    "array": b"[1, 2, 3]",
    "empty": b"",
    "invalid_utf8": b'{"id": "\xff\xfe"}',
    "tombstone": None,
    "deep_nesting": b"[" * 10_000 + b"]" * 10_000,
    "deep_nesting_in_field": b'{"id": "d", "extra": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "two_values": b'{"id": "t2"},{"id": "t3"}',
    "torn_object": b'{"id":"t1","x1":1',
}


def poison_kinds(config, baseline) -> tuple[dict, dict]:
    """The poison kinds the decoder in this checkout turns into one invalid event each, and those it
    does not (they raise, a crash loop, or pass as valid): the soak leaves those out and says so."""
    from monitor.pipeline import Pipeline

    from monitor.synth import car_loan

    valid = car_loan(seed=3).messages(2)
    usable, excluded = {}, {}
    for kind, value in POISON.items():
        pipeline = Pipeline(config, baseline)
        try:
            pipeline.process([valid[0], value, valid[1]])  # within a batch, as the daemon sees it
        except Exception as exc:  # noqa: BLE001 - recorded in the results
            excluded[kind] = f"raises {type(exc).__name__}: {str(exc)[:80]}"
            continue
        if sum(pipeline.invalid.values()) != 1 or pipeline.window.events != 2:  # exact counts would not hold
            excluded[kind] = f"not one invalid event between two valid ones ({dict(pipeline.invalid)})"
            continue
        usable[kind] = value
    return usable, excluded


class _Producer(threading.Thread):
    def __init__(self, bootstrap: str, topic: str, pool: list[bytes], poison: list, rate: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.pool, self.poison, self.rate = bootstrap, topic, pool, poison, rate
        self.stop = threading.Event()
        self.sent = 0
        self.failed = 0
        self.error: str | None = None
        self.crashed = False

    def _failed(self, exc) -> None:
        self.failed += 1
        self.error = repr(exc)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported; the soak is then not met
            self.error = f"producer stopped: {exc!r}"
            self.crashed = True

    def _run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=20, acks="all",
                                 delivery_timeout_ms=600_000, max_block_ms=600_000, max_request_size=1 << 20)
        started = time.monotonic()
        i = 0
        while not self.stop.is_set():
            if i % POISON_EVERY == POISON_EVERY - 1:
                value = self.poison[(i // POISON_EVERY) % len(self.poison)] if self.poison else self.pool[0]
            else:
                value = self.pool[i % len(self.pool)]
            key = b"tombstone" if value is None else None  # a record needs a key or a value
            producer.send(self.topic, key=key, value=value).add_errback(self._failed)
            i += 1
            self.sent = i
            if i % 100 == 0:
                time.sleep(max(0.0, i / self.rate - (time.monotonic() - started)))
        producer.flush(timeout=600)
        producer.close(timeout=30)


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _ready(daemon) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/readyz", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _read_back(bootstrap: str, topic: str, poison: set) -> tuple[int, int]:
    """(valid, poison) records in the topic: the ground truth, whatever the producer's callbacks said."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, metrics_enabled=False,
                             max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    valid = bad = 0
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for records in consumer.poll(timeout_ms=1000, max_records=50_000).values():
            for r in records:
                if r.value is None or r.value in poison:
                    bad += 1
                else:
                    valid += 1
    consumer.close()
    return valid, bad


def run(quick: bool = False) -> dict:
    from monitor.synth import car_loan
    from monitor.tansu import free_port

    try:
        from tests.brokers import BrokerToolMissing, KafkaBroker
        from tests.daemon_proc import DaemonProcess, counted
    except ImportError as exc:
        return {"skipped": f"cannot import tests.brokers: {exc}"}

    minutes = float(os.environ.get("DRIFTMON_SOAK_MINUTES", "2" if quick else "30"))
    seconds = minutes * 60
    restart_every = float(os.environ.get("DRIFTMON_SOAK_RESTART_EVERY", "60" if quick else "300"))
    down_seconds = float(os.environ.get("DRIFTMON_SOAK_DOWN_SECONDS", "45"))  # > kafka.unavailable_after (30 s)
    try:
        broker = KafkaBroker()
    except BrokerToolMissing as exc:
        return {"skipped": str(exc)}
    tmp = scratch_dir("driftmon-soak-")
    broker.start()
    topic = "soak"
    try:
        broker.create_topic(topic, 2)
        kafka = {"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": "driftmon-soak",
                 "commit_interval": "1s"}
        path, config, baseline = make_setup(tmp, car_loan(seed=1), 20_000, {
            "kafka": kafka, "window": {"size": WINDOW}, "state": {"dir": "state", "checkpoint_interval": "5s"}})
        usable, excluded = poison_kinds(config, baseline)
        log(f"soak: {minutes:g} min at {RATE:,.0f} msg/s, broker restart every {restart_every:g} s "
            f"(down {down_seconds:g} s); poison kinds {sorted(usable)}; left out (they raise): {excluded}")
        pool = car_loan(seed=2).messages(20_000)
        daemon = DaemonProcess(path, free_port(), os.path.join(tmp, "daemon.log")).start()
        pid = daemon.proc.pid
        producer = _Producer(broker.bootstrap, topic, pool, list(usable.values()), RATE)
        samples: list[tuple[float, float | None, bool]] = []  # (seconds since start, RSS MiB, ready)
        outages: list[dict] = []
        t0 = time.monotonic()
        next_restart = t0 + restart_every
        producer.start()
        outage: dict | None = None
        while time.monotonic() - t0 < seconds:
            now = time.monotonic()
            ready = _ready(daemon)
            samples.append((round(now - t0, 1), _rss_mib(pid), ready))
            if daemon.proc.poll() is not None:
                log(f"soak: the daemon exited with {daemon.proc.returncode}")
                break
            if outage is not None:
                if outage["not_ready_after_s"] is None and not ready:
                    outage["not_ready_after_s"] = round(now - outage["stopped"], 1)
                if outage["restarted"] is not None and ready and outage["ready_again_after_s"] is None \
                        and outage["not_ready_after_s"] is not None:
                    outage["ready_again_after_s"] = round(now - outage["restarted"], 1)
                if outage["restarted"] is None and now - outage["stopped"] >= down_seconds:
                    broker.restart()
                    outage["restarted"] = time.monotonic()
                    log(f"soak: broker back after {outage['restarted'] - outage['stopped']:.1f} s")
                since = None if outage["restarted"] is None else now - outage["restarted"]
                if since is not None and (outage["ready_again_after_s"] is not None or since > 120
                                          or (outage["not_ready_after_s"] is None and since > 30)):
                    outages.append(outage)
                    outage = None
            elif now >= next_restart:
                log(f"soak: stopping the broker at {now - t0:.0f} s ({producer.sent:,} sent)")
                broker.halt()
                outage = {"at_s": round(now - t0, 1), "stopped": time.monotonic(), "restarted": None,
                          "not_ready_after_s": None, "ready_again_after_s": None}
                next_restart = now + restart_every
            if len(samples) % 60 == 0:
                rss = samples[-1][1]
                log(f"soak: {now - t0:.0f} s, {producer.sent:,} sent, RSS {rss if rss is None else round(rss, 1)} MiB,"
                    f" ready {ready}")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        if outage is not None:
            if outage["restarted"] is None:
                broker.restart()
                outage["restarted"] = time.monotonic()
            outages.append(outage)
        producer.stop.set()
        producer.join(timeout=900)
        valid, bad = _read_back(broker.bootstrap, topic, {v for v in usable.values() if v is not None})
        alive = daemon.proc.poll() is None
        status = None
        if alive:
            status = daemon.wait(lambda: (s := daemon.status()) and s["messages_consumed"] >= valid + bad and s,
                                 600, "every record consumed")
            code, stop_seconds = daemon.terminate(timeout=60)
        else:
            code, stop_seconds = daemon.proc.returncode, None
        events, invalid = counted(os.path.join(tmp, "state"))
        log_text = open(daemon.log_path, errors="replace").read()
        daemon.close()
    finally:
        broker.stop()
    per_minute = []
    for minute in range(int(samples[-1][0] // 60) + 1 if samples else 0):
        rss = [s[1] for s in samples if minute * 60 <= s[0] < (minute + 1) * 60 and s[1] is not None]
        if rss:
            per_minute.append({"minute": minute, "rss_mib": round(max(rss), 1)})
    rss_all = [s[1] for s in samples if s[1] is not None]
    for o in outages:
        o.pop("stopped", None)
        o.pop("restarted", None)
    went_false = [o["not_ready_after_s"] for o in outages if o["not_ready_after_s"] is not None]
    came_back = [o["ready_again_after_s"] for o in outages if o["ready_again_after_s"] is not None]
    exact = events == valid and invalid == bad
    return {
        "minutes": round((samples[-1][0] if samples else 0) / 60, 1),
        "rate_msgs_per_s": RATE,
        "produced_msgs_per_s": round((valid + bad) / samples[-1][0], 1) if samples and samples[-1][0] else None,
        "restart_every_s": restart_every,
        "down_s": down_seconds,
        "poison_kinds": sorted(usable),
        "poison_left_out": excluded,
        "produced": {"valid": valid, "poison": bad, "send_failures": producer.failed, "last_error": producer.error},
        "counted": {"events": events, "invalid": invalid,
                    "messages_invalid_by_reason": None if status is None else status["messages_invalid"]},
        "exact": exact,
        "daemon_exited_during_run": not alive,
        "exit_code": code,
        "stop_seconds": None if stop_seconds is None else round(stop_seconds, 1),
        "tracebacks_in_log": log_text.count("Traceback"),
        "rss_mib": {"first_minute_max": per_minute[0]["rss_mib"] if per_minute else None,
                    "last_minute_max": per_minute[-1]["rss_mib"] if per_minute else None,
                    "max": round(max(rss_all), 1) if rss_all else None, "per_minute": per_minute},
        "outages": outages,
        "readyz": {"longest_to_go_false_s": max(went_false) if went_false else None,
                   "longest_to_come_back_s": max(came_back) if came_back else None,
                   "went_false_in": f"{len(went_false)} of {len(outages)} outages"},
        "met": exact and alive and code == 0 and valid > 0 and not producer.crashed,
    }
