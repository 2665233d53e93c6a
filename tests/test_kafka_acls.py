"""Scale-out on a real Apache Kafka broker that authorizes by ACL (KRaft's StandardAuthorizer).

The daemon connects as the SCRAM user (SASL/SCRAM-SHA-512 over TLS), which may do only what the ACLs
created here grant it; the harness is a super user on the PLAINTEXT listener (tests/brokers.py,
``AUTHORIZER_PROPERTIES``). A transactional id the user may not use is a configuration error at start (one
line naming the id, the principal and the missing permission, exit 2), not a fence to rejoin after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from kafka.admin import (ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, KafkaAdminClient,
                         ResourcePattern, ResourceType)

from monitor.synth import car_loan
from monitor.tansu import free_port
from tests import brokers
from tests.daemon_proc import DaemonProcess
from tests.helpers import write_setup
from tests.test_daemon_integration import CLIENTS, produce
from tests.test_kafka_security import kafka_section, scram

pytestmark = pytest.mark.integration

PRINCIPAL = f"User:{brokers.SCRAM_USER}"


@pytest.fixture(scope="module")
def acl_broker():
    try:
        broker = brokers.KafkaBroker(secure=True, server_properties=brokers.AUTHORIZER_PROPERTIES)
    except brokers.BrokerToolMissing as exc:
        pytest.fail(f"{exc} (run scripts/setup.sh)", pytrace=False)
    broker.start()
    yield broker
    broker.stop()


def grant(broker, resources: list[tuple[ResourceType, str, ACLResourcePatternType]],
          operations=(ACLOperation.READ, ACLOperation.WRITE, ACLOperation.DESCRIBE)) -> list[ACL]:
    """Allow the SCRAM user ``operations`` on each (type, name, pattern type); returns the ACLs."""
    acls = [ACL(PRINCIPAL, "*", op, ACLPermissionType.ALLOW, ResourcePattern(kind, name, pattern))
            for kind, name, pattern in resources for op in operations]
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    assert not result["failed"], result
    return acls


def revoke(broker, acls: list[ACL]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        admin.delete_acls(acls)
    finally:
        admin.close()


def cluster_setup(tmp_path, broker, client: str, missing: str = "transactional id") -> dict:
    """A scale-out config for the SCRAM user with ACLs on its topics, groups and transactional id but for
    the ``missing`` one. Returns names: config path, topic, changelog topic (= the aggregator's
    transactional id), partials topic, group, aggregator group."""
    topic = broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=2)
    names = {"topic": topic, "partials": f"{topic}.partials", "changelog": f"{topic}.aggregator",
             "group": f"driftmon-{topic}", "aggregator group": f"driftmon-{topic}-aggregator"}
    broker.create_topic(names["partials"])
    broker.create_topic(names["changelog"])
    literal = ACLResourcePatternType.LITERAL
    resources = {"topic": [(ResourceType.TOPIC, t, literal) for t in (topic, names["partials"], names["changelog"])
                           if t != names["partials"]],
                 "partials": [(ResourceType.TOPIC, names["partials"], literal)],
                 "group": [(ResourceType.GROUP, names["group"], literal)],
                 "aggregator group": [(ResourceType.GROUP, names["aggregator group"], literal)],
                 # a prefix, as docs/helm.md suggests (the id is the changelog topic's name)
                 "transactional id": [(ResourceType.TRANSACTIONAL_ID, names["changelog"],
                                       ACLResourcePatternType.PREFIXED)]}
    for what, found in resources.items():
        if what != missing:
            ops = (ACLOperation.WRITE, ACLOperation.DESCRIBE) if what == "transactional id" else \
                (ACLOperation.READ,) if "group" in what else (ACLOperation.READ, ACLOperation.WRITE,
                                                              ACLOperation.DESCRIBE)
            names[f"acls {what}"] = grant(broker, found, ops)
    kafka = kafka_section(broker, "SCRAM", topic, **scram(client=client))
    names["path"], _ = write_setup(tmp_path, car_loan(seed=1), window={"duration": "10s"}, kafka=kafka,
                                   state={"dir": "state", "checkpoint_interval": "1s"},
                                   cluster={"enabled": True, "create_topics": False,
                                            "partials_topic": names["partials"],
                                            "changelog_topic": names["changelog"]})
    return names


ENV = {"DRIFTMON_KAFKA_SASL_PASSWORD": brokers.SCRAM_PASSWORD}
#: what is missing: (the resource's name in cluster_setup's names, what the line asks for)
MISSING = {"transactional id": ("changelog", "grant WRITE and DESCRIBE on TransactionalId"),
           "aggregator group": ("aggregator group", "grant READ on Group"),
           "partials": ("partials", "grant READ, WRITE and DESCRIBE on Topic")}
KINDS = {"transactional id": "transactional id", "aggregator group": "group", "partials": "topic"}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("missing", list(MISSING))
def test_a_resource_without_acl_is_one_line_and_exit_2(tmp_path, acl_broker, client, missing):
    names = cluster_setup(tmp_path, acl_broker, client, missing)
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "run", "--config", names["path"], "--port", "0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **ENV})
    errors = [line for line in proc.stderr.splitlines() if " INFO " not in line and line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1, proc.stderr  # no traceback, no rejoin loop
    name, grant_line = MISSING[missing]
    for part in [f"Kafka refused {KINDS[missing]} '{names[name]}'", f"principal {PRINCIPAL}", grant_line]:
        assert part in errors[0], errors[0]
    assert brokers.SCRAM_PASSWORD not in proc.stderr


@pytest.mark.parametrize("client", CLIENTS)
def test_a_transactional_id_refused_at_run_time_is_retried_with_backoff_and_on_readyz(tmp_path, acl_broker, client):
    """An ACL removed while the daemon runs: the aggregator's next transaction is refused. It is logged once,
    /readyz says it, the take-over is retried with backoff (no fence, no rejoin), and it recovers by itself
    once the ACL is back."""
    names = cluster_setup(tmp_path, acl_broker, client, missing="")
    daemon = DaemonProcess(names["path"], free_port(), str(tmp_path / "daemon.log"), env=ENV)
    daemon.start()
    try:
        daemon.wait(lambda: daemon.status()["cluster"]["aggregator"] and daemon.get("/readyz") is not None, 90,
                    "the aggregator, ready")
        revoke(acl_broker, names["acls transactional id"])
        # windows close at the workers: their partials change the aggregator's state, whose write is refused
        start = time.time() - 60
        produce(acl_broker.bootstrap, names["topic"], car_loan(seed=2).messages(3000, start_time=start, rate=60))
        refused = f"Kafka refused transactional id '{names['changelog']}' for principal {PRINCIPAL}"
        daemon.wait(lambda: refused in (daemon.status()["cluster"]["refused"] or ""), 90, "the refusal on /status")
        assert daemon.get("/readyz") is None  # 503
        assert refused in daemon.status()["ready_reason"]
        daemon.wait(lambda: daemon.status()["cluster"]["refused_attempts"] >= 3, 60, "three refused take-overs")
        written = daemon.status()["cluster"]["changelog_writes"]  # none while refused
        log = open(daemon.log_path).read()
        assert log.count(refused) == 1, log  # once per change, not once per retry
        assert "fenced" not in log and "rejoining" not in log and "Traceback" not in log, log
        grant(acl_broker, [(ResourceType.TRANSACTIONAL_ID, names["changelog"], ACLResourcePatternType.PREFIXED)],
              (ACLOperation.WRITE, ACLOperation.DESCRIBE))
        daemon.wait(lambda: daemon.status()["cluster"]["refused"] is None and daemon.status()["cluster"]["aggregator"]
                    and daemon.get("/readyz") is not None, 90, "recovery once the ACL is back")
        daemon.wait(lambda: daemon.status()["cluster"]["changelog_writes"] > written, 60,
                    "the aggregator's state written again")
        # the recovery line names the whole refused resource and principal ("User:...", not cut at its colon)
        recovered = (f"Kafka accepts the aggregator's transactions again (transactional id '{names['changelog']}' "
                     f"for principal {PRINCIPAL} was refused before)")
        assert recovered in open(daemon.log_path).read()
        assert daemon.terminate()[0] == 0
    finally:
        daemon.close()


def test_a_refusal_is_not_a_fence_on_either_client(monkeypatch):
    """The errors each client raises: a refused id (also when later calls only say "fatal error") is an
    AuthorizationError naming it, a real fence stays a FencedError."""
    from confluent_kafka import KafkaError as CKError
    from kafka import errors

    from monitor.config import KafkaConfig
    from monitor.kafka_client import (AuthorizationError, FencedError, _ConfluentTransactions,
                                      _kafka_python_refused, _kafka_python_txn_error)

    monkeypatch.setenv("DRIFTMON_KAFKA_SASL_PASSWORD", "unused")
    cfg = KafkaConfig(bootstrap_servers="127.0.0.1:9", topic="t", group_id="g", security_protocol="SASL_SSL",
                      sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="alice")
    wrapped = errors.KafkaError("Cannot execute transactional method because we are in an error state",
                                errors.TransactionalIdAuthorizationFailedError())
    refused = _kafka_python_refused(cfg, "t.agg", None, wrapped, None)
    assert isinstance(refused, AuthorizationError)
    assert "transactional id 't.agg' for principal User:alice" in str(refused)
    group = _kafka_python_refused(cfg, "t.agg", "g", errors.KafkaError(), errors.GroupAuthorizationFailedError())
    assert "group 'g'" in str(group) and "grant READ on Group 'g'" in str(group)
    assert _kafka_python_refused(cfg, "t.agg", None, errors.ProducerFencedError(), None) is None
    assert isinstance(_kafka_python_txn_error(errors.ProducerFencedError()), FencedError)

    producer = _ConfluentTransactions(cfg, "t.agg", None, None)
    first = producer._error(CKError(CKError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, fatal=True))
    later = producer._error(CKError(CKError._FATAL))
    for e in (first, later):
        assert isinstance(e, AuthorizationError) and not isinstance(e, FencedError)
        assert "transactional id 't.agg'" in str(e)
    fenced = _ConfluentTransactions(cfg, "t.agg", None, None)
    assert isinstance(fenced._error(CKError(CKError.PRODUCER_FENCED, fatal=True)), FencedError)
    assert isinstance(fenced._error(CKError(CKError._FATAL)), FencedError)  # no refusal seen: a fence


def _labelled_setup(tmp_path, broker, client: str) -> dict:
    """Scale-out with labels for the SCRAM user, every ACL granted, the join changelog's transactional ids one
    literal ACL per partition (so that one partition's can be revoked alone). Returns names and ACLs as
    :func:`cluster_setup`, plus the labels topic, the join changelog and ``acls join <p>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled
    from tests.test_cluster_integration import PARTITIONS

    topic = broker.create_topic(f"predictions-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    names = {"topic": topic, "labels": broker.create_topic(f"labels-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS),
             "partials": broker.create_topic(f"{topic}.partials"),
             "changelog": broker.create_topic(f"{topic}.aggregator"),
             "join": broker.create_topic(f"{topic}.join", partitions=PARTITIONS),
             "group": f"driftmon-{topic}"}
    literal = ACLResourcePatternType.LITERAL
    grant(broker, [(ResourceType.TOPIC, names[t], literal)
                   for t in ("topic", "labels", "partials", "changelog", "join")])
    grant(broker, [(ResourceType.GROUP, g, literal) for g in (names["group"], names["group"] + "-aggregator")],
          (ACLOperation.READ,))
    ids = (ACLOperation.WRITE, ACLOperation.DESCRIBE)
    grant(broker, [(ResourceType.TRANSACTIONAL_ID, names["changelog"], literal)], ids)
    for p in range(PARTITIONS):
        names[f"acls join {p}"] = grant(broker, [(ResourceType.TRANSACTIONAL_ID, f"{names['join']}.{p}", literal)], ids)
    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    # ttl 1 d: nothing expires, so every label count is exact by construction whatever the timing
    tree = labelled_config(window={"duration": "10s"},
                           labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp",
                                   "ttl": "1d"},
                           kafka=kafka_section(broker, "SCRAM", topic, labels_topic=names["labels"],
                                               **scram(client=client)),
                           state={"dir": "state", "checkpoint_interval": "1s"},
                           cluster={"enabled": True, "create_topics": False, "grace": "10m",
                                    "partials_topic": names["partials"], "changelog_topic": names["changelog"],
                                    "join_changelog_topic": names["join"]})
    tree["baseline"] = str(tmp_path / "baseline.json")
    path = tmp_path / "driftmon.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    build_baseline(load_config(path), str(tmp_path / "train.parquet")).save(tree["baseline"])
    for name in ("a", "b"):  # one state directory per replica
        (tmp_path / name).mkdir()
        tree["state"]["dir"] = str(tmp_path / name / "state")
        (tmp_path / name / "driftmon.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return names


def _log_since(daemon, offset: int) -> str:
    with open(daemon.log_path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _committed_to_end(broker, group: str, topics, skip: int | None) -> bool:
    """The group's committed offsets are at the end of every partition of ``topics`` but ``skip``."""
    from kafka import KafkaConsumer, TopicPartition

    from tests.test_cluster_integration import PARTITIONS

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, q) for t in topics for q in range(PARTITIONS) if q != skip]
        ends = consumer.end_offsets(tps)
        return all((consumer.committed(tp) or 0) == ends[tp] for tp in tps)
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_partition_whose_transactional_id_is_refused_waits_paused_and_restores_once_granted(tmp_path, acl_broker,
                                                                                               client):
    """A worker given a partition (its owner died) whose transactional id it may not use: the restore's fence is
    refused. The refusal is logged once and is on /readyz (503) and /status; the partition stays paused (its
    records wait in Kafka, nothing of it is read or committed) and its restore is tried again with backoff, in
    place (no rejoin: the replica's other partitions go on); once the ACL is granted it is restored and resumed,
    and the label counts are exact (nothing lost, nothing counted twice)."""
    from kafka import KafkaProducer

    from tests.test_cluster_integration import (DURATION, EXPECTED_LABELS, PHASES, PER_PHASE, _caught_up,
                                                _label_counts, _labelled_stream, _produce_phase)

    names = _labelled_setup(tmp_path, acl_broker, client)
    topic, labels_topic, group = names["topic"], names["labels"], names["group"]
    replicas = [DaemonProcess(str(tmp_path / n / "driftmon.yaml"), free_port(), str(tmp_path / f"{n}.log"), env=ENV)
                for n in ("a", "b")]
    start = (int(time.time() // DURATION) + 30) * DURATION  # ahead of the clock: only events close windows
    stream = _labelled_stream(start)
    producer = KafkaProducer(bootstrap_servers=acl_broker.bootstrap, linger_ms=5)
    status = lambda d: d.status() or {}  # noqa: E731
    try:
        for d in replicas:
            d.start()
        first = replicas[0]
        # settled: each holds 3 of the 6 partitions, one is the aggregator and has written its state
        first.wait(lambda: sorted(len(status(d).get("kafka", {}).get("assigned_partitions") or []) for d in replicas)
                   == [3, 3] and sum(bool(status(d)["cluster"]["aggregator"]) for d in replicas) == 1
                   and all(d.get("/readyz") is not None for d in replicas), 120, "two replicas of 3 partitions each")
        for k in range(3):
            _produce_phase(producer, topic, labels_topic, stream, k)
            first.wait(lambda: _caught_up(acl_broker, group, (topic, labels_topic)), 180, f"phase {k} in cuts")
        survivor = next(d for d in replicas if status(d)["cluster"]["aggregator"])
        victim = next(d for d in replicas if d is not survivor)
        p = status(victim)["kafka"]["assigned_partitions"][0]
        txn_id = f"{names['join']}.{p}"
        # what the survivor logged before (two replicas starting together may fence each other's first cuts)
        mark = os.path.getsize(survivor.log_path)
        revoke(acl_broker, names[f"acls join {p}"])
        victim.kill9()  # its partitions go to the survivor after the session timeout; p's fence is refused
        _produce_phase(producer, topic, labels_topic, stream, 3)
        refused = f"Kafka refused transactional id '{txn_id}' for principal {PRINCIPAL}"
        survivor.wait(lambda: refused in (status(survivor)["cluster"]["refused"] or ""), 120, "the refusal on /status")
        assert survivor.get("/readyz") is None  # 503
        assert refused in status(survivor)["ready_reason"]
        # the other partitions are restored and read meanwhile: every partition but p is caught up
        survivor.wait(lambda: (s := status(survivor)) and sorted(s["kafka"]["assigned_partitions"]) == list(range(6))
                      and [r["partition"] for r in s["cluster"]["restoring_partitions"]] == [f"{topic}:{p}"]
                      and s["cluster"]["refused_attempts"] >= 3, 120, "partition p alone restoring, 3 refused fences")
        # meanwhile every other partition is read and committed (in its cuts) to its end; p's records wait
        survivor.wait(lambda: _committed_to_end(acl_broker, group, (topic, labels_topic), skip=p), 120,
                      "the other partitions in cuts")
        assert not _committed_to_end(acl_broker, group, (topic,), skip=None)
        before = status(survivor)
        log_text = _log_since(survivor, mark)
        assert log_text.count(refused) == 1, log_text[-5000:]  # once per change, not once per retry
        for line in ("rejoining", "leaving the consumer group", "fenced", "Traceback"):
            assert line not in log_text, log_text[-5000:]
        grant(acl_broker, [(ResourceType.TRANSACTIONAL_ID, txn_id, ACLResourcePatternType.LITERAL)],
              (ACLOperation.WRITE, ACLOperation.DESCRIBE))
        survivor.wait(lambda: status(survivor)["cluster"]["refused"] is None
                      and status(survivor)["cluster"]["restoring_partitions"] == []
                      and survivor.get("/readyz") is not None, 120, "partition p restored once the ACL is back")
        for k in range(4, PHASES):
            _produce_phase(producer, topic, labels_topic, stream, k)
        survivor.wait(lambda: _caught_up(acl_broker, group, (topic, labels_topic)), 180, "every phase in cuts")
        # nothing expires (ttl 1 d): every prediction without its label is pending
        expected = EXPECTED_LABELS[:2] + (0, PHASES * PER_PHASE - EXPECTED_LABELS[1])
        survivor.wait(lambda: _label_counts(status(survivor)) == expected, 90, "exact label counts")
        final = status(survivor)
        log_text = _log_since(survivor, mark)
        assert survivor.terminate(timeout=30)[0] == 0
    finally:
        producer.close()
        for d in replicas:
            d.close()
    assert final["kafka"]["assignments"] == before["kafka"]["assignments"]  # no rebalance for the refusal
    assert final["cluster"]["late_performance_partials"] == 0
    assert log_text.count(refused) == 1, log_text[-5000:]
    for line in ("rejoining", "leaving the consumer group", "fenced", "Traceback"):
        assert line not in log_text, log_text[-5000:]
    recovered = (f"Kafka accepts the worker's transactions again (transactional id '{txn_id}' for principal "
                 f"{PRINCIPAL} was refused before)")
    assert recovered in log_text, log_text[-5000:]
    assert re.search(rf"partition {topic}:{p} restored from \S+ in [0-9.]+ s", log_text), log_text[-5000:]
