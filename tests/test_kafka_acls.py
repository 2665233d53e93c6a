"""Scale-out on a real Apache Kafka broker that authorizes by ACL (KRaft's StandardAuthorizer).

The daemon connects as the SCRAM user (SASL/SCRAM-SHA-512 over TLS), which may do only what the ACLs
created here grant it; the harness is a super user on the PLAINTEXT listener (tests/brokers.py,
``AUTHORIZER_PROPERTIES``). A transactional id the user may not use is a configuration error at start (one
line naming the id, the principal and the missing permission, exit 2), not a fence to rejoin after.
"""

from __future__ import annotations

import os
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
        assert "accepts the aggregator's transactions again" in open(daemon.log_path).read()
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
