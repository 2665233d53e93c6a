"""A partition's transactions when a commit times out (monitor/join_changelog.py, monitor/cluster.py), without a
broker: an in-memory transactional producer whose commits follow a script. The same contract on a real broker,
both clients: tests/test_kafka_client.py (a commit timed out while the broker was stopped, then finished on the
same producer) and tests/test_cluster_integration.py (a worker stopped inside its commit past its session)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import msgspec
import pytest

from bench.restore import read_whole
from monitor.cluster import Aggregator, Cluster
from monitor.join_changelog import STATE_KEY, PartitionLog
from monitor.kafka_client import AbortableError, FencedError, ProduceError, ProduceTimeoutError
from monitor.pipeline import Pipeline
from tests.test_cluster import _feed_partition, _phases, _single_performance, _split, assert_same, labelled_setup  # noqa: F401 (a fixture)


class FakeTransactions:
    """A transactional producer with Kafka's transaction states. Each commit or abort call takes the next
    outcome of ``script`` (default "ok"): "ok" finishes it, "timeout" leaves it going on (the same call again
    takes the next outcome), "abortable" fails the transaction (abort it), "fenced" ends the producer."""

    def __init__(self, broker: dict, script=()):
        self.broker = broker  # topic -> committed (key, value) records, shared by every producer
        self.script = list(script)
        self.state = "ready"  # open, committing, aborting, abortable, fenced
        self.calls: list[str] = []
        self.records: list = []
        self.closed = False

    def _outcome(self) -> str:
        return self.script.pop(0) if self.script else "ok"

    def begin(self) -> None:
        self.calls.append("begin")
        if self.state != "ready":
            raise ProduceError(f"begin in state {self.state}")
        self.state, self.records = "open", []

    def send(self, topic, value, key=None, partition=None) -> None:
        self.calls.append("send")
        if self.state != "open":
            raise ProduceError(f"send in state {self.state}")
        self.records.append((topic, key, value, partition))

    def send_offsets(self, offsets, group) -> None:
        self.calls.append("send_offsets")
        self.records.append(("__offsets", group, dict(offsets)))

    def commit(self, timeout_s: float = 10.0) -> None:
        self.calls.append("commit")
        if self.state == "open":
            self.state = "committing"
        elif self.state != "committing":  # a commit may only be retried while it is going on
            raise ProduceError(f"commit in state {self.state}")
        self._finish(True)

    def abort(self, timeout_s: float = 10.0) -> None:
        self.calls.append("abort")
        if self.state in ("open", "abortable"):
            self.state = "aborting"
        elif self.state != "aborting":
            raise ProduceError(f"abort in state {self.state}")
        self._finish(False)

    def _finish(self, commit: bool) -> None:
        outcome = self._outcome()
        if outcome == "timeout":
            raise ProduceTimeoutError("did not finish in time")
        if outcome == "fenced":
            self.state = "fenced"
            raise FencedError("fenced")
        if outcome == "abortable":
            self.state = "abortable"
            raise AbortableError("a record was not taken")
        if commit:
            for topic, *record in self.records:
                self.broker.setdefault(topic, []).append(tuple(record))
        self.state, self.records = "ready", []

    def close(self, timeout_s: float = 1.0) -> None:
        self.closed = True


@pytest.fixture
def fences(monkeypatch):
    """Every take-over of a transactional id (kafka_client.fence): none is expected here."""
    taken: list[str] = []

    def fence(kafka, transactional_id, *args, **kwargs):
        taken.append(transactional_id)
        return FakeTransactions({})

    monkeypatch.setattr("monitor.join_changelog.fence", fence)
    return taken


def _log(script=(), broker=None) -> PartitionLog:
    log = PartitionLog(None, "join", 0, lambda: "group-metadata")
    log.producer = FakeTransactions({} if broker is None else broker, script)
    return log


def _write(log: PartitionLog, n: int = 1) -> None:
    log.write("partials", b"m", [{"n": n}], {"id": {"v": n}}, {"seq": n}, {("t", 0): n})


def test_a_commit_that_timed_out_is_finished_on_the_same_producer_and_commits_once(fences):
    broker: dict = {}
    log = _log(["timeout", "timeout", "ok"], broker)
    producer = log.producer
    with pytest.raises(ProduceTimeoutError):
        _write(log)
    assert log.in_doubt == "commit" and log.producer is producer and not producer.closed
    with pytest.raises(ProduceError):  # nothing else goes on that producer before the commit is finished
        _write(log, 2)
    with pytest.raises(ProduceTimeoutError):  # still unknown: still kept
        log.settle()
    assert log.in_doubt == "commit" and log.producer is producer and broker == {}
    assert log.settle() is True and log.in_doubt is None
    assert producer.calls == ["begin", "send", "send", "send", "send_offsets", "commit", "commit", "commit"]
    assert broker["partials"] == [(b"m", b'{"n":1}', None)]
    assert [(k, p) for k, _v, p in broker["join"]] == [(b"id", 0), (STATE_KEY, 0)]
    _write(log, 2)  # the next cut: a new transaction on the same producer
    assert [json.loads(v) for _k, v, _p in broker["partials"]] == [{"n": 1}, {"n": 2}]
    assert fences == [] and not producer.closed


def test_a_commit_that_timed_out_and_was_fenced_meanwhile_is_fenced_and_not_taken_again(fences):
    log = _log(["timeout", "fenced"])
    producer = log.producer
    with pytest.raises(ProduceTimeoutError):
        _write(log)
    with pytest.raises(FencedError):
        log.settle()
    assert producer.closed and log.producer is None and log.in_doubt is None and fences == []


def test_a_transaction_that_cannot_commit_is_aborted_on_the_same_producer(fences):
    broker: dict = {}
    log = _log(["abortable", "ok"], broker)
    producer = log.producer
    with pytest.raises(ProduceError):
        _write(log)
    assert producer.calls[-2:] == ["commit", "abort"] and log.producer is producer and log.in_doubt is None
    assert broker == {}
    _write(log, 2)
    assert [json.loads(v) for _k, v, _p in broker["partials"]] == [{"n": 2}] and not producer.closed
    # a settled commit that turns out to need an abort: aborted there, its cut written again
    log.producer.script = ["timeout", "abortable", "ok"]
    with pytest.raises(ProduceTimeoutError):
        _write(log, 3)
    assert log.settle() is False and log.in_doubt is None and producer.calls[-2:] == ["commit", "abort"]
    # an abort that times out is finished the same way
    log.producer.script = ["abortable", "timeout", "ok"]
    with pytest.raises(ProduceTimeoutError):
        _write(log, 4)
    assert log.in_doubt == "abort"
    assert log.settle() is False and producer.calls[-1] == "abort"
    assert [json.loads(v) for _k, v, _p in broker["partials"]] == [{"n": 2}] and fences == []


def test_an_unusable_producer_is_closed_and_the_next_write_takes_the_id_again(fences):
    log = _log()
    log.producer.script = ["fatal-unknown"]

    def broken(timeout_s=10.0):
        raise ProduceError("the producer is in a fatal state")

    producer = log.producer
    producer.commit = broken
    with pytest.raises(ProduceError):
        _write(log)
    assert producer.closed and log.producer is None and log.in_doubt is None
    log.fence()
    assert fences == ["join.0"]


# ---- the worker's cuts through Cluster.cut -----------------------------------------------------------------


def _cluster(config, baseline, tmp) -> Cluster:
    config = msgspec.structs.replace(config, state=msgspec.structs.replace(config.state, dir=str(tmp)))
    daemon = SimpleNamespace(config=config, baseline=baseline, pipeline=Pipeline(config, baseline),
                             alerts=SimpleNamespace(state_dict=lambda: {}), _outgoing=None,
                             outbox=SimpleNamespace(undelivered=lambda: []))
    return Cluster(daemon)


def test_a_cut_whose_commit_timed_out_and_then_committed_is_done_and_what_came_since_goes_in_the_next(
        labelled_setup, fences, tmp_path):
    """Partition 0's cut times out twice on the way (once committed when finished at the next cut, once
    aborted), while records keep coming: every prediction window, performance window and label count reaches
    the aggregator exactly once, and the changelog holds the worker's store; no transactional id is taken."""
    from monitor.cluster import _Totals

    _tmp, config, baseline = labelled_setup
    cluster = _cluster(config, baseline, tmp_path)
    worker = cluster.worker
    broker: dict = {}
    scripts = {0: ["ok", "timeout", "ok", "ok", "timeout", "abortable", "ok"], 1: [], 2: ["timeout", "ok"]}
    logs = {}
    for p in range(3):
        logs[p] = cluster.logs[f"t:{p}"] = PartitionLog(config.kafka, "join", p, lambda: "group-metadata")
        logs[p].producer = FakeTransactions(broker, scripts[p])

    phases = _phases(5)
    single, expected = _single_performance(config, baseline, phases)
    offsets: dict = {}
    in_doubt = []
    for k in range(5):
        for p, (preds, labels) in _split(phases, k).items():
            _feed_partition(worker, p, preds, labels, offsets)
            cluster.cut([f"t:{p}"])  # records come between a commit that timed out and its retry
            in_doubt.append(logs[p].in_doubt)
    for _ in range(3):  # the last ones settled
        for p in range(3):
            worker.parts[f"t:{p}"].dirty = True
        cluster.cut(sorted(worker.parts))
    assert "commit" in in_doubt and all(log.in_doubt is None for log in logs.values())
    assert fences == [] and not cluster.rejoin
    assert all(not log.producer.closed for log in logs.values())

    agg_pipeline = Pipeline(config, baseline)
    agg_pipeline.tracker.join = _Totals()
    agg = Aggregator(agg_pipeline, "t", grace=600.0)
    for offset, (_key, value, _p) in enumerate(broker[cluster.partials_topic]):
        agg.add(offset, json.loads(value))
    results = agg.close(3, now=1e12)  # every window's grace is over
    assert agg.duplicates == 0  # nothing was written twice, neither partials nor a cut's labels record
    assert [r["window"]["events"] for r in results] == [1200] * 4  # the 5th is open in the worker
    assert sum(worker.parts[f"t:{p}"].window.events for p in range(3)) == 1200
    merged = agg_pipeline.take_performance()
    assert [r["window"]["labelled"] for r in merged] == [r["window"]["labelled"] for r in expected] == [1080] * 3
    for a, b in zip(expected, merged):
        assert a["window"] == b["window"]
        for section in ("metrics", "drops", "fairness", "segments"):
            assert_same(a[section], b[section], section)
    totals = agg_pipeline.tracker.join
    assert (totals.received, totals.matched, totals.pending) == (
        single.tracker.join.received, single.tracker.join.matched, single.tracker.join.pending)
    assert agg.late_labelled == 0 and agg.late == 0
    # each changelog partition (the latest record per key, as compaction keeps it) holds its partition's store
    for p in range(3):
        entries, _state = read_whole([SimpleNamespace(key=key, value=value) for key, value, partition in broker["join"]
                                  if partition == p])
        store = worker.parts[f"t:{p}"].store
        assert store.entries() == entries and not store.changed and not store.cutting


def test_the_aggregators_checkpoint_finishes_a_commit_that_timed_out_on_the_same_producer(labelled_setup, tmp_path):
    """The aggregator's state write: a commit that timed out is finished at the next checkpoint on the same
    producer (no resign, no new take-over), then the newer state follows; fenced when finished, it resigns and
    waits a session before taking over again (the replica that fenced it may be a stalled one)."""
    import time

    _tmp, config, baseline = labelled_setup
    cluster = _cluster(config, baseline, tmp_path)
    broker: dict = {}
    producer = cluster._state_log.producer = FakeTransactions(broker, ["timeout", "timeout", "ok"])
    cluster.active = cluster.changed = True
    assert cluster.checkpoint() is False and cluster._state_log.in_doubt == "commit"
    assert cluster.active and cluster._retake_at is None and not producer.closed
    assert cluster.checkpoint() is False and cluster._state_log.in_doubt == "commit"  # still unknown
    assert cluster.checkpoint() is True and cluster._state_log.in_doubt is None
    assert producer.calls.count("begin") == 2 and cluster.changelog_writes == 2  # the late one, then the newer
    assert len(broker[cluster.changelog_topic]) == 2 and cluster._state_log.producer is producer

    producer.script = ["timeout", "fenced"]
    cluster.changed = True
    assert cluster.checkpoint() is False and cluster.active
    assert cluster.checkpoint() is False and not cluster.active and producer.closed
    assert cluster._retake_at > time.monotonic() + config.kafka.session_timeout_ms / 1000 - 5
    assert len(broker[cluster.changelog_topic]) == 2



def test_the_aggregators_checkpoint_writes_an_aborted_state_again_and_takes_over_when_the_producer_is_unusable(
        labelled_setup, tmp_path, caplog):
    """The aggregator's state write: a transaction the broker says must be aborted is aborted on the same
    producer and the state is written at the next checkpoint (no resign, no take-over); an error that leaves the
    producer unusable closes it, and the aggregator resigns and takes over again at once."""
    import logging
    import time

    _tmp, config, baseline = labelled_setup
    cluster = _cluster(config, baseline, tmp_path)
    broker: dict = {}
    producer = cluster._state_log.producer = FakeTransactions(broker, ["abortable"])
    cluster.active = cluster.changed = True
    caplog.set_level(logging.WARNING, logger="monitor.cluster")
    assert cluster.checkpoint() is False and cluster.active and cluster.changed and cluster._retake_at is None
    assert producer.calls == ["begin", "send", "commit", "abort"] and not producer.closed and broker == {}
    assert [r.getMessage() for r in caplog.records] == [
        f"aggregator state not written to {cluster.changelog_topic}, retrying: the transaction failed and was aborted"]
    assert cluster.checkpoint() is True and not cluster.changed and cluster.changelog_writes == 1
    assert len(broker[cluster.changelog_topic]) == 1 and cluster._state_log.producer is producer

    caplog.clear()
    producer.state = "committing"  # begin fails: the producer is unusable
    assert cluster.checkpoint(force=True) is False and not cluster.active and producer.closed
    assert cluster._state_log.producer is None and cluster._retake_at <= time.monotonic()
    assert [r.getMessage() for r in caplog.records] == [
        f"aggregator state not written to {cluster.changelog_topic}: begin in state committing"]
    assert len(broker[cluster.changelog_topic]) == 1 and cluster.changelog_writes == 1

# ---- kafka-python: our mapping of its transaction manager's states (its real state machine, no network) ----


def _kafka_python_transactions():
    """A _KafkaPythonTransactions around kafka-python's own TransactionManager in a transaction (IN_TRANSACTION),
    with a sender that does nothing: the states are driven by hand, as the sender's responses would."""
    from kafka.producer.transaction_manager import ProducerIdAndEpoch, TransactionManager, TransactionState

    from monitor.kafka_client import _KafkaPythonTransactions, _refuse_own_init

    manager = TransactionManager(transactional_id="join.0", transaction_timeout_ms=60000, api_version=(4, 0))
    _refuse_own_init(manager)  # as _KafkaPythonTransactions.__init__ does
    manager._transition_to(TransactionState.INITIALIZING)
    manager.set_producer_id_and_epoch(ProducerIdAndEpoch(7, 0))
    manager._transition_to(TransactionState.READY)
    manager.begin_transaction()
    txn = object.__new__(_KafkaPythonTransactions)
    txn.cfg, txn.transactional_id, txn._group, txn._ending = None, "join.0", None, None
    txn._producer = SimpleNamespace(_transaction_manager=manager, _sender=SimpleNamespace(wakeup=lambda: None))
    return txn, manager


def test_kafka_python_a_commit_that_timed_out_is_waited_on_again_not_begun_again():
    from kafka.errors import ProducerFencedError

    txn, manager = _kafka_python_transactions()
    with pytest.raises(ProduceTimeoutError):
        txn.commit(timeout_s=0.05)  # no broker answers
    first = txn._ending[1]
    with pytest.raises(ProduceTimeoutError):
        txn.commit(timeout_s=0.05)  # begin_commit again would be an invalid transition: the same result instead
    assert txn._ending[1] is first
    with pytest.raises(ProduceError, match="not finished"):
        txn.abort(timeout_s=0.05)
    manager._complete_transaction()  # the EndTxn answer, as the sender applies it
    first.done()
    txn.commit(timeout_s=0.05)
    assert txn._ending is None
    manager.begin_transaction()  # the next transaction on the same producer
    with pytest.raises(ProduceTimeoutError):
        txn.commit(timeout_s=0.05)
    manager.transition_to_fatal_error(ProducerFencedError())  # the new owner's init fenced it meanwhile
    txn._ending[1].done(ProducerFencedError())
    with pytest.raises(FencedError):
        txn.commit(timeout_s=0.05)


def test_kafka_python_a_failed_batch_makes_the_commit_abortable_and_an_epoch_bump_is_the_abort():
    from kafka.errors import KafkaTimeoutError, ProducerFencedError

    txn, manager = _kafka_python_transactions()
    manager.transition_to_abortable_error(KafkaTimeoutError("batch expired"))
    with pytest.raises(AbortableError):  # not a timeout to retry: the transaction is over
        txn.commit(timeout_s=0.05)
    with pytest.raises(ProduceTimeoutError):
        txn.abort(timeout_s=0.05)
    manager._complete_transaction()
    txn._ending[1].done()
    txn.abort(timeout_s=0.05)

    # KIP-360: a batch failed with InvalidProducerEpoch, kafka-python bumps the epoch (which aborts the transaction)
    txn, manager = _kafka_python_transactions()
    manager.bump_producer_id_and_epoch()
    with pytest.raises(AbortableError):
        txn.commit(timeout_s=0.05)
    with pytest.raises(ProduceTimeoutError):
        txn.abort(timeout_s=0.1)  # still bumping: the next abort waits again
    with manager._lock:
        manager._complete_epoch_bump()
    txn.abort(timeout_s=0.1)
    assert txn._ending is None
    manager.begin_transaction()  # a READY producer again, same producer id, bumped epoch

    txn, manager = _kafka_python_transactions()
    manager.bump_producer_id_and_epoch()
    manager.transition_to_fatal_error(ProducerFencedError())  # the coordinator refused the bump: a new owner
    with pytest.raises(FencedError):
        txn.abort(timeout_s=0.1)


def test_kafka_python_a_bump_refused_with_invalid_producer_epoch_is_a_fence_not_a_new_init():
    """kafka-python 3.0 answers INVALID_PRODUCER_EPOCH to its own epoch bump with an InitProducerId without
    producer id and epoch (a new init: it would fence the partition's new owner); a broker answers that code for
    PRODUCER_FENCED below InitProducerId v4. With the guard it is fenced and queues nothing."""
    from kafka.producer.transaction_manager import InitProducerIdHandler
    from kafka.protocol.producer import InitProducerIdResponse

    txn, manager = _kafka_python_transactions()
    manager.bump_producer_id_and_epoch()  # what the sender does after a batch failed with InvalidProducerEpoch
    [(_, _, bump)] = manager._pending_requests
    manager._pending_requests.clear()  # the sender took it
    assert isinstance(bump, InitProducerIdHandler)
    assert (bump.request.producer_id, bump.request.producer_epoch) == (7, 0)  # a bump: granted to epoch 0 only
    with manager._lock:  # as TxnRequestHandler.on_complete calls it
        bump.handle_response(InitProducerIdResponse(throttle_time_ms=0, error_code=47, producer_id=-1,
                                                    producer_epoch=-1))
    assert manager._pending_requests == []  # no InitProducerId without producer id and epoch
    assert manager.has_fatal_error() and bump.result.failed
    with pytest.raises(FencedError):
        txn.abort(timeout_s=0.1)
