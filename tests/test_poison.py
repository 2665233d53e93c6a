"""Poison records and dead letters through the real daemon on real brokers.

Every kind of bad record among valid ones: each is counted once under its reason, the valid ones
around it are all windowed, the daemon never stops, and each rejected record reaches the dead-letter
topic with its reason. A dead-letter topic that cannot take a record (too large, missing) costs a
counted failure, never the daemon; after kill -9 dead letters are delivered at least once.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from monitor.synth import car_loan
from tests.daemon_proc import DaemonProcess
from tests.helpers import read_jsonl
from tests.test_daemon_integration import CLIENTS, WINDOW, setup_daemon

pytestmark = pytest.mark.integration


def deep(n: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * n + closer * n


#: (value, reason) of every poison kind; max_message_bytes is set to 65536 in these tests.
POISON = [
    (None, "null_value"),
    (b"", "not_json"),
    (b"{broken", "not_json"),
    (b'{"id":"t1","x1":1', "not_json"),  # these three are one valid-looking array if batches are joined
    (b'"x2":2}', "not_json"),
    (b'{"id":"t2"},{"id":"t3"}', "not_json"),
    (b'{"id": "a"} {"id": "b"}', "not_json"),
    (b"\xff\xfe\x00\x01binary", "not_utf8"),
    (b'{"id": "\xff\xfe"}', "not_utf8"),
    (b"[1, 2, 3]", "not_object"),
    (b'"text"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (deep(10_000, b'{"a":', b"}"), "too_deep"),
    (b'{"id": "d", "unmonitored": ' + deep(10_000) + b"}", "too_deep"),
    (b'{"id": "big", "pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    (b'{"car_value": 1.0}', "missing_field"),
    (b'{"id": "w", "car_value": "cheap"}', "wrong_type"),
    (b'{"id": "n", "car_value": NaN}', "nan"),
    (b'{"id": "ts", "timestamp": 1700000000000}', "bad_timestamp"),
]


def produce(bootstrap: str, topic: str, values: list, rate: float | None = None, **options) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, **options)
    started = time.monotonic()
    for i, v in enumerate(values):
        producer.send(topic, key=b"%d" % i, value=v)  # a tombstone needs a key
        if rate and i % 100 == 0:
            time.sleep(max(0.0, i / rate - (time.monotonic() - started)))
    producer.flush()
    producer.close()


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list:
    """Every record of ``topic`` (waits until at least ``expect`` are there)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, fetch_max_bytes=8 * 1_048_576)
    records, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            records += list(consumer)
            if len(records) >= expect:
                records += list(consumer)  # and whatever follows (duplicates)
                break
    finally:
        consumer.close()
    return records


def with_kafka(path: str, **keys) -> None:
    """Add keys to the `kafka` section of a config written by setup_daemon."""
    text = open(path).read()
    extra = "".join(f"\n  {k}: {v}" for k, v in keys.items())
    open(path, "w").write(text.replace("commit_interval: 200ms", "commit_interval: 200ms" + extra))


def metric(daemon: DaemonProcess, name: str, **labels) -> float:
    return daemon.metrics().get((name, tuple(sorted({"model": "car-loan", **labels}.items()))))


@pytest.mark.parametrize("client", CLIENTS)
def test_every_poison_kind_is_counted_by_reason_and_dead_lettered(tmp_path, broker, client):
    dlq = broker.create_topic(f"dlq-{uuid.uuid4().hex[:8]}")
    topic, path, config, daemon = setup_daemon(tmp_path, broker, client=client)
    with_kafka(path, dead_letter_topic=dlq, max_message_bytes=65536)
    valid = car_loan(seed=91).messages(3 * WINDOW)
    rng = random.Random(7)
    values = list(valid)
    for poison, _reason in POISON:  # anywhere, so that poison and valid records share batches
        values.insert(rng.randrange(len(values)), poison)
    values.insert(0, POISON[0][0])  # and first of all, a tombstone
    values[3:3] = [p for p, _ in POISON[3:6]]  # the three boundary-crossing records, adjacent
    expected = Counter(reason for _p, reason in POISON) + Counter({"null_value": 1, "not_json": 3})
    try:
        daemon.start()
        produce(broker.bootstrap, topic, values)
        status = daemon.wait(lambda: (s := daemon.status()) and s["messages_consumed"] == len(values) and s,
                             90, "every record consumed")
        assert status["messages_invalid"] == dict(expected)
        status = daemon.wait_windows(3, timeout=60)
        assert status["open_window"]["events"] == 0  # exactly the valid records were windowed
        for reason, n in expected.items():
            assert metric(daemon, "driftmon_messages_invalid_total", reason=reason) == n, reason
        assert metric(daemon, "driftmon_messages_consumed_total") == len(values)
        sent = daemon.wait(lambda: metric(daemon, "driftmon_dead_letters_sent_total") == sum(expected.values()),
                           60, "dead letters acknowledged")
        assert sent
        assert daemon.proc.poll() is None and "Traceback" not in daemon.log()
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.close()
    windows = read_jsonl(os.path.join(config.state.dir, "windows.jsonl"))
    assert [w["window"]["events"] for w in windows] == [WINDOW] * 3
    assert sum(w["window"]["invalid"] for w in windows) == sum(expected.values())

    records = read_topic(broker.bootstrap, dlq, sum(expected.values()))
    assert Counter(dict(r.headers)["driftmon-reason"].decode() for r in records) == expected
    by_source = {dict(r.headers)["driftmon-source"].decode(): r for r in records}
    for offset, value in enumerate(values):
        source = f"{topic}:0:{offset}"
        if source in by_source:
            assert by_source[source].value == (value or b"")


def _big_topic(bootstrap: str, max_bytes: int) -> str:
    name = f"big-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(max_bytes)})],
                            timeout_ms=15000)
        admin.wait_for_topics([name], timeout_ms=15000)
    finally:
        admin.close()
    return name


@pytest.mark.parametrize("client", CLIENTS)
def test_a_rejected_record_too_large_for_the_dead_letter_topic_is_sent_truncated(tmp_path, kafka_broker, client):
    """A 2 MiB record on a topic that allows it: too_large for driftmon (1 MiB default), and over the
    dead-letter topic's 1 MiB limit: its dead letter is cut to 1,000,000 bytes, with headers saying so."""
    dlq = kafka_broker.create_topic(f"dlq-{uuid.uuid4().hex[:8]}")
    topic, path, config, daemon = setup_daemon(tmp_path, kafka_broker, client=client)
    big_topic = _big_topic(kafka_broker.bootstrap, 4 * 1_048_576)
    text = open(path).read().replace(f"topic: {topic}", f"topic: {big_topic}")
    open(path, "w").write(text)
    with_kafka(path, dead_letter_topic=dlq)
    huge = b'{"id": "huge", "pad": "' + b"x" * (2 * 1_048_576) + b'"}'
    valid = car_loan(seed=92).messages(WINDOW)
    values = valid[:500] + [huge, None] + valid[500:]
    try:
        daemon.start()
        produce(kafka_broker.bootstrap, big_topic, values, max_request_size=4 * 1_048_576)
        status = daemon.wait_windows(1, timeout=90)
        assert status["messages_invalid"] == {"too_large": 1, "null_value": 1}
        daemon.wait(lambda: metric(daemon, "driftmon_dead_letters_sent_total") == 2, 60, "2 dead letters")
        assert metric(daemon, "driftmon_dead_letters_truncated_total") == 1
        assert sum(v for (name, _l), v in daemon.metrics().items() if name == "driftmon_dead_letters_failed_total") == 0
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()
    records = read_topic(kafka_broker.bootstrap, dlq, 2)
    assert len(records) == 2
    big = next(r for r in records if dict(r.headers)["driftmon-reason"] == b"too_large")
    assert big.value == huge[:1_000_000]
    assert dict(big.headers)["driftmon-truncated"] == b"true"
    assert dict(big.headers)["driftmon-original-bytes"] == str(len(huge)).encode()
    tomb = next(r for r in records if dict(r.headers)["driftmon-reason"] == b"null_value")
    assert tomb.value == b"" and "driftmon-truncated" not in dict(tomb.headers)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_missing_dead_letter_topic_costs_counted_failures_not_the_stream(tmp_path, kafka_broker, client):
    """The dead-letter topic does not exist (and the broker does not create topics): every dead letter
    fails and is counted once, consumption and windows go on, and /status keeps answering."""
    topic, path, config, daemon = setup_daemon(tmp_path, kafka_broker, client=client)
    with_kafka(path, dead_letter_topic=f"missing-{uuid.uuid4().hex[:8]}", dead_letter_timeout="1s")
    valid = car_loan(seed=93).messages(3 * WINDOW)
    values = list(valid)
    for i in range(20):
        values.insert(100 + i * 140, b"{broken")
    try:
        daemon.start()
        produce(kafka_broker.bootstrap, topic, values)
        status = daemon.wait_windows(3, timeout=120)
        assert status["messages_consumed"] == len(values) and status["messages_invalid"] == {"not_json": 20}

        def failed():
            m = daemon.metrics()
            return sum(v for (name, _l), v in m.items() if name == "driftmon_dead_letters_failed_total")
        daemon.wait(lambda: failed() == 20 and metric(daemon, "driftmon_dead_letters_pending") == 0, 120,
                    "20 failed dead letters")
        assert metric(daemon, "driftmon_dead_letters_sent_total") == 0
        code, _ = daemon.terminate(timeout=30)
        assert code == 0
    finally:
        daemon.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_dead_letters_survive_kill_9_at_least_once(tmp_path, kafka_broker, client, capsys):
    """kill -9 three times mid-stream: every rejected record is on the dead-letter topic at least once;
    the duplicates (records re-read after the last checkpoint) are counted and reported."""
    dlq = kafka_broker.create_topic(f"dlq-{uuid.uuid4().hex[:8]}")
    topic, path, config, daemon = setup_daemon(tmp_path, kafka_broker, client=client)
    with_kafka(path, dead_letter_topic=dlq)
    text = open(path).read().replace("commit_interval: 200ms", "commit_interval: 2s")
    open(path, "w").write(text.replace("checkpoint_interval: 1s", "checkpoint_interval: 5s"))  # more to re-read
    total_valid = 16 * WINDOW
    valid = car_loan(seed=94).messages(total_valid)
    values, rejected = [], []
    for i, v in enumerate(valid):
        if i % 25 == 0 and i < total_valid - WINDOW:  # rejected ones all come before the last window closes
            rejected.append(len(values))
            values.append(b'{"id": "r%d", "car_value": "not a number"}' % i)
        values.append(v)
    producer = threading.Thread(target=produce, args=(kafka_broker.bootstrap, topic, values, 800.0))
    daemons = [daemon]
    try:
        daemon.start()
        producer.start()
        for k in range(3):
            current = daemons[-1].wait(lambda: daemons[-1].status(), 30, "status")["windows_evaluated"]
            daemons[-1].wait_windows(current + 2, timeout=120)  # this process has done work of its own
            time.sleep(0.3 + 0.2 * k)  # between checkpoints: its records are read again after the restart
            daemons[-1].kill9()
            daemons.append(DaemonProcess(path, daemon.port, str(tmp_path / f"daemon{k + 2}.log")).start())
        producer.join()
        last = daemons[-1]
        last.wait_windows(total_valid // WINDOW, timeout=180)
        assert last.terminate(timeout=30)[0] == 0
    finally:
        for d in daemons:
            d.close()
    windows = read_jsonl(os.path.join(config.state.dir, "windows.jsonl"))
    assert [w["window"]["events"] for w in windows] == [WINDOW] * (total_valid // WINDOW)

    records = read_topic(kafka_broker.bootstrap, dlq, len(rejected))
    sources = Counter(dict(r.headers)["driftmon-source"].decode() for r in records)
    assert set(sources) == {f"{topic}:0:{offset}" for offset in rejected}
    duplicates = len(records) - len(rejected)
    with capsys.disabled():
        print(f"\ndead letters after 3 x kill -9: {len(rejected)} rejected records, {len(records)} dead letters, "
              f"{duplicates} duplicates ({duplicates / len(rejected):.1%})")


def test_status_answers_while_a_checkpoint_waits_for_dead_letters(tmp_path):
    """The checkpoint waits for the dead letters of the records it covers, but not under the lock that
    /status and /metrics take: with a broker that never answers, /status answers at once, and the
    checkpoint is written after dead_letter_timeout with the dead letter counted unconfirmed."""
    from monitor.baseline import Baseline
    from monitor.daemon import Daemon
    from monitor.tansu import free_port
    from tests.helpers import write_setup

    kafka = {"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "t", "group_id": "g",  # nobody listens
             "dead_letter_topic": "dlq", "dead_letter_timeout": "8s"}
    path, config = write_setup(tmp_path, car_loan(seed=1), window={"size": 500}, kafka=kafka,
                               state={"dir": "state"})
    os.makedirs(config.state.dir, exist_ok=True)  # (start() would create it)
    daemon = Daemon(config, Baseline.load(config.baseline))
    daemon.dead_letters.start()
    try:
        values = [b"{broken"] + car_loan(seed=2).messages(100)
        with daemon.lock:
            _results, batch = daemon.pipeline.process(values, None, "t:0", list(range(len(values))))
            daemon.dead_letters.put([(values[i], reason, f"t:0:{i}") for i, reason in batch.rejected])
            daemon._changed = True
            daemon._publish()  # what /status serves, as the consuming loop does after each poll
        writer = threading.Thread(target=daemon.checkpoint)
        writer.start()
        deadline = time.monotonic() + 30
        while daemon.policy.changed and time.monotonic() < deadline:  # the snapshot is taken: it now waits
            time.sleep(0.01)
        answered = []
        reader = threading.Thread(target=lambda: answered.append(daemon.view.status()))
        reader.start()
        reader.join(timeout=6)  # well within dead_letter_timeout (8 s)
        assert answered and answered[0]["messages_consumed"] == 101
        assert writer.is_alive() and daemon.policy.checkpoints == 0  # still waiting: nothing written yet
        writer.join(timeout=60)
        assert daemon.policy.checkpoints == 1 and dict(daemon.dead_letters.failed) == {"unconfirmed": 1}
    finally:
        daemon.outbox.close()


def test_dead_letters_beyond_the_queue_bound_are_dropped_and_counted():
    """Never blocking the consuming loop has a price when the topic is away long: past the queue bound a dead
    letter is dropped, counted queue_full, and not waited for."""
    from monitor.config import parse_config
    from monitor.deadletter import DeadLetters

    cfg = parse_config(car_loan().config(kafka={"bootstrap_servers": "127.0.0.1:9", "topic": "t", "group_id": "g",
                                                "dead_letter_topic": "dlq", "dead_letter_timeout": "1s"})).kafka
    dead = DeadLetters(cfg, queue_bytes=100)  # not started: nothing leaves the queue
    mark = dead.put([(b"x" * 60, "not_json", "t:0:0"), (b"y" * 60, "not_json", "t:0:1"), (None, "null_value", "t:0:2")])
    assert mark == 2 and dead.pending == 2 and dict(dead.failed) == {"queue_full": 1}
    assert not dead.wait(mark, timeout=0.2)  # neither acknowledged: counted unconfirmed, not waited for again
    assert dict(dead.failed) == {"queue_full": 1, "unconfirmed": 2} and dead.pending == 0
