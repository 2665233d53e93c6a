"""How long a replica takes to restore the partitions it is given at start-up, their join changelogs empty.

Scale-out with labels: each partition new to a replica is restored from its join changelog before it is processed:
its fence (``init_transactions`` on the partition's transactional id, about 1 s with confluent-kafka), then the read
of the changelog partition (``monitor.cluster._Restore``). With empty changelogs the fences are the restore; run one
after another, 6 partitions took about 6 s at start-up, which makes a rebalance during the start-up restores likely.

On a real Apache Kafka broker (tests/brokers.py), each round runs the real daemon (``driftmon run``, one replica,
6-partition prediction and label topics, labels, scale-out) from a fresh group on fresh topics (so every changelog is
empty), with the code of one of two trees (``--before``: a checkout of the code before the change; the other: this
one), and measures from the source's assignment (its ``assigned partitions`` log line) to the last ``partition ...
restored`` line, with the daemon's own log timestamps. The two trees alternate in ABBA blocks; each ratio is taken
within a pair of adjacent rounds, and the summary gives the medians.

    PYTHONPATH=$PWD python -m bench.restore_fences --before /path/to/old/checkout [--client confluent-kafka]
        [--blocks 2] [--partitions 6]
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
from datetime import datetime

from bench.common import stop

STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def _setup(tmp: str, bootstrap: str, client: str) -> dict:
    """The labelled scale-out configuration tree (topics and group set per round) and its baseline."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled

    pq.write_table(pa.table(labelled(20_000, seed=1)), os.path.join(tmp, "train.parquet"))
    tree = labelled_config(window={"duration": "10s"},
                           labels={"window_duration": "10s", "positive": "1", "timestamp_path": "timestamp"},
                           kafka={"bootstrap_servers": bootstrap, "topic": "t", "group_id": "g", "labels_topic": "l",
                                  "client": client},
                           cluster={"enabled": True})
    tree["baseline"] = os.path.join(tmp, "baseline.json")
    path = os.path.join(tmp, "base.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh)
    build_baseline(load_config(path), os.path.join(tmp, "train.parquet")).save(tree["baseline"])
    return tree


def _when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _round(tmp: str, tree: dict, broker, code: str, arm: str, partitions: int, idx: int) -> dict:
    """One daemon run of the tree ``code`` from a fresh group on fresh topics; returns its figures."""
    import yaml

    home = os.path.join(tmp, f"r{idx}")
    os.makedirs(home)
    run_tree = json.loads(json.dumps(tree))
    run_tree["kafka"].update(topic=broker.create_topic(f"t-{idx}", partitions=partitions),
                             labels_topic=broker.create_topic(f"l-{idx}", partitions=partitions), group_id=f"g-{idx}")
    run_tree["state"] = {"dir": os.path.join(home, "state")}
    path = os.path.join(home, "driftmon.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(run_tree, fh)
    from monitor.tansu import free_port

    log_path = os.path.join(home, "daemon.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from monitor.cli import main; sys.exit(main())",
                                 "run", "--config", path, "--port", str(free_port())], stdout=log,
                                stderr=subprocess.STDOUT, cwd=home,
                                env={**os.environ, "PYTHONPATH": code, "PYTHONUNBUFFERED": "1"})
    restored = re.compile(rf"{STAMP} .*partition t-{idx}:\d+ restored from ")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with open(log_path) as fh:
                text = fh.read()
            if len(restored.findall(text)) >= partitions:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {text[-3000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError(f"not restored within 300 s: {text[-3000:]}")
    finally:
        stop(proc)
    with open(log_path) as fh:
        text = fh.read()
    assigned = re.findall(rf"{STAMP} .*assigned partitions \[", text)
    done = restored.findall(text)
    return {"arm": arm, "restore_all_s": round(_when(done[partitions - 1]) - _when(assigned[0]), 3),
            "assignments": len(assigned), "restored": len(done)}


def measure(before: str, client: str, blocks: int, partitions: int) -> dict:
    from tests.brokers import KafkaBroker

    after = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows, pairs = [], []
    with tempfile.TemporaryDirectory() as tmp, KafkaBroker() as broker:
        tree = _setup(tmp, broker.bootstrap, client)
        idx = 0
        for _block in range(blocks):
            got = []
            for arm in ("before", "after", "after", "before"):  # ABBA
                got.append(_round(tmp, tree, broker, before if arm == "before" else after, arm, partitions, idx))
                idx += 1
                print(json.dumps(got[-1]), flush=True)
            rows += got
            pairs += [(got[0], got[1]), (got[3], got[2])]
    ratios = [b["restore_all_s"] / a["restore_all_s"] for a, b in pairs]
    summary = {"client": client, "partitions": partitions,
               "before_s": statistics.median(a["restore_all_s"] for a, _b in pairs),
               "after_s": statistics.median(b["restore_all_s"] for _a, b in pairs),
               "ratio_after_before": round(statistics.median(ratios), 3),
               "ratios": [round(x, 3) for x in ratios],
               "assignments": sorted({r["assignments"] for r in rows})}
    print(json.dumps(summary, indent=1), flush=True)
    return {"rows": rows, "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a checkout of the code to compare with (its root)")
    parser.add_argument("--client", default="confluent-kafka")
    parser.add_argument("--blocks", type=int, default=2, help="ABBA blocks (2 round pairs each)")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args(argv)
    measure(args.before, args.client, args.blocks, args.partitions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
