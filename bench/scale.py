"""Figure 8: scale-out (``cluster.enabled``), standalone: ``python -m bench.scale [--quick]``.

A. The aggregator's cost per window, in-process: P partials (one per source partition) of a window over
   F features are decoded from their JSON (as read from the partials topic), merged (``Aggregator.add``)
   and the merged window closed and evaluated (``Aggregator.close``). Varied: P (6, 24, 50), F (5, 25),
   and the messages behind the window (10,000 and 1,000,000): the cost must not grow with messages.
   Also the partial's size (JSON, and gzip as produced).
B. Total throughput on a real Apache Kafka broker (tests/brokers.py) with a 2-partition topic: one
   single-mode process, and 1 and 2 scale-out worker processes (`driftmon run`, one of them the
   aggregator), each configuration started in a fresh group and assigned before the messages are
   produced. Rate: messages consumed over all processes between 10% and 90% of N (the start-up and
   the tail are left out), sampled from /status every 0.2 s. Rounds rotate the order of the three.

Writes bench/scale.json (and prints a markdown table); ``--aggregator-only`` re-measures A and keeps B.
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.common import FIXED_START, git_info, log, machine_info, scratch_dir

OUT = Path(__file__).resolve().parent / "scale.json"


def _setup(directory: str, features: int, window: str = "1h"):
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config
    from monitor.synth import wide

    os.makedirs(directory, exist_ok=True)
    synth = wide(0)
    train = os.path.join(directory, "train.parquet")
    pq.write_table(synth.training_table(20_000), train)
    tree = synth.config(window={"duration": window})
    tree["schema"]["features"] = tree["schema"]["features"][:features]
    path = os.path.join(directory, "driftmon.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    config = load_config(path)
    build_baseline(config, train).save(config.baseline)
    return path, config, Baseline.load(config.baseline)


# ---- A: the aggregator ------------------------------------------------------------------------------

def _partials(config, baseline, pool, partitions: int, messages: int) -> list[bytes]:
    """One window's partials, JSON as the workers produce them; ``messages`` spread over the partitions."""
    from monitor.pipeline import Pipeline

    pipeline = Pipeline(config, baseline)
    start = float(FIXED_START // 3600 * 3600)
    per = max(1, messages // partitions)
    out = []
    batch = pipeline.decoder.decode(pool[:min(per, len(pool))])
    reps = per // batch.n
    for p in range(partitions):
        window = pipeline._new_window(0, start, start + 3600)
        for _ in range(reps):  # the same rows again: the histograms hold `per` events, the cost is the merge's
            window.update(batch)
        key = f"t:{p}"
        window.add_offsets(key, 0, window.events - 1)
        out.append(json.dumps({"partition": key, "start": start, "end": start + 3600, "watermark": start + 3600,
                               "window": window.state_dict()}, separators=(",", ":")).encode())
    return out


def aggregator_cost(quick: bool) -> list[dict]:
    from monitor.cluster import Aggregator
    from monitor.pipeline import Pipeline
    from monitor.synth import wide

    tmp = scratch_dir("driftmon-bench-scale-")
    pool = wide(1).messages(20_000, start_time=FIXED_START)
    rows = []
    rounds = 3 if quick else 9
    for features in (5, 25):
        _, config, baseline = _setup(os.path.join(tmp, f"f{features}"), features)
        for partitions in ((6, 50) if quick else (6, 24, 50)):
            # the two sizes alternate within each round, so the machine's drift hits both alike
            records = {m: _partials(config, baseline, pool, partitions, m) for m in (10_000, 1_000_000)}
            times = {m: [] for m in records}
            events = {}
            for r in range(rounds):
                for messages in (sorted(records) if r % 2 == 0 else sorted(records, reverse=True)):
                    agg = Aggregator(Pipeline(config, baseline), "t", 30.0)
                    started = time.perf_counter()
                    for i, value in enumerate(records[messages]):
                        agg.add(i, json.loads(value))
                    [result] = agg.close(partitions, 0.0)
                    times[messages].append(time.perf_counter() - started)
                    events[messages] = result["window"]["events"]
                    assert events[messages] == sum(json.loads(v)["window"]["events"] for v in records[messages])
            for messages, recs in records.items():
                row = {"features": features, "partitions": partitions, "messages": events[messages],
                       "ms_per_window": 1000 * statistics.median(times[messages]),
                       "ms_all": [1000 * t for t in times[messages]],
                       "partial_bytes": int(statistics.median(len(v) for v in recs)),
                       "partial_gzip_bytes": len(gzip.compress(recs[0]))}
                rows.append(row)
                log(f"aggregator: F={features} P={partitions} N={events[messages]:,}: {row['ms_per_window']:.1f} "
                    f"ms/window, partial {row['partial_bytes']:,} B ({row['partial_gzip_bytes']:,} B gzip)")
    return rows


# ---- B: throughput on Kafka ---------------------------------------------------------------------------

def throughput(quick: bool) -> dict:
    import yaml
    from kafka import KafkaProducer

    from monitor.synth import wide
    from monitor.tansu import free_port
    from tests.brokers import BrokerToolMissing, KafkaBroker
    from tests.daemon_proc import DaemonProcess

    n = 60_000 if quick else 300_000
    rounds = 1 if quick else 3
    tmp = scratch_dir("driftmon-bench-scale-kafka-")
    path, _, _ = _setup(os.path.join(tmp, "setup"), 25, window="10s")
    log(f"throughput: generating {n:,} messages")
    # event times ahead of the clock: windows close on events only (no idle tick closes any on the clock)
    messages = wide(1).messages(n, start_time=(time.time() // 10 + 60) * 10, rate=1000.0)  # 1,000 per window
    try:
        broker = KafkaBroker()
    except BrokerToolMissing as exc:
        return {"skipped": str(exc)}
    broker.start()
    counter = iter(range(1000))
    try:
        def run(kind: str, processes: int) -> dict:
            i = next(counter)
            topic = broker.create_topic(f"bench-scale-{i}", 2)
            tree = yaml.safe_load(open(path))
            tree["baseline"] = os.path.join(tmp, "setup", "baseline.json")
            tree["kafka"] = {"bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": f"g-{i}",
                             "session_timeout_ms": 10000}
            tree["alerts"] = {}
            if kind == "cluster":
                tree["cluster"] = {"enabled": True, "grace": "10m"}
            daemons = []
            for j in range(processes):
                home = os.path.join(tmp, f"r{i}-{j}")
                os.makedirs(home)
                tree["state"] = {"dir": os.path.join(home, "state")}
                cfg = os.path.join(home, "driftmon.yaml")
                with open(cfg, "w") as fh:
                    yaml.safe_dump(tree, fh)
                daemons.append(DaemonProcess(cfg, free_port(), os.path.join(home, "log")))
            try:
                for d in daemons:
                    d.start()
                ready = b"ready: baseline loaded and consuming\n"
                for d in daemons:
                    d.wait(lambda d=d: d.get("/readyz") == ready, 120, "an assignment")
                time.sleep(3.0)  # the last join's rebalance settles before the clock starts
                producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, linger_ms=20,
                                         batch_size=1 << 20)
                sender = threading.Thread(target=lambda: ([producer.send(topic, value=m, partition=k % 2)
                                                           for k, m in enumerate(messages)], producer.flush()))
                sender.start()
                samples = []
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    total = sum((d.status() or {}).get("messages_consumed", 0) for d in daemons)
                    samples.append((time.perf_counter(), total))
                    if total >= n:
                        break
                    time.sleep(0.2)
                sender.join()
                producer.close()
                lo = next(s for s in samples if s[1] >= 0.1 * n)
                hi = next(s for s in samples if s[1] >= 0.9 * n)
                return {"rate": (hi[1] - lo[1]) / (hi[0] - lo[0]), "consumed": samples[-1][1]}
            finally:
                for d in daemons:
                    d.close()

        configs = [("single", "single", 1), ("cluster-1", "cluster", 1), ("cluster-2", "cluster", 2)]
        got = {name: [] for name, _, _ in configs}
        for r in range(rounds):
            order = configs[r % 3:] + configs[:r % 3]
            for name, kind, processes in order:
                result = run(kind, processes)
                got[name].append(result["rate"])
                log(f"throughput round {r + 1}/{rounds}: {name}: {result['rate']:,.0f} msg/s")
        medians = {name: statistics.median(rates) for name, rates in got.items()}
        return {"messages": n, "partitions": 2, "rounds": got, "median": medians,
                "ratio_vs_single": {name: medians[name] / medians["single"] for name in medians}}
    finally:
        broker.stop()


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    quick = "--quick" in args
    doc = json.loads(OUT.read_text()) if OUT.exists() else {}
    doc.update(machine=machine_info(), git=git_info(), aggregator=aggregator_cost(quick))
    if "--aggregator-only" not in args or "throughput" not in doc:
        doc["throughput"] = throughput(quick)
    if not quick:
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print("| features | partitions | messages in the window | aggregator ms/window | partial bytes (gzip) |")
    print("|---|---|---|---|---|")
    for row in doc["aggregator"]:
        print(f"| {row['features']} | {row['partitions']} | {row['messages']:,} | {row['ms_per_window']:.1f} | "
              f"{row['partial_bytes']:,} ({row['partial_gzip_bytes']:,}) |")
    t = doc["throughput"]
    if "median" in t:
        for name, rate in t["median"].items():
            print(f"{name}: {rate:,.0f} msg/s ({t['ratio_vs_single'][name]:.2f} x single)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
