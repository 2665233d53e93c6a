"""Shared pytest fixtures: real brokers for integration tests, unique topics and groups.

Fixtures (see tests/brokers.py for the broker classes):

* ``kafka_broker`` (session): a started :class:`brokers.KafkaBroker` (Apache Kafka, KRaft).
* ``tansu_broker`` (session): a started :class:`brokers.TansuBroker` (Tansu, in memory).
* ``broker`` (function, parametrized ``["kafka", "tansu"]``): one of the two, so a test
  written once runs against both (test ids end in ``[kafka]`` / ``[tansu]``).
* ``topic`` (function): name of a fresh, uniquely named 1-partition topic on ``broker``.
* ``topic_factory`` (function): ``topic_factory(partitions=1) -> str`` for more topics.
* ``group_id`` (function): a unique consumer group id.
* ``group_consumer_config``: dict of consumer settings that keep group joins fast on
  both brokers (``max_poll_interval_ms=5000`` ...; Tansu waits a full rebalance timeout
  on a group's first join). Use ``KafkaConsumer(..., **group_consumer_config)``.
* ``receiver`` (function): a started :class:`receiver.Receiver`, a real HTTP server recording POSTs.
* ``helm_bin``, ``promtool_bin``, ``alertmanager_bin`` (session): paths of tools that
  scripts/setup.sh installs.

Every test that uses a broker fixture is marked ``integration`` automatically.
A missing broker or tool is a test *failure* telling to run scripts/setup.sh; outside
CI (env ``CI`` unset) ``DRIFTMON_ALLOW_SKIP=1`` turns those failures into skips.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid

import pytest

# The tests import each other as ``tests.<module>``: make the repo root importable even
# under a bare ``pytest`` (``python -m pytest`` from the root has it already).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests import brokers  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

BROKER_FIXTURES = ("broker", "kafka_broker", "tansu_broker", "topic", "topic_factory")
_started: list[brokers._Broker] = []


def _missing(message: str):
    """Fail (always in CI) or, when DRIFTMON_ALLOW_SKIP=1 outside CI, skip."""
    message = f"{message}\n(run scripts/setup.sh to install the test tools)"
    if not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def _start(cls):
    try:
        broker = cls()
    except brokers.BrokerToolMissing as e:
        _missing(str(e))
    broker.start()  # BrokerStartError (with the log tail) fails the tests that need it
    _started.append(broker)
    return broker


@pytest.fixture(scope="session")
def kafka_broker():
    broker = _start(brokers.KafkaBroker)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tansu_broker():
    broker = _start(brokers.TansuBroker)
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def _module_broker():
    broker = _start(brokers.KafkaBroker)
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(_module_broker):
    """Apache Kafka for one test module alone: its tests may halt and restart it. Each test gets it
    running: a test that failed while it was halted does not fail the next ones with it."""
    return _module_broker.restart()


@pytest.fixture(params=["kafka", "tansu"])
def broker(request):
    """Kafka or Tansu: each test using it runs once per broker."""
    return request.getfixturevalue(f"{request.param}_broker")


@pytest.fixture
def receiver():
    """A real webhook receiver on a loopback port (tests/receiver.py)."""
    r = Receiver()
    yield r
    r.close()


def _unique(prefix: str, request) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:80]
    return f"{prefix}-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic_factory(broker, request):
    def make(partitions: int = 1) -> str:
        return broker.create_topic(_unique("t", request), partitions=partitions)
    return make


@pytest.fixture
def topic(topic_factory) -> str:
    return topic_factory(1)


@pytest.fixture
def group_id(request) -> str:
    return _unique("g", request)


@pytest.fixture
def group_consumer_config() -> dict:
    return dict(brokers.GROUP_CONSUMER_DEFAULTS)


def _tool(*candidates: str) -> str:
    for c in candidates:
        path = c if os.path.isabs(c) else shutil.which(c)
        if path and os.access(path, os.X_OK):
            return path
    _missing(f"none of {', '.join(candidates)} found")


@pytest.fixture(scope="session")
def helm_bin() -> str:
    return _tool(str(brokers.cache_dir() / "bin" / "helm"), "helm")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def alertmanager_bin() -> str:
    return _tool("prometheus-alertmanager", "alertmanager")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in BROKER_FIXTURES):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter):
    for b in _started:
        if b.startup_seconds is not None:
            terminalreporter.write_line(
                f"broker {b.name}: ready in {b.startup_seconds:.1f}s"
                + (f" (Apache Kafka {b.version})" if isinstance(b, brokers.KafkaBroker) else ""))
