"""The CLI's logging: kafka-python's reconnect noise deduplicated, and only on the CLI's own handler."""

import contextlib
import logging

import pytest

from monitor.baseline import Baseline
from monitor.cli import _QuietKafka, _setup_logging
from monitor.config import ConfigError
from monitor.daemon import Daemon
from monitor.synth import car_loan
from tests.helpers import write_setup


def _record(name: str, msg: str, created: float, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError:
            import sys
            exc_info = sys.exc_info()
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), exc_info)
    record.created = created
    return record


def test_kafka_messages_pass_once_a_minute_without_tracebacks_and_others_always():
    quiet = _QuietKafka(every=60.0)
    first = _record("kafka.conn", "Connect attempt to <BrokerConnection host=b:9092> returned error 111", 1000.0,
                    exc=True)
    assert quiet.filter(first) and first.exc_info is None  # kept, without its traceback
    assert not quiet.filter(_record("kafka.conn", first.msg, 1059.0))  # the same again within the minute
    assert quiet.filter(_record("kafka.conn", "another message", 1059.0))
    assert quiet.filter(_record("kafka.conn", first.msg, 1061.0))  # a minute on
    for t in (1000.0, 1000.1):
        assert quiet.filter(_record("driftmon", "kafka: cannot reach b:9092", t))  # not kafka's: never held back


@contextlib.contextmanager
def bare_root():
    """The root logger without pytest's capture handlers (which it adds for the test's call: so not a fixture),
    as it is in a process of its own; put back afterwards."""
    root, kafka_log = logging.getLogger(), logging.getLogger("kafka")
    saved, level, kafka_level = list(root.handlers), root.level, kafka_log.level
    root.handlers = []
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = saved
        root.setLevel(level)
        kafka_log.setLevel(kafka_level)


def test_the_filter_goes_on_the_handler_the_cli_makes():
    with bare_root() as root:
        _setup_logging("INFO")
        (handler,) = root.handlers
        assert sum(isinstance(f, _QuietKafka) for f in handler.filters) == 1
        _setup_logging("INFO")  # again (a second command in one process): still one
        assert root.handlers == [handler] and sum(isinstance(f, _QuietKafka) for f in handler.filters) == 1


def test_handlers_of_the_embedding_program_are_left_alone():
    with bare_root() as root:
        theirs = logging.Handler()
        root.addHandler(theirs)
        _setup_logging("INFO")
        assert root.handlers == [theirs] and theirs.filters == []


def test_a_failed_start_silences_kafka_during_its_shutdown_only(tmp_path, monkeypatch):
    _path, config = write_setup(tmp_path, car_loan(seed=1), window={"size": 500},
                                kafka={"bootstrap_servers": "127.0.0.1:9", "topic": "t", "group_id": "g"})
    daemon = Daemon(config, Baseline.load(config.baseline))
    kafka_log = logging.getLogger("kafka")
    monkeypatch.setattr(kafka_log, "level", logging.INFO)
    during = []

    def start():
        raise ConfigError("kafka.ssl_cafile", "/missing.pem does not exist")

    shutdown = daemon.shutdown

    def spy(*args, **kwargs):
        during.append(kafka_log.getEffectiveLevel())
        return shutdown(*args, **kwargs)

    monkeypatch.setattr(daemon, "start", start)
    monkeypatch.setattr(daemon, "shutdown", spy)
    with pytest.raises(ConfigError):
        daemon.run()
    assert during == [logging.CRITICAL]  # closing half-open connections is not news then
    assert kafka_log.level == logging.INFO  # and afterwards the level is what it was
