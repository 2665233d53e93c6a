"""How long a worker takes to restore one partition's join changelog (scale-out with labels), by its size.

A partition new to a replica is restored on the consuming thread, in slices between polls, while the
partition is paused (``monitor.cluster._Restore``): the member keeps its place in the group, and the restore
time is how long that partition waits before it is processed again (docs/DESIGN.md, "Scale-out", "Restore
time"). The slices only interleave polls; the work, timed here step by step, is the same.

On a real Apache Kafka broker (tests/brokers.py), per size N: one changelog partition holding N join
entries (real entries: a labelled worker's pending predictions, written by ``PartitionLog.write`` in
transactions of 20,000 as cuts write them) and a state record; then, timed as a restore runs them,
``PartitionLog.fence`` (init_transactions), ``PartitionLog.read`` (the partition to its end,
read_committed) and ``Worker.restore`` (the entries into the partition's RocksDB store).

    PYTHONPATH=$PWD python -m bench.restore [--sizes 10000,100000,300000]
"""

from __future__ import annotations

import argparse
import json
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


def run(sizes: list[int]) -> list[dict]:
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
            reader = PartitionLog(config.kafka, topic, 0, "g")
            t0 = time.perf_counter()
            reader.fence()
            t1 = time.perf_counter()
            got, last = reader.read()
            t2 = time.perf_counter()
            worker.restore("t:0", got, last)
            t3 = time.perf_counter()
            reader.close()
            worker.release(["t:0"])
            assert len(got) == n, (len(got), n)
            size = sum(len(_encode(entries[i % len(entries)])) + 17 for i in range(1000)) / 1000  # + the key
            rows.append({"pending": n, "entry_bytes": round(size), "fence_s": round(t1 - t0, 3), "read_s": round(t2 - t1, 3),
                         "store_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3),
                         "entries_per_s": round(n / (t3 - t0))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,300000")
    args = parser.parse_args(argv)
    run([int(s) for s in args.sizes.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
