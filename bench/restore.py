"""How long a worker takes to restore one partition's join changelog (scale-out with labels), by its size.

A partition new to a replica is restored on the consuming thread, in slices between polls, while the
partition is paused (``monitor.cluster._Restore``): the member keeps its place in the group, and the restore
time is how long that partition waits before it is processed again (docs/DESIGN.md, "Scale-out", "Restore
time"). The slices only interleave polls; the work, timed here step by step, is the same.

On a real Apache Kafka broker (tests/brokers.py), per size N: one changelog partition holding N join
entries (real entries: a labelled worker's pending predictions, written by ``PartitionLog.write`` in
transactions of 20,000 as cuts write them) and a state record; then the restore as the consuming thread runs
it (``monitor.cluster._Restore``, in one slice): the fence (init_transactions), then the read of the
partition to its end (read_committed) with its entries applied to the partition's RocksDB store, and the
install (``Worker.load``). Besides the times, the process's peak RSS during the restore (VmHWM, reset by
``/proc/self/clear_refs`` just before it) and its RSS when it started: what the restore holds in memory.

    PYTHONPATH=$PWD python -m bench.restore [--sizes 10000,100000,300000]
    PYTHONPATH=$PWD python -m bench.run --only restore    # 100,000 and 1,000,000, into bench/RESULTS.md

The baseline, measured after it in the same process: the restore before it applied the log chunk by chunk
(:func:`read_whole` collects the whole partition in a dict, :func:`restore_whole` then puts it into the
store; both kept here, the daemon has only the chunked restore).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import sys
import tempfile
import time

START = 1.7e9


def _setup(tmp: str, bootstrap: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled

    pq.write_table(pa.table(labelled(20_000, seed=1)), os.path.join(tmp, "train.parquet"))
    tree = labelled_config(window={"duration": "10s"},
                           labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp"},
                           kafka={"bootstrap_servers": bootstrap, "topic": "t", "group_id": "g", "labels_topic": "l"},
                           cluster={"enabled": True})
    tree["baseline"] = os.path.join(tmp, "baseline.json")
    with open(os.path.join(tmp, "c.yaml"), "w") as fh:
        yaml.safe_dump(tree, fh)
    config = load_config(os.path.join(tmp, "c.yaml"))
    build_baseline(config, os.path.join(tmp, "train.parquet")).save(config.baseline)
    return config, Baseline.load(config.baseline)


def _template(worker) -> tuple[list, dict]:
    """Real pending entries and a state record: a partition's predictions without their labels, one cut."""
    from tests.labelled import labelled, messages

    cols = labelled(2000, seed=3, start=START + 0.01, rate=2000 / 9.9, id_prefix="p")
    worker.process("t:0", messages(cols, with_label=False), None, list(range(2000)))
    _partials, changes, state, _offsets = worker.cut("t:0")
    worker.release(["t:0"])
    return [v for v in changes.values() if v is not None], state


def _status(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5); returns it, in KiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what an earlier restore freed goes back to the system first
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status("VmRSS")


def _chunked(worker, config, topic: str, n: int) -> dict:
    """The restore as the consuming thread runs it (in one slice): fence, read and apply chunk by chunk, install."""
    from monitor.cluster import _Restore
    from monitor.join_changelog import PartitionLog

    restore = _Restore("t:0", PartitionLog(config.kafka, topic, 0, "g"))
    rss_start = _reset_peak()
    t0 = time.perf_counter()
    restore.log.fence()  # as the fence pool runs it (monitor.cluster.Cluster._fence)
    t1 = time.perf_counter()
    assert restore.advance(worker, math.inf)
    part = worker.load("t:0", restore.part, restore.state)
    t2 = time.perf_counter()
    peak = _status("VmHWM")
    assert restore.pending == part.tracker.join.pending == n, (restore.pending, n)
    restore.close()  # the producer and the store (installed, it would stay open)
    return {"fence_s": round(t1 - t0, 3), "read_and_fill_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
            "entries_per_s": round(n / (t2 - t0)), "rss_start_mib": round(rss_start / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1), "peak_growth_mib": round((peak - rss_start) / 1024, 1)}


def read_whole(records) -> tuple[dict, dict | None]:
    """Changelog records applied to one dict: (prediction id -> entry, the last state record or None)."""
    from monitor.join_changelog import STATE_KEY, _decode

    entries: dict = {}
    state = None
    for record in records:
        if record.key == STATE_KEY:
            state = json.loads(record.value)
        elif record.value is None:
            entries.pop(record.key.decode(), None)
        else:
            entries[record.key.decode()] = _decode(record.value)
    return entries, state


def restore_whole(worker, key: str, entries: dict, state: dict | None):
    """A partition as the changelog's last committed cut left it, its store filled from ``entries``."""
    from monitor.cluster import RESTORE_CHUNK

    part = worker.new_part(key)
    items = list(entries.items())
    for i in range(0, len(items), RESTORE_CHUNK):
        worker.fill(part, dict(items[i:i + RESTORE_CHUNK]))
    return worker.load(key, part, state)


def _whole(worker, config, topic: str, n: int) -> dict:
    """The restore before it was chunked: fence, read the partition whole into a dict, put it into the store."""
    from monitor.join_changelog import PartitionLog

    log = PartitionLog(config.kafka, topic, 0, "g")
    rss_start = _reset_peak()
    t0 = time.perf_counter()
    log.fence()
    t1 = time.perf_counter()
    entries, state = read_whole(log.records())
    part = restore_whole(worker, "t:0", entries, state)
    t2 = time.perf_counter()
    peak = _status("VmHWM")
    assert len(entries) == part.tracker.join.pending == n, (len(entries), n)
    del entries
    part.tracker.join.close()
    log.close()
    return {"total_s": round(t2 - t0, 3), "read_and_fill_s": round(t2 - t1, 3),
            "peak_rss_mib": round(peak / 1024, 1), "peak_growth_mib": round((peak - rss_start) / 1024, 1)}


def run(quick: bool = False) -> dict:
    """For ``python -m bench.run --only restore`` (not in the default run: it takes minutes)."""
    sizes = [10_000] if quick else [100_000, 1_000_000]
    return {"rows": measure(sizes)}


def measure(sizes: list[int]) -> list[dict]:
    from monitor.cluster import Worker
    from monitor.join_changelog import PartitionLog, _encode
    from tests.brokers import KafkaBroker

    rows = []
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker() as broker:
        config, baseline = _setup(tmp, broker.bootstrap)
        worker = Worker(config, baseline, os.path.join(tmp, "join"))
        entries, state = _template(worker)
        for n in sizes:
            topic = broker.create_topic(f"join-{n}", partitions=1)
            writer = PartitionLog(config.kafka, topic, 0, "g")
            writer.fence()
            for lo in range(0, n, 20_000):
                changes = {f"id-{i:012d}": entries[i % len(entries)] for i in range(lo, min(n, lo + 20_000))}
                writer.write(f"{topic}-partials", b"m", [], changes, state, {}, timeout_s=60.0)
            writer.close()
            row = {"pending": n, **_chunked(worker, config, topic, n)}
            # the baseline, after (its garbage must not raise the other's peak): the restore before it was
            # chunked, the whole partition read into a dict and then put into the store
            row.update({f"whole_{k}": v for k, v in _whole(worker, config, topic, n).items()})
            size = sum(len(_encode(entries[i % len(entries)])) + 17 for i in range(1000)) / 1000  # + the key
            row["entry_bytes"] = round(size)
            row["peak_growth_ratio"] = round(row["peak_growth_mib"] / row["whole_peak_growth_mib"], 3)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,300000")
    args = parser.parse_args(argv)
    measure([int(s) for s in args.sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
