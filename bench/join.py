"""Figure 6: pending label joins on disk (RocksStore, the daemon's) against the join before the store.

The reference is the label join as it was before pending entries moved into a store: ``monitor/join.py`` at
commit 69a46bb^, kept verbatim in :mod:`bench.join_before` (two OrderedDicts, a Python loop per message,
the whole join in every checkpoint). The target ("the join's per-message cost within 20% of today's") is
against it. Today's :class:`~monitor.join.LabelJoin` with its in-memory store
(:class:`~monitor.join.MemoryStore`) is slower than that join (about 0.3 us more per labelled pair, the
join alone); the throughput rounds measure it too, as a second, labelled reference.

Measurements, each in a child process of its own (``python -m bench.join child ...``):

- **size**: a real :class:`monitor.daemon.Daemon` (config with ``kafka.labels_topic``; its Kafka
  consumer is not started) is fed predictions whose labels have not come, through
  ``daemon.pipeline.process``; at each pending size it reports VmRSS and the time of
  ``daemon.checkpoint()`` (encode + write + fsync, median of 3) and the checkpoint's size. Once with
  the on-disk store up to 10,000,000 pending, once with the join before the store (swapped in for the
  daemon's) up to 1,000,000.
- **throughput**: three pipelines in one process, each holding ``P`` pending predictions: the join before
  the store, MemoryStore, RocksStore; rounds alternate between them (ABBA: in turn, reversed every other
  round). A round feeds ``M`` new predictions and the ``M``
  labels of the oldest waiting ones (so the pending count stays at ``P``): the rate is labelled
  predictions (one prediction message + one label message) per second through ``Pipeline.process`` and
  ``Pipeline.process_labels``; the same rounds also time the join alone (``LabelJoin`` calls with
  prebuilt rows). Beside the wall-clock rates, the CPU time of the consuming thread: on a shared machine
  it varies far less from round to round, but it leaves out RocksDB's background compactions (which a
  spare core absorbs).
- **random ids**: the same at ``P`` with ids spread over the key space as UUIDs are (``--ids random``);
  the sequential ids above are neighbours in the store, so their lookups share cached blocks.
- **throughput at the largest size**: the same rounds with 10,000,000 predictions waiting on disk
  against the two in-memory pipelines at 1,000,000 (a dict's cost per message hardly depends on its size,
  and 10,000,000 in memory would take about 7 GiB each), interleaved in one process as above.
- **churn**: the throughput rounds (the same three pipelines) run long enough (200,000 pending, 2,600,000
  pairs per store) that the
  on-disk store's filter of stored ids is rebuilt several times inside them (its least capacity set to 0,
  so it rebuilds every 3x the count of new predictions, as a store above 524,288 pending does); the ratio
  of the totals, the number of rebuilds (``RocksStore.rebuilds``) and the time they took.
- **checkpointed**: two daemon objects, the join before the store and the on-disk one, with their
  checkpoints counted in (MemoryStore is left out there: a third daemon would add minutes).
- the on-disk store's pair rate at 10,000,000 pending right after it was filled, from the end of the
  size run (compactions of the fill still running).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench.join_before import LabelJoin as BeforeJoin

START = 1.7e9
RATE = 115.0  # predictions per second of event time: 10,000,000 pending is a day
BATCH = 2000
#: The pipelines of the throughput rounds: the join before the store (bench/join_before.py, the target's
#: reference), today's LabelJoin with its in-memory store (MemoryStore, a second reference) and on disk (RocksStore).
STORES = ("before", "memory", "disk")
#: The on-disk join's per-message cost may be at most 20% above the join's before the store (bench/join_before.py).
TARGET_RATIO = 1 / 1.2
TARGET_RSS_MIB = 300.0


#: "sequential" ids (p-0, p-1, ...: neighbours in the store's key order, so lookups share cached blocks) or
#: "random" ones (16 hex digits of a bijective hash, as UUIDs spread: most lookups miss the block cache).
IDS = "sequential"


def _id(i: int) -> str:
    if IDS == "random":
        return "%016x" % ((i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    return f"p-{i}"


def _prediction(i: int) -> bytes:
    return (b'{"id":"%s","timestamp":%.3f,"x":%.4f,"group":"%s","y_pred":%d,"y_pred_proba":%.4f}'
            % (_id(i).encode(), START + i / RATE, (i % 997) / 997 - 0.5, b"B" if i % 10 == 0 else b"A", i % 2,
               0.3 + (i % 7) / 10))


def _label(i: int) -> bytes:
    return b'{"id":"%s","timestamp":%.3f,"y":%d}' % (_id(i).encode(), START + i / RATE + 86400.0, (i // 3) % 2)


def _setup(tmp: str) -> str:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import build_baseline
    from monitor.config import load_config

    rng = np.random.default_rng(1)
    n = 20_000
    score = rng.random(n)
    pq.write_table(pa.table({"id": [f"t-{i}" for i in range(n)], "timestamp": (START - 1e6 + np.arange(n)).tolist(),
                             "x": rng.normal(0, 0.3, n), "group": np.where(rng.random(n) < 0.1, "B", "A"),
                             "y_pred": (score > 0.5).astype(int), "y_pred_proba": score,
                             "y": (rng.random(n) < score).astype(int)}), os.path.join(tmp, "train.parquet"))
    tree = {
        "model": "lender",
        "schema": {"id": {"path": "id"}, "timestamp": {"path": "timestamp"},
                   "features": [{"name": "x", "type": "numeric"}],
                   "prediction": {"name": "y_pred", "type": "categorical"}, "score": {"name": "y_pred_proba"},
                   "label": {"name": "y", "type": "categorical"}},
        "baseline": os.path.join(tmp, "baseline.json"),
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "topic": "p", "labels_topic": "l", "group_id": "g"},
        "window": {"size": 5000},
        "labels": {"window": 5000, "positive": "1", "ttl": "30d", "timestamp_path": "timestamp",
                   "max_pending": 20_000_000},
        "segments": [{"name": "group"}],
        "state": {"dir": os.path.join(tmp, "state"), "checkpoint_interval": "1h"},
    }
    path = os.path.join(tmp, "driftmon.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(tree, fh)
    config = load_config(path)
    build_baseline(config, os.path.join(tmp, "train.parquet")).save(config.baseline)
    return path


def _child(*args: str) -> dict:
    from bench.common import REPO

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "bench.join", "child", *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"join child {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    from bench.common import log, scratch_dir

    tmp = scratch_dir("driftmon-bench-join-")
    config = _setup(tmp)
    disk_sizes = [0, 50_000, 100_000, 200_000] if quick else [0, 1_000_000, 2_000_000, 5_000_000, 10_000_000]
    memory_sizes = [0, 50_000, 100_000] if quick else [0, 250_000, 500_000, 1_000_000]
    pending = 50_000 if quick else 1_000_000
    per_round = 10_000 if quick else 50_000
    rounds = 2 if quick else 5
    log(f"join: pending size vs RSS and checkpoint time, on disk up to {disk_sizes[-1]:,}")
    disk = _child("size", "--config", config, "--store", "disk", "--dir", os.path.join(tmp, "disk"),
                  "--sizes", ",".join(map(str, disk_sizes)), "--pairs", str(per_round))
    shutil.rmtree(os.path.join(tmp, "disk"), ignore_errors=True)  # (gigabytes at the largest size)
    log(f"join: the join before the store (in memory) up to {memory_sizes[-1]:,}")
    before = _child("size", "--config", config, "--store", "before", "--dir", os.path.join(tmp, "before"),
                    "--sizes", ",".join(map(str, memory_sizes)), "--pairs", str(per_round))
    log(f"join: throughput at {pending:,} pending, {rounds} rounds of {per_round:,} labelled predictions")
    tp = _child("throughput", "--config", config, "--dir", os.path.join(tmp, "tp"), "--pending", str(pending),
                "--per-round", str(per_round), "--rounds", str(rounds))
    log("join: the same with random ids")
    tp_random = _child("throughput", "--config", config, "--dir", os.path.join(tmp, "tp-random"), "--pending",
                       str(pending), "--per-round", str(per_round), "--rounds", str(rounds), "--ids", "random")
    largest = disk_sizes[-1]
    log(f"join: throughput at {largest:,} pending on disk vs {pending:,} in memory, {rounds} rounds")
    tp_largest = _child("throughput", "--config", config, "--dir", os.path.join(tmp, "tp-largest"),
                        "--pending", str(largest), "--memory-pending", str(pending), "--per-round", str(per_round),
                        "--rounds", str(rounds))
    log(f"join: with the daemon's checkpoints (every 10 s, and every 1 s), {pending:,} pending")
    cp = _child("checkpointed", "--config", config, "--dir", os.path.join(tmp, "cp"), "--pending", str(pending),
                "--every", "10,1", "--seconds", "5" if quick else "30", "--rounds", "2")
    churn_pending, churn_round = (20_000, 10_000) if quick else (200_000, 100_000)
    churn_rounds = 8 if quick else 26
    log(f"join: the id filter's rebuilds in the rounds, {churn_pending:,} pending, {churn_rounds} rounds of "
        f"{churn_round:,}")
    churn = _child("churn", "--config", config, "--dir", os.path.join(tmp, "churn"), "--pending", str(churn_pending),
                   "--per-round", str(churn_round), "--rounds", str(churn_rounds), "--filter-min", "0")
    empty = disk["samples"][0]["checkpoint_s"]
    largest_sample = disk["samples"][-1]
    before_largest = before["samples"][-1]
    out = {
        "what": "pending label joins: RSS and checkpoint time by pending size, and labelled-prediction throughput, "
                "on disk (RocksStore) vs the join before the store (bench/join_before.py, commit 69a46bb^), "
                "and vs today's join in memory (MemoryStore) in the throughput rounds",
        "sizes": {"disk": disk["samples"], "before": before["samples"]},
        "rss_mib_at_largest": largest_sample["rss_mib"],
        "largest_pending": largest_sample["pending"],
        "peak_rss_mib": disk["peak_mib"],
        "checkpoint_s_empty": empty,
        "checkpoint_s_at_largest": largest_sample["checkpoint_s"],
        "checkpoint_ratio_largest_over_empty": largest_sample["checkpoint_s"] / empty,
        "before_rss_mib_at_largest": before_largest["rss_mib"],
        "before_checkpoint_s_at_largest": before_largest["checkpoint_s"],
        "before_largest_pending": before_largest["pending"],
        "disk_pairs_per_s_at_largest": disk["pairs_per_s"],
        "throughput": {"pending": pending, **_summary(tp, per_round, rounds)},
        "throughput_random_ids": {"pending": pending, **_summary(tp_random, per_round, rounds)},
        "throughput_largest": {"pending": largest, "memory_pending": pending, **_summary(tp_largest, per_round, rounds)},
        "throughput_checkpointed": {
            "pending": pending, "seconds_per_round": cp["seconds_per_round"],
            "every": {every: {"disk_pairs_per_s": statistics.median(e["disk_rates"]),
                              "before_pairs_per_s": statistics.median(e["before_rates"]),
                              "ratio": _ratio(e, "rates"),
                              "disk_checkpoint_s": statistics.median([x for x in e["disk_checkpoint_s"] if x] or [0]),
                              "before_checkpoint_s": statistics.median([x for x in e["before_checkpoint_s"] if x] or [0]),
                              "detail": e}
                      for every, e in cp["every"].items()},
        },
        "throughput_churn": churn,
        "disk_bytes_at_largest": largest_sample["store_bytes"],
        "target": {"rss_mib": TARGET_RSS_MIB, "checkpoint_ratio": 2.0, "throughput_ratio": TARGET_RATIO,
                   "reference": "the join before the store (bench/join_before.py)"},
    }
    out["met"] = (disk["peak_mib"] < TARGET_RSS_MIB and out["checkpoint_ratio_largest_over_empty"] < 2.0
                  and out["throughput"]["ratio"] >= TARGET_RATIO)
    return out


def _summary(tp: dict, per_round: int, rounds: int) -> dict:
    """A throughput child's medians; ``ratio`` (the target's) is on disk over the join before the store,
    ``memory_ratio`` on disk over MemoryStore, each the median of the per-round ratios."""
    out = {"per_round": per_round, "rounds": rounds}
    for name in STORES:
        out[f"{name}_pairs_per_s"] = statistics.median(tp[f"{name}_rates"])
        out[f"join_alone_{name}_per_s"] = statistics.median(tp[f"{name}_join_rates"])
    for reference, prefix in (("before", ""), ("memory", "memory_")):
        out[f"{prefix}ratio"] = _ratio(tp, "rates", reference)
        out[f"{prefix}cpu_ratio"] = _ratio(tp, "cpu_rates", reference)
        out[f"{prefix}join_alone_ratio"] = _ratio(tp, "join_rates", reference)
    out["ratios"] = [d / b for d, b in zip(tp["disk_rates"], tp["before_rates"])]
    out["detail"] = tp
    return out


def _ratio(tp: dict, what: str, reference: str = "before") -> float:
    """The median of the per-round ratios, on disk over ``reference`` (the join before the store, or MemoryStore)."""
    return statistics.median([d / m for d, m in zip(tp[f"disk_{what}"], tp[f"{reference}_{what}"])])


# ---- children ---------------------------------------------------------------------------------------

def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _feed_predictions(pipeline, start: int, stop: int) -> None:
    for i in range(start, stop, BATCH):
        pipeline.process([_prediction(j) for j in range(i, min(stop, i + BATCH))])


def _pairs(pipeline, first_label: int, first_new: int, n: int, cpu_seconds: list | None = None) -> float:
    """Feed n new predictions and the labels of n waiting ones; seconds (messages built beforehand).

    ``cpu_seconds`` gets the CPU time of the calling thread (RocksDB's background compactions not included)."""
    preds = [[_prediction(j) for j in range(i, min(first_new + n, i + BATCH))] for i in range(first_new, first_new + n, BATCH)]
    labels = [[_label(j) for j in range(i, min(first_label + n, i + BATCH))]
              for i in range(first_label, first_label + n, BATCH)]
    started, cpu = time.perf_counter(), time.thread_time()
    for p, lab in zip(preds, labels):
        pipeline.process(p)
        pipeline.process_labels(lab)
    pipeline.take_performance()
    if cpu_seconds is not None:
        cpu_seconds.append(time.thread_time() - cpu)
    return time.perf_counter() - started


class _DaemonBefore(BeforeJoin):
    """The join before the store in a daemon object: :meth:`Daemon.checkpoint` also calls ``durable()`` and
    :meth:`Daemon.close` ``close()``, which it did not have (nothing to release: no-ops)."""

    def durable(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


def child_size(args) -> None:
    from bench.common import proc_status
    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.daemon import Daemon, streaming_gc

    config = load_config(args.config)
    config.state.dir = args.dir
    daemon = Daemon(config, Baseline.load(config.baseline))
    if args.store == "before":  # the join as it was before the store: dicts, whole in every checkpoint
        _before(daemon.pipeline, _DaemonBefore)
    join = daemon.pipeline.tracker.join
    samples, done = [], 0
    with streaming_gc():
        for size in map(int, args.sizes.split(",")):
            _feed_predictions(daemon.pipeline, done, size)
            done = size
            times = []
            for _ in range(3):
                daemon._changed = True
                started = time.perf_counter()
                assert daemon.checkpoint(force=True)
                times.append(time.perf_counter() - started)
            status = proc_status()
            samples.append({"pending": join.pending, "rss_mib": status["VmRSS"], "checkpoint_s": statistics.median(times),
                            "checkpoint_bytes": os.path.getsize(daemon.store.checkpoint_path),
                            "store_bytes": _dir_bytes(os.path.join(args.dir, "labels"))})
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
        pairs = int(args.pairs)
        seconds = _pairs(daemon.pipeline, 0, done, pairs)
    assert join.pending == done, (join.pending, done)
    print(json.dumps({"samples": samples, "peak_mib": proc_status()["VmHWM"], "pairs_per_s": pairs / seconds}))


def _before(pipeline, join_class=BeforeJoin) -> None:
    """Give ``pipeline`` the join as it was before the store (bench/join_before.py, commit 69a46bb^); a daemon
    object's pipeline gets :class:`_DaemonBefore`."""
    labels = pipeline.config.labels
    pipeline.tracker.join.close()
    pipeline.tracker.join = join_class(labels.ttl_seconds, labels.max_pending)


def _pipelines(config, baseline, names, path: str) -> dict:
    """One pipeline per name: "before" (the pre-store join), "memory" (MemoryStore), "disk" (a RocksStore at path)."""
    from monitor.pipeline import Pipeline

    pipelines = {}
    for name in names:
        p = pipelines[name] = Pipeline(config, baseline)
        if name == "before":
            _before(p)
        elif name == "disk":
            p.tracker.join.open(path)
    return pipelines


def _order(r: int, names: tuple) -> list:
    """ABBA: the stores in turn, reversed every other round."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def child_throughput(args) -> None:
    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.daemon import streaming_gc

    config = load_config(args.config)
    baseline = Baseline.load(config.baseline)
    per_round = int(args.per_round)
    names = STORES
    reference = int(args.memory_pending or args.pending)
    sizes = {"before": reference, "memory": reference, "disk": int(args.pending)}
    pipelines = _pipelines(config, baseline, names, os.path.join(args.dir, "labels"))
    out = {f"{name}_{what}": [] for name in names for what in ("rates", "join_rates", "cpu_rates")}
    out.update({f"{name}_pending": sizes[name] for name in names})
    cursor = dict.fromkeys(names, 0)  # the oldest waiting prediction
    with streaming_gc():
        for name, p in pipelines.items():
            _feed_predictions(p, 0, sizes[name])
        for r in range(int(args.rounds)):
            for name in _order(r, names):
                p, pending = pipelines[name], sizes[name]
                first = cursor[name]
                cpu = []
                seconds = _pairs(p, first, pending + first, per_round, cpu)
                cursor[name] += per_round
                out[f"{name}_rates"].append(per_round / seconds)
                out[f"{name}_cpu_rates"].append(per_round / cpu[0])
                # the join alone: the same kind of work with prebuilt rows
                join, first = p.tracker.join, cursor[name]
                ids = [_id(j) for j in range(pending + first, pending + first + per_round)]
                times = [START + j / RATE for j in range(pending + first, pending + first + per_round)]
                rows = [[j % 2, 0.5, t, "A"] for j, t in zip(range(per_round), times)]
                old = [_id(j) for j in range(first, first + per_round)]
                started = time.perf_counter()
                for i in range(0, per_round, BATCH):
                    join.add_predictions(ids[i:i + BATCH], times[i:i + BATCH], rows[i:i + BATCH])
                    join.add_labels(old[i:i + BATCH], [t + 86400.0 for t in times[i:i + BATCH]], ["1"] * len(old[i:i + BATCH]))
                out[f"{name}_join_rates"].append(per_round / (time.perf_counter() - started))
                cursor[name] += per_round
                print(f"round {r} {name}: {out[f'{name}_rates'][-1]:,.0f} pairs/s, join alone "
                      f"{out[f'{name}_join_rates'][-1]:,.0f}/s, pending {join.pending:,}", file=sys.stderr, flush=True)
    pipelines["disk"].tracker.join.close()
    print(json.dumps(out))


def child_churn(args) -> None:
    """The throughput rounds run long enough that the on-disk store's filter of stored ids is rebuilt several
    times inside them (``RocksStore._rebuild``: once 4x the count at its last build was added), so the ratio
    includes the rebuilds. ``--filter-min`` replaces the filter's least capacity (the daemon's: 2,097,152
    ids) so that a small store rebuilds at the cadence a large one has (every 3x its count of new
    predictions), and the run stays short. The ratio is of the totals (all pairs over all seconds): a median
    of rounds would leave out the rounds a rebuild fell in."""
    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.daemon import streaming_gc

    config = load_config(args.config)
    baseline = Baseline.load(config.baseline)
    per_round, pending = int(args.per_round), int(args.pending)
    names = STORES
    pipelines = _pipelines(config, baseline, names, os.path.join(args.dir, "labels"))
    store = pipelines["disk"].tracker.join.store
    if args.filter_min is not None:
        store.filter_min = int(args.filter_min)
    spent = {"wall": 0.0, "cpu": 0.0}
    rebuild = store._rebuild

    def timed_rebuild() -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        rebuild()
        spent["wall"] += time.perf_counter() - wall
        spent["cpu"] += time.thread_time() - cpu

    store._rebuild = timed_rebuild
    out = {"pending": pending, "per_round": per_round, "rounds": int(args.rounds),
           "filter_min": store.filter_min, "disk_rebuilds_per_round": [],
           **{f"{name}_{what}": [] for name in names for what in ("rates", "cpu_rates")}}
    seconds = dict.fromkeys(names, 0.0)
    cpu_seconds = dict.fromkeys(names, 0.0)
    cursor = dict.fromkeys(names, 0)  # the oldest waiting prediction
    with streaming_gc():
        for p in pipelines.values():
            _feed_predictions(p, 0, pending)
        rebuild()  # the rounds start from a filter built at the steady count (the fill's were of growth)
        rebuilds, spent["wall"], spent["cpu"] = store.rebuilds, 0.0, 0.0
        for r in range(int(args.rounds)):
            for name in _order(r, names):
                before, cpu = store.rebuilds, []
                took = _pairs(pipelines[name], cursor[name], pending + cursor[name], per_round, cpu)
                cursor[name] += per_round
                seconds[name] += took
                cpu_seconds[name] += cpu[0]
                out[f"{name}_rates"].append(per_round / took)
                out[f"{name}_cpu_rates"].append(per_round / cpu[0])
                if name == "disk":
                    out["disk_rebuilds_per_round"].append(store.rebuilds - before)
                print(f"round {r} {name}: {per_round / took:,.0f} pairs/s, pending "
                      f"{pipelines[name].tracker.join.pending:,}, rebuilds {store.rebuilds - rebuilds}",
                      file=sys.stderr, flush=True)
    pairs = per_round * int(args.rounds)
    out.update({
        "pairs_per_store": pairs, "rebuilds": store.rebuilds - rebuilds,
        "rebuild_s": spent["wall"], "rebuild_cpu_s": spent["cpu"],
        **{f"{name}_s": seconds[name] for name in names}, **{f"{name}_cpu_s": cpu_seconds[name] for name in names},
        **{f"{name}_pairs_per_s": pairs / seconds[name] for name in names},
        # against the join before the store (the target's reference), and against MemoryStore
        "ratio": seconds["before"] / seconds["disk"], "cpu_ratio": cpu_seconds["before"] / cpu_seconds["disk"],
        "ratio_without_rebuilds": seconds["before"] / (seconds["disk"] - spent["wall"]),
        "cpu_ratio_without_rebuilds": cpu_seconds["before"] / (cpu_seconds["disk"] - spent["cpu"]),
        "memory_ratio": seconds["memory"] / seconds["disk"], "memory_cpu_ratio": cpu_seconds["memory"] / cpu_seconds["disk"],
        "rebuild_us_per_pair": spent["wall"] / pairs * 1e6,
    })
    out["ratio_median_of_rounds"] = _ratio(out, "rates")
    pipelines["disk"].tracker.join.close()
    print(json.dumps(out))


def child_checkpointed(args) -> None:
    """Two daemon objects (consumer not started), the join before the store and the on-disk one, each holding
    ``--pending`` predictions, fed labelled pairs as a saturated consumer would (a backlog); each takes a
    checkpoint (``Daemon.checkpoint()``, as its loop and scheduler do) whenever ``every`` seconds of its own
    processing time have passed since its last one. The rate counts that checkpoint time in."""
    import copy

    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.daemon import Daemon, streaming_gc

    base = load_config(args.config)
    baseline = Baseline.load(base.baseline)
    pending, seconds = int(args.pending), float(args.seconds)
    daemons = {}
    for name in ("before", "disk"):
        config = copy.deepcopy(base)
        config.state.dir = os.path.join(args.dir, name)
        daemon = Daemon(config, baseline)
        if name == "before":  # the join as it was before the store: dicts, whole in every checkpoint
            _before(daemon.pipeline, _DaemonBefore)
        daemons[name] = daemon
    cursor = dict.fromkeys(daemons, 0)  # the oldest waiting prediction
    out = {"pending": pending, "seconds_per_round": seconds, "every": {}}
    with streaming_gc():
        for name, daemon in daemons.items():
            _feed_predictions(daemon.pipeline, 0, pending)
            assert daemon.checkpoint(force=True)
        for every in map(float, args.every.split(",")):
            rates = {"before": [], "disk": []}
            checkpoints = {"before": [], "disk": []}
            for r in range(int(args.rounds)):
                for name in _order(r, ("before", "disk")):
                    daemon, pairs, busy, since, taken = daemons[name], 0, 0.0, 0.0, []
                    while busy < seconds:
                        first = cursor[name]
                        preds = [_prediction(j) for j in range(pending + first, pending + first + BATCH)]
                        labels = [_label(j) for j in range(first, first + BATCH)]
                        started = time.perf_counter()
                        daemon.pipeline.process(preds)
                        daemon.pipeline.process_labels(labels)
                        elapsed = time.perf_counter() - started
                        if since + elapsed >= every:
                            daemon._changed = True
                            begun = time.perf_counter()
                            assert daemon.checkpoint()
                            taken.append(time.perf_counter() - begun)
                            elapsed = time.perf_counter() - started
                            since = 0.0
                        else:
                            since += elapsed
                        busy += elapsed
                        pairs += BATCH
                        cursor[name] += BATCH
                    rates[name].append(pairs / busy)
                    checkpoints[name].append(statistics.median(taken) if taken else None)
                    print(f"every {every:g} s, round {r} {name}: {pairs / busy:,.0f} pairs/s, {len(taken)} checkpoints "
                          f"({statistics.median(taken) if taken else 0:.3f} s), pending "
                          f"{daemon.pipeline.tracker.join.pending:,}", file=sys.stderr, flush=True)
            out["every"][f"{every:g}"] = {"before_rates": rates["before"], "disk_rates": rates["disk"],
                                          "before_checkpoint_s": checkpoints["before"],
                                          "disk_checkpoint_s": checkpoints["disk"]}
    daemons["disk"].pipeline.tracker.join.close()
    print(json.dumps(out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.join")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child", help="(internal) a measured process")
    c.add_argument("kind", choices=("size", "throughput", "checkpointed", "churn"))
    c.add_argument("--config", required=True)
    c.add_argument("--dir", required=True)
    c.add_argument("--store", choices=("disk", "before"), default="disk")
    c.add_argument("--sizes", default="0")
    c.add_argument("--pairs", default="10000")
    c.add_argument("--pending", default="100000")
    c.add_argument("--memory-pending", default=None,
                   help="pending in the two in-memory pipelines, before the store and MemoryStore (default: --pending)")
    c.add_argument("--per-round", default="10000")
    c.add_argument("--rounds", default="2")
    c.add_argument("--ids", choices=("sequential", "random"), default="sequential")
    c.add_argument("--every", default="10", help="checkpointed: seconds of processing between checkpoints (list)")
    c.add_argument("--seconds", default="20", help="checkpointed: seconds of processing per round")
    c.add_argument("--filter-min", default=None, help="churn: the id filter's least capacity (default: the store's)")
    args = parser.parse_args(argv)
    global IDS
    IDS = args.ids
    {"size": child_size, "throughput": child_throughput, "checkpointed": child_checkpointed,
     "churn": child_churn}[args.kind](args)


if __name__ == "__main__":
    main()
