"""Figure 3: memory of a process running the pipeline over millions of wide() messages.

The parent writes the config, the baseline and a pool of distinct messages to a temp
dir, then starts ``python -m bench.memory child ...`` so that the measured RSS is that
of the pipeline's process alone (no broker client, no Evidently, no pandas). The child
loads them, then feeds ``Pipeline.process`` batches of 2000 messages cut from the pool
(reused, so generating messages costs neither time nor memory), and reads VmRSS from
/proc/self/status after setup and every ``checkpoint`` messages, and VmHWM (the
process's peak RSS) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BATCH = 2000
TARGET_PEAK_MIB = 200.0
#: "Flat": RSS may grow by at most this much between the first checkpoint and the end.
FLAT_TOLERANCE_MIB = 5.0


def run(quick: bool = False) -> dict:
    from bench.common import REPO, log, make_setup, message_pool, scratch_dir
    from monitor.synth import wide

    total = 300_000 if quick else 5_000_000
    checkpoint = 50_000 if quick else 500_000
    pool_n = 10_000 if quick else 20_000
    train_rows = 20_000 if quick else 100_000

    tmp = scratch_dir("driftmon-bench-memory-")
    config_path, _, _ = make_setup(tmp, wide(0), train_rows)
    pool_path = os.path.join(tmp, "pool.jsonl")
    with open(pool_path, "wb") as fh:
        for m in message_pool(pool_n, seed=1):
            fh.write(m + b"\n")
    log(f"memory: child process runs the pipeline over {total:,} messages")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", "child", "--config", config_path, "--pool", pool_path,
         "--total", str(total), "--checkpoint", str(checkpoint)],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = child["samples"]
    first = samples[0]  # after `checkpoint` messages
    last = samples[-1]
    growth = last["rss_mib"] - first["rss_mib"]
    peak = child["peak_mib"]
    return {
        "what": f"peak RSS (VmHWM) of a process running Pipeline.process over {total:,} wide() messages",
        "ceiling_what": f"VmRSS after the first {checkpoint:,} messages",
        "messages": total,
        "checkpoint": checkpoint,
        "pool": pool_n,
        "rss_interpreter_mib": child["bare_mib"],
        "rss_after_imports_mib": child["imports_mib"],
        "heavy_modules_loaded": child["heavy_modules"],
        "rss_after_setup_mib": child["setup_mib"],
        "rss_at_checkpoint_mib": first["rss_mib"],
        "rss_at_end_mib": last["rss_mib"],
        "peak_mib": peak,
        "growth_after_checkpoint_mib": growth,
        "peak_over_checkpoint": peak / first["rss_mib"],
        "samples": samples,
        "msgs_per_s": child["msgs_per_s"],
        "windows": child["windows"],
        "target": {"peak_mib": TARGET_PEAK_MIB, "flat_tolerance_mib": FLAT_TOLERANCE_MIB},
        "met": peak < TARGET_PEAK_MIB and growth <= FLAT_TOLERANCE_MIB,
    }


#: Big libraries the pipeline's process should not need to load (reported when they are loaded).
HEAVY = ("pandas", "sklearn", "scipy.stats", "river.drift", "pyarrow", "evidently", "kafka")


def child(args) -> None:
    from bench.common import batches_from_pool, proc_status

    bare = proc_status()["VmRSS"]
    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.pipeline import Pipeline

    imported = proc_status()["VmRSS"]
    heavy = [m for m in HEAVY if m in sys.modules]

    config = load_config(args.config)
    baseline = Baseline.load(config.baseline)
    with open(args.pool, "rb") as fh:
        pool = [line.rstrip(b"\n") for line in fh if line.strip()]
    pipeline = Pipeline(config, baseline)
    setup = proc_status()["VmRSS"]
    samples, done, windows = [], 0, 0
    started = time.perf_counter()
    for chunk in batches_from_pool(pool, BATCH, args.total):
        results, _ = pipeline.process(chunk)
        windows += len(results)
        before = done
        done += len(chunk)
        if done // args.checkpoint != before // args.checkpoint:
            status = proc_status()
            samples.append({"messages": done, "rss_mib": status["VmRSS"], "hwm_mib": status["VmHWM"]})
    elapsed = time.perf_counter() - started
    if pipeline.invalid:
        raise SystemExit(f"pipeline rejected messages: {dict(pipeline.invalid)}")
    status = proc_status()
    print(json.dumps({"bare_mib": bare, "imports_mib": imported, "heavy_modules": heavy, "setup_mib": setup,
                      "samples": samples, "peak_mib": status["VmHWM"], "end_mib": status["VmRSS"],
                      "msgs_per_s": done / elapsed, "windows": windows}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child", help="(internal) the measured process")
    c.add_argument("--config", required=True)
    c.add_argument("--pool", required=True)
    c.add_argument("--total", type=int, required=True)
    c.add_argument("--checkpoint", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "child":
        child(args)


if __name__ == "__main__":
    main()
