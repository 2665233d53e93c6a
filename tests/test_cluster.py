"""The scale-out aggregator's rules without a broker: merge, watermark, grace, late and duplicate partials."""

from __future__ import annotations

import json
import math

import pytest

from bench.restore import read_whole
from monitor.cluster import Aggregator, Worker
from monitor.pipeline import Pipeline
from monitor.synth import car_loan
from tests.helpers import write_setup

START = 1_767_225_600.0  # a window boundary (10 s windows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from monitor.baseline import Baseline

    tmp = tmp_path_factory.mktemp("cluster")
    _, config = write_setup(tmp, car_loan(seed=1), window={"duration": "10s"}, segments=[{"name": "channel"}])
    return config, Baseline.load(config.baseline)


def _worker_partials(config, baseline, messages_by_partition, now):
    """Feed each partition's messages through a worker; return its partials as the topic carries them."""
    worker = Worker(config, baseline)
    for p, messages in messages_by_partition.items():
        worker.process(f"t:{p}", messages, None, list(range(len(messages))))
    worker.tick(now, idle=True)
    return [json.loads(json.dumps({"partition": key, **partial})) for key, partial in worker.pending]


def test_partials_merge_to_the_single_process_window_and_close_on_the_watermark(setup):
    config, baseline = setup
    messages = car_loan(seed=3).messages(3000, start_time=START + 0.5, rate=400.0)  # 7.5 s: one window
    later = car_loan(seed=4).messages(3, start_time=START + 10.5, rate=10.0, id_prefix="next")
    parts = {p: messages[p::3] + later[p:p + 1] for p in range(3)}  # each partition moves on to the next window
    partials = _worker_partials(config, baseline, parts, now=START + 5)  # the clock closes nothing
    assert [p["watermark"] for p in partials] == [START + 10] * 3
    agg = Aggregator(Pipeline(config, baseline), "t", grace=30.0)
    for i, record in enumerate(partials[:2]):
        agg.add(i, record)
    assert agg.close(3, now=START + 11) == []  # partition 2 has not reported past the window's end
    agg.add(2, partials[2])
    [merged] = agg.close(3, now=START + 11)

    single = Pipeline(config, baseline)
    [whole], _ = single.process(messages + later)
    assert merged["window"]["events"] == whole["window"]["events"] == 3000
    for name, feature in whole["features"].items():
        assert merged["features"][name]["distribution"]["counts"] == feature["distribution"]["counts"]
        assert merged["features"][name]["drift"] == feature["drift"]
        if isinstance(feature.get("p_value"), float):
            assert merged["features"][name]["p_value"] == pytest.approx(feature["p_value"], rel=1e-9, abs=1e-12)
    for value, seg in whole["segments"]["channel"].items():
        other = merged["segments"]["channel"][value]
        assert (other["events"], other["status"], other["drifted"]) == (seg["events"], seg["status"], seg["drifted"])
        assert other["effects"] == pytest.approx(seg["effects"], rel=1e-9, abs=1e-12)  # merged moments: rounding

    # the same partial again (a worker re-read after a crash): a duplicate, dropped
    agg.add(3, partials[0])
    assert agg.duplicates == 1 and agg.late == 0
    # a partial for the closed window with new offsets: late, counted, not merged
    late = json.loads(json.dumps(partials[0]))
    late["window"]["offsets"]["t:0"] = [5000, 5001]
    agg.add(4, late)
    assert agg.late == 1 and agg.open == {}


def test_grace_closes_windows_of_silent_partitions_and_the_state_round_trips(setup):
    config, baseline = setup
    messages = car_loan(seed=5).messages(500, start_time=START + 0.5, rate=100.0)
    [partial] = _worker_partials(config, baseline, {0: messages}, now=START + 100)  # idle: closed on the clock
    agg = Aggregator(Pipeline(config, baseline), "t", grace=30.0)
    agg.add(0, partial)
    agg.arrived[START] = START - 60  # the first partial came a minute before (on the test's clock)
    assert agg.close(2, now=START + 20) == []  # the window's end + grace is still ahead
    state = json.loads(json.dumps(agg.state_dict()))
    restored = Aggregator(Pipeline(config, baseline), "t", grace=30.0).load_state_dict(state)
    assert restored.position == 1 and restored.merged == {"t:0": 499} and restored.watermarks == {"t:0": START + 10}
    [result] = restored.close(2, now=START + 41)  # partition 1 never reported: the grace closes it
    assert result["window"]["events"] == 500 and restored.closed_until == START + 10
    assert math.isinf(Aggregator(Pipeline(config, baseline), "t", 1.0).closed_until)


def test_a_busy_partition_keeps_its_window_open_on_a_busy_worker(setup):
    config, baseline = setup
    worker = Worker(config, baseline)
    messages = car_loan(seed=6).messages(100, start_time=START + 0.5, rate=100.0)
    worker.process("t:0", messages, None, list(range(100)))
    worker.tick(START + 1000, idle=False)  # the partition just sent records: a backlog, not a silence
    assert worker.pending == [] and worker.safe_offsets() == {"t:0": 0}
    worker.seen["t:0"] -= 10
    worker.tick(START + 1000, idle=False)  # silent for 10 s: closed on the clock
    assert len(worker.pending) == 1 and worker.safe_offsets() == {"t:0": 100}


def test_pca_reconstruction_and_embedding_partials_merge_to_the_single_process_window(tmp_path):
    """Multivariate PCA reconstruction and embedding drift in scale-out: the per-partition partials,
    through JSON as the partials topic carries them, merge to one process's window (the counts of the
    embedding's component histograms exactly, sums and the results derived from them to float rounding)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from monitor.baseline import build_baseline
    from monitor.config import parse_config
    from tests.test_multivariate_service import config_tree, messages, rows

    tree = config_tree(methods=["pca_reconstruction"])
    tree["multivariate"].pop("sample_size")
    tree.update(baseline=str(tmp_path / "baseline.json"), window={"duration": "10s"},
                kafka={"bootstrap_servers": "k:9092", "topic": "t", "group_id": "g"}, cluster={"enabled": True})
    config = parse_config(tree)
    r = rows(np.random.default_rng(1), 5000)
    pq.write_table(pa.table({"x0": r["x0"], "x1": r["x1"], "x2": r["x2"], "plan": r["plan"],
                             "emb": pa.array(r["emb"].tolist(), type=pa.list_(pa.float64()))}),
                   tmp_path / "train.parquet")
    baseline = build_baseline(config, str(tmp_path / "train.parquet"))
    rng = np.random.default_rng(2)
    values = messages(rng, 1500) + messages(rng, 1500, flipped=True)  # the second half drifts
    times = START + 0.5 + np.arange(len(values)) * (19.0 / len(values))  # two windows
    later = messages(rng, 3)
    values, times = values + later, np.concatenate([times, [START + 20.5] * 3])  # each partition moves past both

    worker = Worker(config, baseline)
    for p in range(3):
        worker.process(f"t:{p}", values[p::3], times[p::3], list(range(len(values[p::3]))))
    partials = [json.loads(json.dumps({"partition": key, **partial})) for key, partial in worker.pending]
    agg = Aggregator(Pipeline(config, baseline), "t", grace=30.0)
    for i, record in enumerate(partials):
        agg.add(i, record)
    merged = agg.close(3, now=START + 21)
    single, _ = Pipeline(config, baseline).process(values, times)
    assert len(merged) == len(single) == 2
    assert [w["window"]["events"] for w in merged] == [w["window"]["events"] for w in single] == [1500, 1500]
    for a, b in zip(single, merged):
        pa_, pb = a["multivariate"]["pca_reconstruction"], b["multivariate"]["pca_reconstruction"]
        assert pa_["status"] == pb["status"] == "ok" and pa_["drift"] == pb["drift"] and pa_["events"] == pb["events"]
        for key in ("error", "effect", "z", "p_value"):
            assert pb[key] == pytest.approx(pa_[key], rel=1e-9, abs=1e-12), key
        ea, eb = a["embeddings"]["emb"], b["embeddings"]["emb"]
        assert (ea["events"], ea["missing"], ea["drift"]) == (eb["events"], eb["missing"], eb["drift"])
        assert ea["histograms"] == eb["histograms"]  # from fixed-bin counts, which add: exact
        assert eb["mean_distance"]["distance"] == pytest.approx(ea["mean_distance"]["distance"], rel=1e-9)
    assert [w["multivariate"]["pca_reconstruction"]["drift"] for w in merged] == [False, True]


@pytest.fixture(scope="module")
def labelled_setup(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled

    tmp = tmp_path_factory.mktemp("cluster-labels")
    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp / "train.parquet")
    tree = labelled_config(window={"duration": "10s"},
                           labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp"},
                           kafka={"bootstrap_servers": "k:9092", "topic": "t", "group_id": "g", "labels_topic": "l"},
                           cluster={"enabled": True})
    tree["baseline"] = str(tmp / "baseline.json")
    (tmp / "c.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp / "c.yaml")
    build_baseline(config, str(tmp / "train.parquet")).save(config.baseline)
    return tmp, config, Baseline.load(config.baseline)


def assert_same(a, b, where=""):
    """Equal, floats to 1e-9 relative (sums of per-partition parts add in another order), all else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12, nan_ok=True), where
    else:
        assert a == b, where


def _single_performance(config, baseline, phases) -> tuple:
    """One process fed these phases (each phase's labels come with the next), and its performance windows."""
    single = Pipeline(config, baseline)
    out = []
    for k in range(len(phases)):
        single.process(phases[k][0])
        if k:
            single.process_labels(phases[k - 1][1])
        out += single.take_performance()
    return single, out


def _feed_partition(worker, p: int, preds, labels, offsets: dict) -> None:
    """Partition ``p``'s predictions (topic t) and labels (topic l) to the worker, at the offsets after the last
    fed (``offsets``: partition -> [predictions, labels], updated)."""
    base = offsets.setdefault(p, [0, 0])
    worker.process(f"t:{p}", preds, None, list(range(base[0], base[0] + len(preds))))
    base[0] += len(preds)
    if labels:
        worker.process_labels(f"l:{p}", labels, None, list(range(base[1], base[1] + len(labels))))
        base[1] += len(labels)


def _phases(n_phases, per_phase=1200, labelled_share=0.9):
    """Window k: predictions of period k and the labels (10 s later) of 90% of period k-1's predictions."""
    from tests.labelled import label_messages, labelled, messages

    out = []
    for k in range(n_phases):
        cols = labelled(per_phase, seed=20 + k, start=START + 10 * k + 0.01, rate=per_phase / 9.9, id_prefix=f"w{k}")
        keep = int(per_phase * labelled_share)
        labels = label_messages({key: v[:keep] for key, v in cols.items()}, delay=10.0)
        out.append((messages(cols, with_label=False), labels))
    return out


def _split(phases, k, partitions=3):
    """Phase k's records by partition (id order, as a keyed producer would spread them)."""
    preds, labels = phases[k][0], phases[k - 1][1] if k else []
    return {p: (preds[p::partitions], labels[p::partitions]) for p in range(partitions)}


def test_labelled_partials_merge_to_the_single_process_performance_windows(labelled_setup):
    """With labels, each worker partition joins its own labels; the performance partials and the label counts
    of its cuts, through JSON, merge at the aggregator into one process's performance windows (exact: counts),
    and a partition restored from its last cut (the changelog's entries and state record) goes on as if it had
    never stopped."""
    from monitor.cluster import _Totals

    tmp, config, baseline = labelled_setup
    phases = _phases(5)
    single, expected = _single_performance(config, baseline, phases)
    assert [r["window"]["labelled"] for r in expected] == [1080, 1080, 1080]

    agg_pipeline = Pipeline(config, baseline)
    agg_pipeline.tracker.join = _Totals()
    agg = Aggregator(agg_pipeline, "t", grace=600.0)
    worker = Worker(config, baseline, str(tmp / "join"))
    changelog: dict[str, tuple[dict, dict]] = {}  # partition -> (entries, last state), as compaction keeps them
    offset = 0
    offsets = {}

    def cut_all():
        nonlocal offset
        for key in sorted(worker.parts):
            if not worker.parts[key].dirty:
                continue
            partials, changes, state, _offsets = worker.cut(key)
            entries, _ = changelog.get(key, ({}, None))
            for k_, v in changes.items():
                if v is None:
                    entries.pop(k_, None)
                else:
                    entries[k_] = json.loads(json.dumps(v))
            changelog[key] = (entries, json.loads(json.dumps(state)))
            worker.cut_done(key, state["seq"])
            for partial in partials:
                agg.add(offset, json.loads(json.dumps(partial)))
                offset += 1

    def feed(k, parts=range(3)):
        for p, (preds, labels) in _split(phases, k).items():
            if p not in parts:
                continue
            _feed_partition(worker, p, preds, labels, offsets)

    for k in range(3):
        feed(k)
        cut_all()
    # partition 1 dies after its last cut: phase 3 is read again by its new owner, restored from the changelog
    feed(3, parts=[1])
    matched = worker.parts["t:1"].tracker.join.matched
    worker.release(["t:1"])
    entries, state = changelog["t:1"]
    fresh = worker.new_part("t:1")  # its new owner's restore, the changelog applied in one chunk
    worker.fill(fresh, entries)
    restored = worker.load("t:1", fresh, state)
    assert restored.positions == {"t:1": 1200, "l:1": 720}  # where phase 3 of partition 1 starts
    assert restored.tracker.join.matched == matched - 360 and restored.tracker.join.pending == len(entries) == 480
    offsets[1] = [1200, 720]
    worker.staged["t:1"] = restored
    feed(3)
    cut_all()
    feed(4)
    cut_all()
    results = agg.close(3, now=START + 45)
    merged = agg_pipeline.take_performance()
    assert [r["window"]["labelled"] for r in merged] == [1080, 1080, 1080]
    for a, b in zip(expected, merged):
        assert a["window"] == b["window"]
        for section in ("metrics", "drops", "fairness", "segments", "label_drift"):
            assert_same(a[section], b[section], section)
        assert b["error_rate"] is None  # no ADWIN in scale-out: the error stream has no order across partitions
    totals = agg_pipeline.tracker.join
    assert (totals.received, totals.matched) == (single.tracker.join.received, single.tracker.join.matched) \
        == (4320, 4320)
    assert totals.pending == single.tracker.join.pending == 5 * 1200 - 4320
    assert agg_pipeline.tracker.delay_counts == single.tracker.delay_counts
    assert len(results) == 4 and agg.late_labelled == 0
    # a cut written twice (a lost commit answer) is dropped by its sequence number
    before = agg.duplicates
    agg.add(offset, {"partition": "t:0", "kind": "labels", "seq": 1, "watermark": None, "windows": [],
                     "counts": {}})
    assert agg.duplicates == before + 1
    state = json.loads(json.dumps(agg.state_dict()))
    again = Aggregator(Pipeline(config, baseline), "t", grace=600.0)
    again.pipeline.tracker.join = _Totals()
    again.load_state_dict(state)
    assert again.label_seq == agg.label_seq and again.pipeline.tracker.join.matched == 4320


def test_a_call_retried_every_second_logs_each_new_error_once_and_its_recovery_once(caplog):
    """Partials sends and the aggregator's polls retry every second while the broker is down or refuses them:
    one warning per distinct error, not one per attempt, and one line when the call works again."""
    import logging

    from monitor.kafka_client import RetryLog

    caplog.set_level(logging.INFO, logger="monitor.cluster")
    retries = RetryLog(logging.getLogger("monitor.cluster"), "partials not acknowledged by p, retrying: %s",
                       "partials acknowledged by p again after %d failed attempts", distinct=True)
    for exc in [ConnectionError("broker down")] * 5 + [PermissionError("topic refused")] * 3:
        retries.failed(exc)
    assert (retries.failures, retries.error) == (8, "topic refused")
    retries.worked()
    assert (retries.failures, retries.error) == (0, "")
    retries.worked()  # nothing failed: silent
    retries.failed(TimeoutError())  # a first failure is logged even when its error says nothing
    assert [r.getMessage() for r in caplog.records] == [
        "partials not acknowledged by p, retrying: broker down",
        "partials not acknowledged by p, retrying: topic refused",
        "partials acknowledged by p again after 8 failed attempts",
        "partials not acknowledged by p, retrying: ",
    ]


def _changelog(n: int, ids: int, seed: int) -> list:
    """A join changelog partition as cuts write it: puts (new ids and replaced ones), tombstones (of ids stored
    or not) and state records, in log order."""
    import random

    from monitor.join_changelog import STATE_KEY, _encode
    from monitor.kafka_client import Record

    rng = random.Random(seed)
    records = []
    for offset in range(n):
        r, key = rng.random(), f"p{rng.randrange(ids)}".encode()
        if r < 0.1:
            state = {"seq": offset, "positions": {"t:1": offset}}
            record = Record("j", 0, offset, STATE_KEY, json.dumps(state).encode())
        elif r < 0.4:
            record = Record("j", 0, offset, key, None)
        else:
            t = START + rng.randrange(10_000) / 100
            kind = rng.randrange(2)
            record = Record("j", 0, offset, key, _encode([t, kind, [offset, 0.5] if kind == 0 else str(offset % 2), t]))
        records.append(record)
    return records


def test_a_changelog_applied_chunk_by_chunk_in_every_split_fills_the_store_as_the_whole_log(labelled_setup):
    """Restoring applies the join changelog to the store a chunk at a time: wherever the chunk boundaries fall
    between puts, replaces and tombstones of the same ids, the store ends as with the whole log applied at once."""
    from itertools import combinations

    from monitor.join_changelog import take_change

    tmp, config, baseline = labelled_setup
    worker = Worker(config, baseline, str(tmp / "chunks"))
    records = _changelog(9, ids=3, seed=5)  # 3 ids: every chunk boundary separates writes of one id
    entries, state = read_whole(records)
    whole = worker.new_part("t:1")
    worker.fill(whole, entries)
    expected = whole.store.entries()
    assert expected and len(whole.store) == len(expected) < 3 and not whole.store.changed  # a tombstone last
    whole.tracker.join.close()
    splits = [cuts for k in range(len(records)) for cuts in combinations(range(1, len(records)), k)]
    assert len(splits) == 2 ** (len(records) - 1)
    for cuts in splits:
        part, last = worker.new_part("t:1"), None  # a fresh store, as at a restore's start
        for lo, hi in zip((0, *cuts), (*cuts, len(records))):
            chunk: dict = {}
            for record in records[lo:hi]:
                last = take_change(record, chunk, last)
            worker.fill(part, chunk)
        assert (part.store.entries(), len(part.store), part.tracker.join.pending, last) \
            == (expected, len(expected), len(expected), state), cuts
        part.tracker.join.close()


class _Log:
    """A changelog partition's records, for a restore without a broker (PartitionLog's part of it)."""

    def __init__(self, records):
        self.source, self.producer = records, None

    def fence(self):
        self.producer = object()

    def records(self):
        yield from self.source

    def close(self):
        self.producer = None


def test_a_restore_applies_the_changelog_a_bounded_chunk_at_a_time(labelled_setup):
    """A restore of a changelog much longer than a chunk, in slices that end after a thousand records: it holds
    at most a chunk (plus a thousand records) in memory, the changes it applied are not kept, and it installs
    the store, the pending count and the last state record that the whole log gives."""
    from monitor.cluster import RESTORE_CHUNK, _Restore

    tmp, config, baseline = labelled_setup
    worker = Worker(config, baseline, str(tmp / "slices"))
    records = _changelog(3 * RESTORE_CHUNK + 4321, ids=RESTORE_CHUNK // 2, seed=6)
    entries, state = read_whole(records)
    restore, slices = _Restore("t:1", _Log(records)), 0
    restore.log.fence()  # the fence pool's part (Cluster._fence)
    while not restore.advance(worker, deadline=0.0):  # every slice is past its deadline at its first check
        slices += 1
        assert len(restore.chunk) < RESTORE_CHUNK + 1000 and not restore.part.store.changed
        assert restore.status()["entries"] == restore.pending <= len(entries) + RESTORE_CHUNK
    assert slices == len(records) // 1000 + 1  # the reader opened, then one slice per thousand records read
    assert restore.records == len(records) and restore.chunk == {} and restore.state == state
    store = restore.part.store
    assert store.entries() == entries and len(store) == restore.pending == len(entries) > RESTORE_CHUNK // 4
    restore.close()


def test_a_released_partition_restored_but_not_yet_installed_leaves_its_store_closed(labelled_setup):
    """A restored partition is staged until its first record; released before that (the replica rejoins the
    group), its RocksDB store is closed with it, so that its next restore can open the same directory (it
    failed on RocksDB's lock, and every later restore of it failed too: a rejoin loop)."""
    tmp, config, baseline = labelled_setup
    worker = Worker(config, baseline, str(tmp / "staged"))
    part = worker.new_part("t:0")
    worker.fill(part, {"a": None})
    worker.staged["t:0"] = worker.load("t:0", part, None)
    worker.release(["t:0", "l:0"])
    assert "t:0" not in worker.staged
    again = worker.new_part("t:0")  # the same directory: raised "lock hold by current process" before
    again.tracker.join.close()


def test_a_restore_of_an_empty_changelog_installs_an_empty_partition(labelled_setup):
    """A partition whose join changelog is empty (no cut written yet) is installed empty: a previous owner's store
    left on this disk is not read, nothing is left to write back or undo, the partition starts at the group's
    committed offsets, and its first cut writes only what came after the restore."""
    from monitor.cluster import _Restore
    from monitor.join import _UNDO
    from tests.labelled import labelled, messages

    tmp, config, baseline = labelled_setup
    worker = Worker(config, baseline, str(tmp / "empty"))
    old = labelled(500, seed=3, start=START + 0.01, rate=100.0, id_prefix="old")
    worker.process("t:1", messages(old, with_label=False), None, list(range(500)))  # on disk, never cut
    assert len(worker.parts["t:1"].store) == 500 and worker.parts["t:1"].store.changed
    worker.release(["t:1"])  # its store closed, its files left behind
    restore = _Restore("t:1", _Log([]))
    restore.log.fence()
    assert restore.advance(worker, deadline=math.inf)
    part = worker.load("t:1", restore.part, restore.state)
    store = part.store
    assert restore.records == 0 and restore.state is None
    assert store.entries() == {} and len(store) == part.tracker.join.pending == 0
    assert not store.changed and not store.cutting
    assert not [k for k in store.db.keys() if k.startswith(_UNDO)]  # no undo records: nothing to settle
    assert part.positions == {} and worker.restored == 0 and "t:1" not in worker.seq
    worker.staged["t:1"] = part  # installed
    new = labelled(20, seed=4, start=START + 6.01, rate=100.0, id_prefix="new")
    worker.process("t:1", messages(new, with_label=False), None, list(range(500, 520)))
    _partials, changes, state, offsets = worker.cut("t:1")
    assert sorted(changes) == sorted(new["id"]) and all(v is not None for v in changes.values())
    assert state["seq"] == 1 and offsets == {("t", 1): 520}
    worker.release(["t:1"])


class _Seeks:
    """The aggregator group's consumer, as far as a take-over uses it: where it was told to read from."""

    def __init__(self):
        self.seeks = []

    def seek(self, topic, partition, offset):
        self.seeks.append((topic, partition, offset))


@pytest.mark.parametrize("committed", [False, True], ids=["first-aggregator", "from-changelog"])
def test_a_take_over_keeps_the_worker_positions_the_consumer_lag_is_measured_from(tmp_path, committed):
    """/status -> consumer_lag_messages is measured from the pipeline's positions, which in scale-out are the
    replica's own source partitions (the worker's); taking over as the aggregator restores the global
    counts and windows but must not drop them, or the lag loses those partitions until new records come."""
    from monitor.baseline import Baseline
    from monitor.daemon import Daemon

    _, config = write_setup(tmp_path, car_loan(seed=1), window={"duration": "10s"}, cluster={"enabled": True},
                            kafka={"bootstrap_servers": "k:9092", "topic": "t", "group_id": "g"})
    daemon = Daemon(config, Baseline.load(config.baseline))
    cluster = daemon.cluster
    cluster._consumer = _Seeks()
    daemon.pipeline.positions.update({"t:0": 120, "t:2": 75})  # what Daemon._process records per batch
    daemon.pipeline.consumed, daemon.pipeline.late = 500, 2  # ... and the replica's own message counts
    daemon.pipeline.invalid.update({"not_json": 3})
    state = None
    if committed:  # the previous aggregator's last changelog record
        state = json.loads(json.dumps(cluster._snapshot()))
        state["pipeline"]["windows_evaluated"] = 4
    cluster._restore(state)
    assert cluster.active
    assert daemon.pipeline.positions == {"t:0": 120, "t:2": 75}
    # the counters driftmon_messages_consumed_total and _invalid_total: a take-over neither resets nor replaces them
    assert (daemon.pipeline.consumed, daemon.pipeline.late, dict(daemon.pipeline.invalid)) == (500, 2, {"not_json": 3})
    assert cluster._consumer.seeks == [(cluster.partials_topic, 0, None)]
    if committed:
        assert daemon.pipeline.windows_evaluated == 4 and daemon.pipeline.window.index == 4


def test_the_recovery_line_of_a_refused_acl_names_the_whole_resource_and_principal(tmp_path, caplog):
    """The principal is "User:name": the line saying Kafka accepts the transactions again names it whole,
    not cut at its colon."""
    import logging

    from monitor.baseline import Baseline
    from monitor.daemon import Daemon
    from monitor.kafka_client import AuthorizationError, refusal

    _, config = write_setup(tmp_path, car_loan(seed=1), window={"duration": "10s"}, cluster={"enabled": True},
                            kafka={"bootstrap_servers": "k:9092", "topic": "t", "group_id": "g"})
    cluster = Daemon(config, Baseline.load(config.baseline)).cluster
    caplog.set_level(logging.INFO, logger="monitor.cluster")
    for who, kind, name in [("aggregator", "transactional id", cluster.changelog_topic),
                            ("worker:t:1", "transactional id", f"{cluster.join_topic}.1"),
                            ("worker", "group", "g")]:
        line = refusal(config.kafka, kind, name)
        cluster._refuse(who, AuthorizationError(line))
        assert cluster.refused == line
        caplog.clear()
        cluster._accepted(who)
        assert cluster.refused is None
        assert [r.getMessage() for r in caplog.records] == [
            f"Kafka accepts the {who.split(':')[0]}'s transactions again ({kind} '{name}' for principal "
            "User:ANONYMOUS was refused before)"]


def test_a_released_partition_forgets_its_refused_restore_without_a_line(labelled_setup, tmp_path, caplog):
    """A partition released while its restore waits out a refusal's backoff: retrying it is its new owner's
    job, so the refusal and its backoff go, without the line saying Kafka accepts the transactions again; the
    refusals of others stay."""
    import logging
    from types import SimpleNamespace

    import msgspec

    from monitor.cluster import Cluster, _restore_who
    from monitor.kafka_client import AuthorizationError

    _tmp, config, baseline = labelled_setup
    config = msgspec.structs.replace(config, state=msgspec.structs.replace(config.state, dir=str(tmp_path)))
    cluster = Cluster(SimpleNamespace(config=config, baseline=baseline, pipeline=Pipeline(config, baseline),
                                      alerts=SimpleNamespace(state_dict=lambda: {})))
    who = _restore_who("t:1")
    for _ in range(2):
        cluster._refuse(who, AuthorizationError("the restore's id was refused"))
    cluster._refuse("aggregator", AuthorizationError("the aggregator's id was refused"))
    assert cluster._waiting(who) and cluster._backoff[who] == 2.0
    caplog.set_level(logging.INFO, logger="monitor.cluster")
    caplog.clear()
    cluster.release(["l:1"])  # the label partition's key: its prediction partition's pair
    assert caplog.records == []
    assert not cluster._waiting(who) and who not in cluster._backoff
    assert cluster.refusals == {"aggregator": "the aggregator's id was refused"} and cluster._waiting("aggregator")
    cluster._refuse(who, AuthorizationError("the restore's id was refused"))  # taken again later: a fresh backoff
    assert cluster._backoff[who] == 1.0


class _HeldSource:
    """The source, as far as restores use it: the partitions it holds (cleared on a revocation, before the
    callback), and the held partitions it resumes."""

    def __init__(self, keys):
        from kafka import TopicPartition

        self.assigned = frozenset(TopicPartition(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])) for k in keys)
        self.resumed = {}

    def resume_held(self, positions) -> bool:
        self.resumed.update(positions)
        return True


class _FenceLog(_Log):
    """An empty changelog partition whose fence runs ``fence_hook(partition)`` first (a broker's answer)."""

    def __init__(self, key, fence_hook):
        super().__init__([])
        self.key, self.fence_hook = key, fence_hook

    def fence(self):
        self.fence_hook(self.key)
        super().fence()


@pytest.fixture
def restoring(labelled_setup, tmp_path):
    """A scale-out daemon with labels (no broker): its Cluster restoring partitions through ``_FenceLog``s; set
    ``cluster.fence_hook``. Its source holds partitions 0-5 of both topics."""
    import msgspec

    from monitor.daemon import Daemon

    _tmp, config, baseline = labelled_setup
    config = msgspec.structs.replace(config, state=msgspec.structs.replace(config.state, dir=str(tmp_path / "state")))
    daemon = Daemon(config, baseline)
    cluster = daemon.cluster
    cluster.fence_hook = lambda key: None
    cluster.fence_logs = {}
    cluster._partition_log = lambda key: cluster.fence_logs.setdefault(
        key, _FenceLog(key, lambda k: cluster.fence_hook(k)))
    cluster.source = _HeldSource([f"{t}:{p}" for t in "tl" for p in range(6)])
    yield cluster
    cluster.close()
    daemon.shutdown(quiet=True)


def _restore_all(cluster, deadline_s: float = 60.0) -> None:
    """The consuming thread's restore slices (its polls left out) until no restore is left."""
    import time

    deadline = time.monotonic() + deadline_s
    while cluster.restoring_work and time.monotonic() < deadline:
        cluster.restore_step(cluster.source, 0.1)
        time.sleep(0.01)
    assert not cluster.restoring_work, cluster.status()


def test_the_fences_of_the_partitions_being_restored_run_together(restoring):
    """Six partitions assigned at once, their changelogs empty: the fence (init_transactions, about 1 s with
    confluent-kafka) is most of each restore, and they ran one after another on the consuming thread (6 s at
    start-up). Each fence here returns only once all six are in flight: before, the first one waited for the
    others for ever (the barrier broke, the restore failed and the replica rejoined)."""
    import threading

    cluster = restoring
    barrier = threading.Barrier(6, timeout=30)
    cluster.fence_hook = lambda key: barrier.wait()
    for p in range(6):
        cluster.begin_restore(f"t:{p}")
    _restore_all(cluster)
    assert not cluster.rejoin and not barrier.broken
    assert sorted(cluster.worker.staged) == [f"t:{p}" for p in range(6)]
    assert all(cluster.logs[f"t:{p}"] is cluster.fence_logs[f"t:{p}"] for p in range(6))  # one id per partition
    assert set(cluster.source.resumed) == {f"{t}:{p}" for t in "tl" for p in range(6)}


def test_no_fence_starts_after_a_revocation_and_the_revocation_waits_for_one_in_flight(restoring):
    """A fence after its partition went to another replica would fence the new owner. The source clears what it
    holds before the revocation callback (Cluster.before_revoke): no fence starts then, and the callback returns
    only once the fence in flight has ended; assigned again, the partition's restore goes on; leaving the group,
    none starts either."""
    import threading

    cluster = restoring
    entered, release, order = threading.Event(), threading.Event(), []

    def hook(key):
        order.append(f"fence {key}")
        if key == "t:0":
            entered.set()
            release.wait(30)

    cluster.fence_hook = hook
    held = cluster.source.assigned
    cluster.begin_restore("t:0")
    cluster.restore_step(cluster.source, 0.1)
    assert entered.wait(30)
    cluster.source.assigned = frozenset()  # revoked (KafkaSource.on_revoked, ConfluentSource._on_revoke)
    revoking = threading.Thread(target=lambda: (cluster.before_revoke(), order.append("revoked")))
    revoking.start()
    cluster.begin_restore("t:1")
    for _ in range(5):
        cluster.restore_step(cluster.source, 0.1)
    revoking.join(0.5)
    assert revoking.is_alive()  # waits for the fence of t:0
    release.set()
    revoking.join(30)
    assert order == ["fence t:0", "revoked"]
    for _ in range(5):
        cluster.restore_step(cluster.source, 0.1)
    assert order == ["fence t:0", "revoked"]  # t:0 is read meanwhile (installed: a partition that stays goes on)
    assert [(r["partition"], r["phase"]) for r in cluster.status()["restoring_partitions"]] == [("t:1", "fence")]
    cluster.source.assigned = held  # both assigned again: t:0 goes on (fenced already), t:1 is fenced now
    _restore_all(cluster)
    assert order == ["fence t:0", "revoked", "fence t:1"]
    assert sorted(cluster.worker.staged) == ["t:0", "t:1"] and not cluster.rejoin
    cluster.begin_restore("t:2")
    cluster.leave(1.0)  # Daemon._rejoin and shutdown, before the source leaves the group
    for _ in range(5):
        cluster.restore_step(cluster.source, 0.1)
    assert order == ["fence t:0", "revoked", "fence t:1"]


def test_a_refused_fence_on_the_pool_stays_held_and_is_retried_after_its_backoff(restoring):
    """A fence the broker refuses (a missing ACL on the partition's transactional id) raises on the fence pool:
    the partition stays restoring (held), the refusal is on /readyz, and no rejoin; the other partitions are
    restored meanwhile, and once the backoff is over the fence is tried again and the partition restored."""
    from monitor.kafka_client import AuthorizationError

    cluster = restoring
    refused = []

    def hook(key):
        if key == "t:3" and not refused:
            refused.append(key)
            raise AuthorizationError(f"Kafka refused transactional id '{cluster.join_topic}.3'")

    cluster.fence_hook = hook
    for p in range(6):
        cluster.begin_restore(f"t:{p}")
    for _ in range(200):
        cluster.restore_step(cluster.source, 0.1)
        if cluster.restoring_partitions == ["t:3"] and refused:
            break
    assert cluster.restoring_partitions == ["t:3"] and refused == ["t:3"]
    assert cluster.refused.startswith("Kafka refused transactional id") and not cluster.rejoin
    assert cluster.restore_poll_ms == 50  # waiting out the backoff: polls with a timeout
    cluster._retry_at["worker:t:3"] = 0.0  # the backoff is over
    _restore_all(cluster)
    assert sorted(cluster.worker.staged) == [f"t:{p}" for p in range(6)]
    assert cluster.refused is None and not cluster.rejoin
