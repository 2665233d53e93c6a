"""Figure 2: end-to-end throughput from a real Apache Kafka broker.

The topic is filled once with N wide() messages. Then, alternating:

* ceiling: a bare kafka-python ``KafkaConsumer`` in a fresh group, auto-commit off,
  with exactly the options ``monitor.kafka_client.KafkaSource`` uses (max_poll_records 5000,
  metrics off, the same fetch sizes), polling until it has seen all N messages and
  doing nothing with them;
* subject: ``monitor.daemon.Daemon`` in-process (HTTP server, scheduler, state store,
  checkpoints on every closed window, offset commits), in a fresh group with a fresh
  state dir, running its consume loop (``_consume_once``, the body of ``Daemon.run``)
  until the pipeline has consumed all N messages.

Then, alternating again, the same daemon with ``kafka.client: confluent-kafka`` beside the
kafka-python daemon and a bare confluent-kafka ``Consumer`` with the options ``ConfluentSource``
uses (``consume()`` of 5000 records, nothing done with them): each client's end-to-end rate beside
its bare consume rate, and the confluent-kafka daemon's speed-up over the kafka-python one (target 2x).

All rates are counted from the moment the first non-empty poll returns (so the group join is left
out) to the moment the last message is in: (N - first batch) / elapsed.
"""

from __future__ import annotations

import tempfile
import time

from bench.common import crc32c_status, interleave, log, make_setup, message_pool, scratch_dir, summarize

TARGET_RATIO = 0.60
TOPIC = "bench-wide"


def _consumer_options(kcfg) -> dict:
    """The KafkaConsumer arguments KafkaSource.start() uses, for the same KafkaConfig."""
    from monitor.kafka_client import consumer_options

    return consumer_options(kcfg)


def _produce(bootstrap: str, pool: list[bytes], n: int) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50, batch_size=1 << 20,
                             max_request_size=8 << 20)
    started = time.perf_counter()
    size = len(pool)
    for i in range(n):
        producer.send(TOPIC, value=pool[i % size])
    producer.flush(timeout=300)
    elapsed = time.perf_counter() - started
    producer.close(timeout=10)
    return n / elapsed


def run(quick: bool = False) -> dict:
    import msgspec

    from monitor.config import Config
    from monitor.daemon import Daemon
    from monitor.synth import wide

    try:
        from tests.brokers import BrokerToolMissing, KafkaBroker
    except ImportError as exc:  # the repo's tests/ folder is not on the path
        return {"skipped": f"cannot import tests.brokers: {exc}"}

    n_messages = 30_000 if quick else 500_000
    pool_n = 10_000 if quick else 50_000
    rounds = 1 if quick else 5
    train_rows = 20_000 if quick else 100_000
    crc = crc32c_status()
    log(f"kafka: crc32c importable: {crc['importable']}, used by kafka-python: {crc['used_by_kafka_python']}")

    try:
        broker = KafkaBroker()
    except BrokerToolMissing as exc:
        return {"skipped": str(exc), "crc32c": crc}
    tmp = scratch_dir("driftmon-bench-kafka-")
    synth = wide(0)
    _, base_config, baseline = make_setup(tmp, synth, train_rows)
    pool = message_pool(pool_n, seed=1)
    broker.start()
    try:
        log(f"kafka: broker {broker.version} up in {broker.startup_seconds:.1f}s on {broker.bootstrap}")
        broker.create_topic(TOPIC, 1)
        produce_rate = _produce(broker.bootstrap, pool, n_messages)
        log(f"kafka: produced {n_messages:,} messages at {produce_rate:,.0f} msg/s")

        counter = iter(range(1_000_000))

        def config_for(kind: str) -> Config:
            tree = msgspec.to_builtins(base_config)
            tree["kafka"] = {"bootstrap_servers": broker.bootstrap, "topic": TOPIC,
                             "group_id": f"bench-{kind}-{next(counter)}"}
            tree["http"] = {"host": "127.0.0.1", "port": 0}
            tree["state"] = {"dir": tempfile.mkdtemp(prefix="state-", dir=tmp)}
            return msgspec.convert(tree, Config)

        def run_ceiling() -> dict:
            from kafka import KafkaConsumer

            kcfg = config_for("ceiling").kafka
            consumer = KafkaConsumer(**_consumer_options(kcfg))
            consumer.subscribe([kcfg.topic])
            seen = 0
            first = None
            deadline = time.monotonic() + 600
            try:
                while seen < n_messages and time.monotonic() < deadline:
                    records = consumer.poll(timeout_ms=500, max_records=kcfg.max_poll_records)
                    got = sum(len(v) for v in records.values())
                    if got and first is None:
                        first = (time.perf_counter(), got)
                    seen += got
                end = time.perf_counter()
            finally:
                consumer.close(autocommit=False)
            if seen < n_messages:
                raise RuntimeError(f"ceiling consumer saw only {seen} of {n_messages} messages")
            return {"rate": (n_messages - first[1]) / (end - first[0]), "seconds": end - first[0]}

        def run_ceiling_confluent() -> dict:
            from confluent_kafka import Consumer, Message

            from monitor.kafka_client import ConfluentSource

            kcfg = config_for("ceiling-confluent").kafka
            consumer = Consumer(ConfluentSource(kcfg, dict)._consumer_options())  # the daemon's own options
            consumer.subscribe([kcfg.topic])
            seen, first = 0, None
            deadline = time.monotonic() + 600
            try:
                while seen < n_messages and time.monotonic() < deadline:
                    # C calls over the batch, no Python frame per record (as ConfluentSource.poll)
                    got = list(map(Message.error, consumer.consume(kcfg.max_poll_records, 0.5))).count(None)
                    if got and first is None:
                        first = (time.perf_counter(), got)
                    seen += got
                end = time.perf_counter()
            finally:
                consumer.close()
            if seen < n_messages:
                raise RuntimeError(f"bare confluent consumer saw only {seen} of {n_messages} messages")
            return {"rate": (n_messages - first[1]) / (end - first[0]), "seconds": end - first[0]}

        def run_subject(client: str = "kafka-python") -> dict:
            config = config_for("daemon")
            config.kafka.client = client
            daemon = Daemon(config, baseline)
            daemon.start()
            first = []
            real_poll = daemon.source.poll

            def timed_poll(timeout_ms: int = 500):
                out = real_poll(timeout_ms)
                if out and not first:
                    first.append((time.perf_counter(), sum(len(pb.values) for pb in out)))
                return out

            daemon.source.poll = timed_poll
            deadline = time.monotonic() + 600
            try:
                while daemon.pipeline.consumed < n_messages and time.monotonic() < deadline:
                    daemon._consume_once()
                end = time.perf_counter()
                consumed = daemon.pipeline.consumed
                invalid = dict(daemon.pipeline.invalid)
                windows = daemon.pipeline.windows_evaluated
            finally:
                daemon.shutdown()
            if consumed < n_messages:
                raise RuntimeError(f"daemon consumed only {consumed} of {n_messages} messages")
            if invalid:
                raise RuntimeError(f"daemon rejected messages: {invalid}")
            return {"rate": (n_messages - first[0][1]) / (end - first[0][0]), "seconds": end - first[0][0],
                    "windows": windows}

        rounds_out = interleave(run_ceiling, run_subject, rounds, log=log, label="kafka")
        confluent_rounds = None
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:
            confluent_skipped = f"confluent-kafka not installed ({exc})"
        else:
            confluent_skipped = None
            # each client's daemon (kafka-python the reference), with the bare confluent consumer beside them
            confluent_rounds = []
            for r in range(rounds):
                steps = [("bare", run_ceiling_confluent), ("kafka-python", run_subject),
                         ("confluent-kafka", lambda: run_subject("confluent-kafka"))]
                got = {}
                for name, fn in (steps if r % 2 == 0 else steps[::-1]):
                    got[name] = fn()
                confluent_rounds.append(got)
                log(f"  confluent round {r + 1}/{rounds}: bare {got['bare']['rate']:,.0f}, daemon on confluent-kafka "
                    f"{got['confluent-kafka']['rate']:,.0f}, daemon on kafka-python {got['kafka-python']['rate']:,.0f} msg/s")
    finally:
        broker.stop()
    summary = summarize(rounds_out, "rate")
    if confluent_rounds:
        import statistics

        speedups = [g["confluent-kafka"]["rate"] / g["kafka-python"]["rate"] for g in confluent_rounds]
        confluent = {
            "bare_msgs_per_s": statistics.median(g["bare"]["rate"] for g in confluent_rounds),
            "daemon_msgs_per_s": statistics.median(g["confluent-kafka"]["rate"] for g in confluent_rounds),
            "kafka_python_daemon_msgs_per_s": statistics.median(g["kafka-python"]["rate"] for g in confluent_rounds),
            "speedup": statistics.median(speedups), "speedups": speedups,
            "ratio_to_bare": statistics.median(g["confluent-kafka"]["rate"] / g["bare"]["rate"] for g in confluent_rounds),
            "target": {"speedup": 2.0},
            "rounds": confluent_rounds,
        }
        confluent["met"] = confluent["speedup"] >= 2.0
    else:
        confluent = {"skipped": confluent_skipped}
    return {
        "what": "monitor.daemon.Daemon consume loop (poll + Pipeline.process + checkpoints + commits) from Apache Kafka",
        "ceiling_what": "bare kafka-python KafkaConsumer, same options as KafkaSource, no processing",
        "broker": f"Apache Kafka {broker.version} (KRaft, one node, loopback)",
        "topic_partitions": 1,
        "messages": n_messages,
        "rounds": rounds,
        "produce_msgs_per_s": produce_rate,
        "crc32c": crc,
        "windows_per_round": rounds_out[0]["subject"]["windows"],
        "subject_msgs_per_s": summary["subject_median"],
        "ceiling_msgs_per_s": summary["ceiling_median"],
        "ratio": summary["ratio_median"],
        # What driftmon adds to every message on top of consuming it, and the budget the target leaves.
        "added_us_per_msg": 1e6 * (1 / summary["subject_median"] - 1 / summary["ceiling_median"]),
        "budget_us_per_msg": 1e6 * (1 / TARGET_RATIO - 1) / summary["ceiling_median"],
        "detail": summary,
        "target": {"ratio": TARGET_RATIO},
        "met": summary["ratio_median"] >= TARGET_RATIO,
        "confluent": confluent,
    }
