"""What a restore leaves to a replica's other partitions: their consumption rate while one partition restores.

Scale-out with labels: a partition new to a replica is restored on the consuming thread, a slice at a time
between polls (``monitor.cluster.RESTORE_SLICE_S``, the poll between slices with a timeout of
``RESTORE_POLL_MS``). Its other partitions are read only at those polls, so the slice bounds how fast they
flow meanwhile, and the polls between slices how long the restore takes (docs/DESIGN.md, "Restore time").

On a real Apache Kafka broker (tests/brokers.py), each round runs the real daemon (``driftmon run``, one
replica, 2 partitions, labels) with one setting of the slice and poll timeout, from a fresh group: partition
0's join changelog holds N pending joins (written by ``PartitionLog.write`` as cuts write them), partition
1's is empty. ``busy``: partition 1 holds a backlog of predictions, read while partition 0 restores;
``idle``: it holds nothing. Per round: the restore time (the daemon's own ``restored ... in X s`` line), the
predictions of partition 1 consumed per second while partition 0 was restoring (``/status``
``messages_consumed``, sampled every 0.2 s), and the source assignments (1: the membership was kept).
The two settings alternate in ABBA blocks per mode; each ratio is taken within a pair of adjacent rounds, and
the summary gives the medians.

    PYTHONPATH=$PWD python -m bench.restore_share [--entries 400000] [--backlog 600000] [--client kafka-python]
        [--new 0.1,0] [--blocks 2]     # --new: the setting beside 0.5 s / 50 ms (default: the client's)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench.common import stop

START = 1.7e9
#: (slice seconds, poll timeout ms): the setting before (one poll per half-second slice)
OLD = (0.5, 50)


def _setup(tmp: str, bootstrap: str, client: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled

    pq.write_table(pa.table(labelled(20_000, seed=1)), os.path.join(tmp, "train.parquet"))
    tree = labelled_config(window={"duration": "10s"},
                           labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp",
                                   "ttl": "1d"},
                           kafka={"bootstrap_servers": bootstrap, "topic": "t", "group_id": "g", "labels_topic": "l",
                                  "client": client, "commit_interval": "1s"},
                           state={"dir": "state", "checkpoint_interval": "1s"},
                           cluster={"enabled": True})
    tree["baseline"] = os.path.join(tmp, "baseline.json")
    path = os.path.join(tmp, "base.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh)
    config = load_config(path)
    build_baseline(config, os.path.join(tmp, "train.parquet")).save(config.baseline)
    return tree, config, Baseline.load(config.baseline)


def _producer(bootstrap: str):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000})


def _produce(producer, topic: str, partition: int, values: list[bytes]) -> None:
    for v in values:
        while True:
            try:
                producer.produce(topic, value=v, partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(120)


def _prefill(config, baseline, scratch: str, topic: str, labels_topic: str, join_topic: str, n: int) -> None:
    """Partition 0's changelog: ``n`` real pending joins and the state record of an owner that read the 10
    predictions at the start of partition 0 (the partition resumes after them)."""
    import msgspec

    from monitor.cluster import Worker
    from monitor.join_changelog import PartitionLog
    from tests.labelled import labelled, messages

    worker = Worker(config, baseline, scratch)
    key = f"{topic}:0"
    cols = labelled(10, seed=3, start=START + 0.01, rate=100.0, id_prefix="first")
    worker.process(key, messages(cols, with_label=False), None, list(range(10)))
    _partials, changes, state, _offsets = worker.cut(key)
    worker.release([key])
    template = [v for v in changes.values() if v is not None]
    kafka = msgspec.structs.replace(config.kafka, bootstrap_servers=config.kafka.bootstrap_servers,
                                    client="confluent-kafka")
    writer = PartitionLog(kafka, join_topic, 0, None)
    writer.fence()
    try:
        for lo in range(0, n, 50_000):
            batch = {f"pre-{i:09d}": template[i % len(template)] for i in range(lo, min(n, lo + 50_000))}
            writer.write(f"{join_topic}-unused", b"lender", [], batch, state, {}, timeout_s=60.0)
        writer.write(f"{join_topic}-unused", b"lender", [], changes, state, {}, timeout_s=60.0)
    finally:
        writer.close()


def _get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.loads(r.read())
    except Exception:
        return None


def _round(tmp: str, tree: dict, broker, config, baseline, mode: str, setting: tuple, n: int, idx: int,
           topics: dict) -> dict:
    """One daemon run with ``setting`` (slice s, poll ms) from a fresh group; returns its figures."""
    import yaml

    from monitor.tansu import free_port

    topic, labels_topic = topics[mode]
    join_topic = broker.create_topic(f"join-{mode}-{idx}", partitions=2)
    _prefill(config, baseline, os.path.join(tmp, f"scratch-{idx}"), topic, labels_topic, join_topic, n)
    home = os.path.join(tmp, f"r{idx}")
    os.makedirs(home)
    run_tree = json.loads(json.dumps(tree))
    run_tree["kafka"].update(topic=topic, labels_topic=labels_topic, group_id=f"g-{idx}")
    run_tree["state"]["dir"] = os.path.join(home, "state")
    run_tree["cluster"].update(join_changelog_topic=join_topic, partials_topic=f"partials-{idx}",
                               changelog_topic=f"aggregator-{idx}")
    path = os.path.join(home, "driftmon.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(run_tree, fh)
    port = free_port()
    code = ("import sys, monitor.cluster as c; "
            "c.RESTORE_SLICE_S = dict.fromkeys(c.RESTORE_SLICE_S, float(sys.argv[1])); "
            "c.RESTORE_POLL_MS = dict.fromkeys(c.RESTORE_POLL_MS, int(sys.argv[2])); "
            "from monitor.cli import main; sys.exit(main(sys.argv[3:]))")
    log_path = os.path.join(home, "daemon.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, str(setting[0]), str(setting[1]), "run", "--config",
                                 path, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    samples = []  # (monotonic, consumed, restoring partition 0)
    key = f"{topic}:0"
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            s = _get(port, "/status")
            if s is not None and s.get("cluster"):
                restoring = [r["partition"] for r in s["cluster"].get("restoring_partitions") or []]
                samples.append((time.monotonic(), s.get("messages_consumed", 0), key in restoring))
                if samples and s["cluster"].get("partitions_restored", 0) >= 1 and key not in restoring \
                        and any(x[2] for x in samples):
                    assignments = s["kafka"]["assignments"]
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {open(log_path).read()[-3000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError("restore not done within 900 s")
    finally:
        stop(proc)
    text = open(log_path).read()
    done = re.search(rf"partition {re.escape(key)} restored from \S+ in ([0-9.]+) s: (\d+) records, (\d+) pending",
                     text)
    assert done and int(done[3]) == n + 10, text[-3000:]  # and the 10 predictions read first
    during = [x for x in samples if x[2]]
    (t0, c0, _), (t1, c1, _) = during[0], during[-1]
    return {"mode": mode, "slice_s": setting[0], "poll_ms": setting[1], "restore_s": float(done[1]),
            "consumed_during": c1 - c0, "rate_during": round((c1 - c0) / (t1 - t0)) if t1 > t0 else 0,
            "assignments": assignments}


def measure(n: int, backlog: int, client: str, new: tuple, blocks: int = 1) -> dict:
    from tests.brokers import KafkaBroker
    from tests.labelled import labelled, messages

    rows = []
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker() as broker:
        tree, config, baseline = _setup(tmp, broker.bootstrap, client)
        producer = _producer(broker.bootstrap)
        topics = {}
        first = messages(labelled(10, seed=3, start=START + 0.01, rate=100.0, id_prefix="first"), with_label=False)
        for mode in ("idle", "busy"):
            topics[mode] = (broker.create_topic(f"t-{mode}", partitions=2),
                            broker.create_topic(f"l-{mode}", partitions=2))
            _produce(producer, topics[mode][0], 0, first)  # what the state record says was read
        cols = labelled(backlog, seed=8, start=START + 1.0, rate=10_000.0, id_prefix="busy")
        _produce(producer, topics["busy"][0], 1, messages(cols, with_label=False))
        idx = 0
        pairs = {"idle": [], "busy": []}  # (old round, new round), adjacent in time
        for mode in ("idle", "busy"):
            for _block in range(blocks):
                got = []
                for setting in (OLD, new, new, OLD):  # ABBA
                    got.append(_round(tmp, tree, broker, config, baseline, mode, setting, n, idx, topics))
                    idx += 1
                    print(json.dumps(got[-1]), flush=True)
                rows += got
                pairs[mode] += [(got[0], got[1]), (got[3], got[2])]
    summary = {}
    for mode, mode_pairs in pairs.items():
        old, nw = [a for a, _b in mode_pairs], [b for _a, b in mode_pairs]
        restore = [b["restore_s"] / a["restore_s"] for a, b in mode_pairs]
        summary[mode] = {
            "restore_s_old": statistics.median(r["restore_s"] for r in old),
            "restore_s_new": statistics.median(r["restore_s"] for r in nw),
            "restore_ratio_new_old": round(statistics.median(restore), 3),
            "restore_ratios": [round(x, 3) for x in restore],
            "rate_old": statistics.median(r["rate_during"] for r in old),
            "rate_new": statistics.median(r["rate_during"] for r in nw),
            "assignments": sorted({r["assignments"] for r in old + nw})}
        if mode == "busy":
            rates = [b["rate_during"] / max(1, a["rate_during"]) for a, b in mode_pairs]
            summary[mode].update(rate_ratio_new_old=round(statistics.median(rates), 2),
                                 rate_ratios=[round(x, 2) for x in rates])
    out = {"entries": n, "backlog": backlog, "client": client, "old": OLD, "new": new, "rows": rows,
           "summary": summary}
    print(json.dumps(summary, indent=1), flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=400_000)
    parser.add_argument("--backlog", type=int, default=600_000)
    parser.add_argument("--client", default="kafka-python")
    parser.add_argument("--new", default=None, help="the slice (s) and poll timeout (ms) set beside 0.5,50 "
                        "(default: monitor.cluster's for the client)")
    parser.add_argument("--blocks", type=int, default=2, help="ABBA blocks per mode (2 round pairs each)")
    args = parser.parse_args(argv)
    if args.new is None:
        from monitor.cluster import RESTORE_POLL_MS, RESTORE_SLICE_S

        new = (RESTORE_SLICE_S[args.client], RESTORE_POLL_MS[args.client])
    else:
        slice_s, poll_ms = args.new.split(",")
        new = (float(slice_s), int(poll_ms))
    measure(args.entries, args.backlog, args.client, new, args.blocks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
