"""Run driftmon's benchmarks and write bench/results.json and bench/RESULTS.md.

Usage::

    python -m bench.run            # the full run (about 15 minutes on 2 cores)
    python -m bench.run --quick    # a smoke run with small sizes (under a minute)
    python -m bench.run --only pipeline,memory
    python -m bench.run --only soak [--soak-minutes 30]   # not part of the default run (not in CI)
    python -m bench.run --only restore                     # restore from the join changelog: time, peak RSS

Every figure is reported next to a ceiling measured in the same run, with ceiling and
subject runs interleaved and medians reported, because this machine's speed wanders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: import the package from the repo root, not bench/
    _repo = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, _repo)

from bench.common import REPO, log, machine_info  # noqa: E402

BENCHES = ("pipeline", "kafka", "memory", "evidently", "multivariate", "join", "join_floor")
OPTIONAL = ("soak", "restore")  # long: only with --only; their results are kept when other benchmarks run


def _module(name: str):
    if name == "pipeline":
        from bench import throughput as mod
    elif name == "kafka":
        from bench import kafka_e2e as mod
    elif name == "memory":
        from bench import memory as mod
    elif name == "soak":
        from bench import soak as mod
    elif name == "restore":
        from bench import restore as mod
    elif name == "multivariate":
        from bench import multivariate as mod
    elif name == "join":
        from bench import join as mod
    elif name == "join_floor":
        from bench import join_floor as mod
    else:
        from bench import evidently_compare as mod
    return mod


def _rate(x) -> str:
    return f"{x:,.0f} msg/s"


def _met(entry: dict) -> str:
    if "error" in entry:
        return "error"
    if "skipped" in entry:
        return "skipped"
    return "yes" if entry.get("met") else "**no**"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    v = m["versions"]
    lines = [
        "# driftmon benchmark results",
        "",
        f"Run {doc['started_at']} ({'quick smoke run' if doc['quick'] else 'full run'}), "
        f"{doc['seconds']:.0f} s. Each figure sits next to a ceiling measured in the same run "
        "(ceiling and subject runs interleaved; medians; the ratio is the median of the per-round ratios).",
        "",
        "| figure | driftmon | ceiling / reference | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    r = doc["results"]
    if "pipeline" in r:
        p = r["pipeline"]
        if "error" in p or "skipped" in p:
            lines.append(f"| 1. pipeline throughput | {p.get('error') or p.get('skipped')} | | | >= 200,000 msg/s | {_met(p)} |")
        else:
            lines.append(
                f"| 1. in-process pipeline throughput (batches of {p['batch']}, {p['window']}-event windows) "
                f"| {_rate(p['subject_msgs_per_s'])} | {_rate(p['ceiling_msgs_per_s'])} (msgspec decode into columns) "
                f"| {p['ratio']:.2f} | >= {p['target']['subject_msgs_per_s']:,} msg/s | {_met(p)} |")
    if "kafka" in r:
        k = r["kafka"]
        if "error" in k or "skipped" in k:
            lines.append(f"| 2. end-to-end from Kafka | {k.get('error') or k.get('skipped')} | | | >= 60% | {_met(k)} |")
        else:
            lines.append(
                f"| 2. end-to-end from Apache Kafka ({k['messages']:,} msgs, daemon consume + process) "
                f"| {_rate(k['subject_msgs_per_s'])} | {_rate(k['ceiling_msgs_per_s'])} (bare kafka-python consume) "
                f"| {k['ratio']:.2f} | >= {k['target']['ratio']:.2f} | {_met(k)} |")
            c = k.get("confluent") or {}
            if "daemon_msgs_per_s" in c:
                lines.append(
                    f"| 2. end-to-end with `kafka.client: confluent-kafka` (bare confluent-kafka consume: "
                    f"{_rate(c['bare_msgs_per_s'])}) | {_rate(c['daemon_msgs_per_s'])} "
                    f"| {_rate(c['kafka_python_daemon_msgs_per_s'])} (the daemon on kafka-python) "
                    f"| {c['speedup']:.2f} | >= {c['target']['speedup']:.1f} | {_met(c)} |")
            elif c:
                lines.append(f"| 2. end-to-end with confluent-kafka | {c.get('skipped') or c.get('error')} | | | >= 2.0 | skipped |")
    if "memory" in r:
        mm = r["memory"]
        if "error" in mm or "skipped" in mm:
            lines.append(f"| 3. memory | {mm.get('error') or mm.get('skipped')} | | | < 200 MB, flat | {_met(mm)} |")
        else:
            lines.append(
                f"| 3. peak RSS over {mm['messages']:,} msgs (growth after {mm['checkpoint']:,}: "
                f"{mm['growth_after_checkpoint_mib']:+.1f} MiB) | {mm['peak_mib']:.1f} MiB "
                f"| {mm['rss_at_checkpoint_mib']:.1f} MiB (RSS after {mm['checkpoint']:,}) "
                f"| {mm['peak_over_checkpoint']:.3f} | < {mm['target']['peak_mib']:.0f} MiB, "
                f"growth <= {mm['target']['flat_tolerance_mib']:.0f} MiB | {_met(mm)} |")
    if "evidently" in r:
        e = r["evidently"]
        if "error" in e or "skipped" in e:
            lines.append(f"| 4. vs Evidently | {e.get('error') or e.get('skipped')} | | | >= 50x | {_met(e)} |")
        else:
            lines.append(
                f"| 4. drift check, {e['rows']:,} + {e['rows']:,} rows x {e['features']} features "
                f"| {e['driftmon_seconds']:.3f} s | {e['evidently_seconds']:.2f} s (Evidently "
                f"{e['evidently_version']} DataDriftPreset) | {e['speedup']:.0f}x faster "
                f"| >= {e['target']['speedup']:.0f}x | {_met(e)} |")
    if "multivariate" in r:
        mv = r["multivariate"]
        if "error" in mv or "skipped" in mv:
            lines.append(f"| 5. multivariate detectors | {mv.get('error') or mv.get('skipped')} | | | | |")
        else:
            labels = {"pca_25": "PCA reconstruction, 25 features", "pca_200": "PCA reconstruction, 200 features",
                      "embedding_384": "embedding drift, dimension 384", "classifier_update": "domain classifier sample"}
            for key, label in labels.items():
                f = mv["figures"][key]
                lines.append(f"| 5. {label}: update cost per message | {f['subject_us_per_msg']:.2f} us "
                             f"| {f['pipeline_us_per_msg']:.2f} us (pipeline per message) | {f['cost_ratio']:.2f} | | |")
            f = mv["figures"].get("embedding_384_pipeline")
            if f is not None:
                lines.append(f"| 5. pipeline with a 384-dimensional embedding feature (decoding included) "
                             f"| {f['subject_us_per_msg']:.2f} us | {f['pipeline_us_per_msg']:.2f} us (pipeline "
                             f"without it) | {f['cost_ratio']:.2f} | | |")
            f = mv["figures"].get("classifier_background")
            if f is not None:
                lines.append(f"| 5. pipeline while the domain classifier fits back to back on its worker thread "
                             f"({f['evaluations_per_round']:.0f} fits per round) | {f['subject_us_per_msg']:.2f} us "
                             f"| {f['pipeline_us_per_msg']:.2f} us (pipeline without it) | {f['cost_ratio']:.2f} | | |")
            f = mv["figures"]["classifier_evaluation"]
            lines.append(f"| 5. domain classifier: one evaluation ({f['sample']} + {f['reference']} rows) "
                         f"| {f['seconds_per_evaluation']:.3f} s | {f['pipeline_seconds_per_window']:.3f} s "
                         f"(pipeline per 5000-event window) | {f['windows_per_evaluation']:.1f} | | |")
    if "join" in r:
        lines += join_rows(r["join"])
    if "join_floor" in r:
        lines += join_floor_rows(r["join_floor"])
    earlier = {}  # a partial run keeps the other figures: say which run each came from
    for name, entry in r.items():
        if name not in OPTIONAL and entry.get("run_at") not in (None, doc.get("started_at")):
            earlier.setdefault(entry["run_at"], []).append(name)
    if earlier:
        hosts = {at: r[names[0]].get("measured_on") for at, names in earlier.items()}
        lines += ["", "Kept from earlier runs: " + "; ".join(
            f"{', '.join(names)} ({at}" + (f"; {hosts[at]}" if hosts[at] else "") + ")" for at, names in earlier.items())
            + ". The Machine table below is this run's; a kept figure compares only with the references of its own run."]
    if "soak" in r:
        lines += ["", *soak_markdown(r["soak"])]
    if "restore" in r:
        lines += ["", *restore_markdown(r["restore"])]
    lines += ["", "## Details", ""]
    if "pipeline" in r and "subject_msgs_per_s" in r["pipeline"]:
        p = r["pipeline"]
        lines.append(
            f"- **Pipeline**: {p['rounds']} rounds of {p['messages_per_round']:,} messages from a pool of "
            f"{p['pool']:,} distinct wide() messages (mean {p['mean_message_bytes']:.0f} bytes, {p['columns']} "
            f"monitored columns), {p['windows_per_round']} windows evaluated per round: {1e6 / p['subject_msgs_per_s']:.2f} us "
            f"per message (ceiling {1e6 / p['ceiling_msgs_per_s']:.2f} us). Per-round rates: driftmon "
            f"{', '.join(f'{x:,.0f}' for x in p['detail']['subject_all'])}; ceiling "
            f"{', '.join(f'{x:,.0f}' for x in p['detail']['ceiling_all'])}.")
    if "kafka" in r and "subject_msgs_per_s" in r["kafka"]:
        k = r["kafka"]
        crc = k["crc32c"]
        lines.append(
            f"- **Kafka**: {k['broker']}, 1 partition, {k['messages']:,} messages produced once at "
            f"{k['produce_msgs_per_s']:,.0f} msg/s; {k['rounds']} rounds, each a fresh consumer group "
            f"(the daemon also with a fresh state dir). crc32c importable: **{crc['importable']}** "
            f"(used by kafka-python: {crc['used_by_kafka_python']}). The daemon adds {k['added_us_per_msg']:.1f} us "
            f"per message to consuming it (the target leaves {k['budget_us_per_msg']:.1f} us). Per-round rates: daemon "
            f"{', '.join(f'{x:,.0f}' for x in k['detail']['subject_all'])}; bare consumer "
            f"{', '.join(f'{x:,.0f}' for x in k['detail']['ceiling_all'])}.")
    if "memory" in r and "peak_mib" in r["memory"]:
        mm = r["memory"]
        samples = mm["samples"]
        pick = samples if len(samples) <= 10 else samples[:: max(1, len(samples) // 10)] + [samples[-1]]
        heavy = ", ".join(mm["heavy_modules_loaded"]) or "none"
        lines.append(
            f"- **Memory**: subprocess; VmRSS of the bare interpreter {mm['rss_interpreter_mib']:.1f} MiB, after "
            f"importing monitor.pipeline {mm['rss_after_imports_mib']:.1f} MiB (heavy modules it loaded: {heavy}), "
            f"after loading the config, the baseline and a pool of {mm['pool']:,} messages "
            f"{mm['rss_after_setup_mib']:.1f} MiB; VmRSS by messages processed: "
            + ", ".join(f"{s['messages']:,}: {s['rss_mib']:.1f}" for s in pick)
            + f" MiB; peak (VmHWM) {mm['peak_mib']:.1f} MiB; {mm['msgs_per_s']:,.0f} msg/s, "
            f"{mm['windows']:,} windows.")
    if "evidently" in r and "speedup" in r["evidently"]:
        e = r["evidently"]
        d = e["drifted"]
        lines.append(
            f"- **Evidently**: {e['rounds']} rounds. Per-round times: Evidently "
            f"{', '.join(f'{x:.2f}' for x in e['detail']['ceiling_all'])} s; driftmon "
            f"{', '.join(f'{x:.3f}' for x in e['detail']['subject_all'])} s. Drifted columns found: "
            f"driftmon {d['driftmon']}, Evidently {d['evidently']} (truth: {d['truth']}). "
            f"driftmon from {e['rows']:,} raw JSON messages instead of Parquet (baseline + Pipeline.process): "
            f"{e['driftmon_from_json_seconds']:.3f} s.")
    lines += [
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']} |",
        f"| cores | {m['cores']} ({m['cores_usable']} usable) |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| kernel | {m['kernel']} |",
        f"| Python | {m['python']} ({m['python_implementation']}) |",
    ]
    for name in ("numpy", "msgspec", "kafka-python", "crc32c", "evidently", "pandas", "scipy", "pyarrow"):
        lines.append(f"| {name} | {v.get(name)} |")
    lines.append(f"| crc32c importable | {m['crc32c']['importable']} |")
    g = m.get("git", {})
    if g.get("commit"):
        dirty = g.get("uncommitted_in_monitor_detectors") or []
        note = f" + uncommitted changes in {len(dirty)} file(s) of monitor/, detectors/" if dirty else ""
        lines.append(f"| code | commit {g['commit'][:12]}{note} |")
    if m["openblas_env"]:
        lines.append(f"| OpenBLAS env | {m['openblas_env']} |")
    lines += ["", "Reproduce with `python -m bench.run` (see bench/README.md).", ""]
    return "\n".join(lines)


def _cpu_ratio(t: dict) -> str:
    """The same ratio in CPU time of the consuming thread (robust to other load; leaves out compactions)."""
    return f" (thread CPU {t['cpu_ratio']:.2f})" if "cpu_ratio" in t else ""


def _memory(t: dict) -> str:
    """The second reference: today's LabelJoin with its in-memory store, the same rounds."""
    if "memory_ratio" not in t:
        return ""
    return (f"; MemoryStore (today's join in memory): {_rate(t['memory_pairs_per_s'])}, ratio {t['memory_ratio']:.2f} "
            f"(thread CPU {t['memory_cpu_ratio']:.2f})")


def join_rows(j: dict) -> list[str]:
    if "error" in j or "skipped" in j:
        return [f"| 6. pending label joins | {j.get('error') or j.get('skipped')} | | | | {_met(j)} |"]
    t = j["throughput"]
    target = j["target"]["throughput_ratio"]
    lines = [
        f"| 6. RSS with {j['largest_pending']:,} pending label joins (on disk; a daemon object fed predictions) "
        f"| {j['rss_mib_at_largest']:.0f} MiB (peak {j['peak_rss_mib']:.0f}) | {j['before_rss_mib_at_largest']:.0f} MiB "
        f"with {j['before_largest_pending']:,} in the join before the store | | < {j['target']['rss_mib']:.0f} MiB "
        f"| {'yes' if j['peak_rss_mib'] < j['target']['rss_mib'] else '**no**'} |",
        f"| 6. checkpoint with {j['largest_pending']:,} pending (on disk) | {j['checkpoint_s_at_largest'] * 1e3:.1f} ms "
        f"| {j['checkpoint_s_empty'] * 1e3:.1f} ms with none; {j['before_checkpoint_s_at_largest'] * 1e3:.0f} ms with "
        f"{j['before_largest_pending']:,} in the join before the store | {j['checkpoint_ratio_largest_over_empty']:.2f} "
        f"| < 2 (as empty) | {'yes' if j['checkpoint_ratio_largest_over_empty'] < 2 else '**no**'} |",
        f"| 6. labelled predictions through the pipeline, {t['pending']:,} pending (on disk vs the join before the "
        f"store) | {_rate(t['disk_pairs_per_s'])} | {_rate(t['before_pairs_per_s'])}{_memory(t)} | {t['ratio']:.2f}"
        f"{_cpu_ratio(t)} | >= {target:.2f} (cost within 20%) | {'yes' if t['ratio'] >= target else '**no**'} |",
        f"| 6. the join alone (LabelJoin calls), {t['pending']:,} pending | {_rate(t['join_alone_disk_per_s'])} "
        f"| {_rate(t['join_alone_before_per_s'])} (before the store); MemoryStore {_rate(t['join_alone_memory_per_s'])}, "
        f"ratio {t['memory_join_alone_ratio']:.2f} | {t['join_alone_ratio']:.2f} | | |",
    ]
    rnd = j.get("throughput_random_ids")
    if rnd:
        lines.append(
            f"| 6. the same with random ids (spread as UUIDs), {rnd['pending']:,} pending | {_rate(rnd['disk_pairs_per_s'])} "
            f"| {_rate(rnd['before_pairs_per_s'])}{_memory(rnd)} | {rnd['ratio']:.2f}{_cpu_ratio(rnd)}; join alone "
            f"{rnd['join_alone_ratio']:.2f} | >= {target:.2f} | {'yes' if rnd['ratio'] >= target else '**no**'} |")
    big = j.get("throughput_largest")
    if big:  # interleaved in one process with the in-memory pipelines
        lines.append(
            f"| 6. labelled predictions through the pipeline, {big['pending']:,} pending on disk vs "
            f"{big['memory_pending']:,} in memory | {_rate(big['disk_pairs_per_s'])} | {_rate(big['before_pairs_per_s'])}"
            f"{_memory(big)} | {big['ratio']:.2f}{_cpu_ratio(big)}; join alone {big['join_alone_ratio']:.2f} "
            f"| >= {target:.2f} | {'yes' if big['ratio'] >= target else '**no**'} |")
    else:
        lines.append(
            f"| 6. labelled predictions through the pipeline, {j['largest_pending']:,} pending (on disk) "
            f"| {_rate(j['disk_pairs_per_s_at_largest'])} | {_rate(t['before_pairs_per_s'])} ({t['pending']:,} in the "
            f"join before the store) | {j['disk_pairs_per_s_at_largest'] / t['before_pairs_per_s']:.2f} | | |")
    ch = j.get("throughput_churn")
    if ch:  # long enough that the id filter is rebuilt inside the rounds; totals, not a median of rounds
        lines.append(
            f"| 6. the same pairs with the id filter's rebuilds inside the rounds ({ch['pairs_per_store']:,} per store, "
            f"{ch['pending']:,} pending, a rebuild per 3x the count added) | {_rate(ch['disk_pairs_per_s'])} "
            f"({ch['rebuilds']} rebuild{'' if ch['rebuilds'] == 1 else 's'}, {ch['rebuild_s']:.2f} s: {ch['rebuild_us_per_pair']:.2f} us per pair) "
            f"| {_rate(ch['before_pairs_per_s'])}{_memory(ch)} | {ch['ratio']:.2f} (thread CPU {ch['cpu_ratio']:.2f}; without the "
            f"rebuilds' time {ch['ratio_without_rebuilds']:.2f} ({ch['cpu_ratio_without_rebuilds']:.2f})) "
            f"| >= {target:.2f} | {'yes' if ch['ratio'] >= target else '**no**'} |")
    cp = j.get("throughput_checkpointed")
    if cp and "10" in cp["every"]:  # a different measure: the checkpoints' time counted in
        ten, one = cp["every"]["10"], cp["every"].get("1")
        lines.append(
            f"| 6. a different measure: the same pairs through daemon objects *with their checkpoints* "
            f"(`Daemon.checkpoint()` every 10 s of processing, `state.checkpoint_interval`), {cp['pending']:,} pending "
            f"| {_rate(ten['disk_pairs_per_s'])} (checkpoint {ten['disk_checkpoint_s'] * 1e3:.0f} ms) "
            f"| {_rate(ten['before_pairs_per_s'])} with the join before the store (checkpoint "
            f"{ten['before_checkpoint_s']:.1f} s) | {ten['ratio']:.2f}"
            + (f"; every 1 s (the consume loop's checkpoint before each offset commit, `kafka.commit_interval`): "
               f"{_rate(one['disk_pairs_per_s'])} vs {_rate(one['before_pairs_per_s'])}, {one['ratio']:.2f}" if one else "")
            + " | (not a target) | |")
    return lines


_FLOOR_TUNINGS = {"1kib_blocks": "1 KiB blocks", "unchecked": "no read checksums, no WAL"}


def join_floor_rows(f: dict) -> list[str]:
    """Figure 6's floor (bench/join_floor.py): RocksDB's own calls per labelled pair over the dict's, against the
    budget the target leaves; one row per id kind, thread CPU (wall clock in brackets)."""
    if "error" in f or "skipped" in f:
        return [f"| 6. floor: RocksDB's calls per labelled pair | {f.get('error') or f.get('skipped')} | | | | |"]
    lines = []
    for kind, e in f["ids"].items():
        s = e["stores"]["daemon"]
        tuned = "; ".join(f"{_FLOOR_TUNINGS.get(v, v)} {t['ratio']['cpu']:.2f}" for v, t in e["stores"].items()
                          if v != "daemon")
        lines.append(
            f"| 6. floor, {kind} ids, {f['pending']:,} entries: RocksDB's calls per labelled pair (get of a present "
            f"key {s['get_us']['cpu']:.2f} us, write batch put + delete {s['batch_us']['cpu'] + s['write_us']['cpu']:.2f} "
            f"us; RocksStore's options) minus the dict's (insert, move_to_end, pop: {e['dict_us']['cpu']:.2f} us) "
            f"| {s['over_dict_us']['cpu']:.2f} us | budget {f['budget_us']['cpu']:.2f} us (0.2 x "
            f"{f['pipeline_us']['cpu']:.2f} us, the pipeline per pair with the join before the store) "
            f"| {s['ratio']['cpu']:.2f} ({s['ratio']['wall']:.2f}; rounds {s['ratio_range'][0]:.2f} to "
            f"{s['ratio_range'][1]:.2f}, of the means {s['ratio_of_means']['cpu']:.2f}); minus the whole join before the store "
            f"{s['over_join']['cpu']:.2f}; tuned: {tuned} | <= 1 for 0.83 to be reachable | |")
    return lines


def restore_markdown(k: dict) -> list[str]:
    lines = [f"## Restore of a partition from its join changelog ({k.get('run_at', 'run')}; "
             "`python -m bench.run --only restore`)", ""]
    if "error" in k or "skipped" in k:
        return lines + [f"Not measured: {k.get('error') or k.get('skipped')}"]
    lines += ["One changelog partition of N pending joins on Apache Kafka, restored as the consuming thread does "
              "(fence, read applying chunks of 10,000 records to the RocksDB store, install), beside the restore "
              "before it was chunked (the whole partition read into a dict, then put into the store), measured "
              "after it in the same process. Peak RSS: the process's VmHWM during the restore (reset just before "
              "it); growth: over its RSS when the restore started.", "",
              "| pending joins | total (chunked) | total (whole dict) | peak RSS (chunked) | peak RSS (whole dict) "
              "| growth (chunked) | growth (whole dict) | growth ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for row in k["rows"]:
        lines.append(f"| {row['pending']:,} | {row['total_s']:.1f} s | {row['whole_total_s']:.1f} s "
                     f"| {row['peak_rss_mib']:.0f} MiB | {row['whole_peak_rss_mib']:.0f} MiB "
                     f"| +{row['peak_growth_mib']:.0f} MiB | +{row['whole_peak_growth_mib']:.0f} MiB "
                     f"| {row['peak_growth_ratio']:.3f} |")
    return lines


def soak_markdown(k: dict) -> list[str]:
    lines = [f"## Soak ({k.get('run_at', 'run')}; `python -m bench.run --only soak`)", ""]
    if "error" in k or "skipped" in k:
        return lines + [f"Not measured: {k.get('error') or k.get('skipped')}"]
    p, c, rss, ready = k["produced"], k["counted"], k["rss_mib"], k["readyz"]
    lines += [
        f"`driftmon run` as a process for {k['minutes']:g} min at {k['rate_msgs_per_s']:,.0f} msg/s (target; "
        f"{k.get('produced_msgs_per_s') or 0:,.0f} msg/s produced on average) on Apache "
        f"Kafka (2 partitions), the broker stopped for {k['down_s']:g} s and restarted on the same data "
        f"directory every {k['restart_every_s']:g} s ({len(k['outages'])} outages), one poison record in "
        f"about a thousand ({', '.join(k['poison_kinds'])}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| counts exact (events over every window + the open one == valid records read back from the topic; "
        f"invalid == poison records) | {'yes' if k['exact'] else '**no**'}: {c['events']:,} events / "
        f"{p['valid']:,} valid, {c['invalid']:,} invalid / {p['poison']:,} poison |",
        f"| daemon exited during the run | {'**yes**' if k['daemon_exited_during_run'] else 'no'} "
        f"(tracebacks in its log: {k['tracebacks_in_log']}) |",
        f"| SIGTERM at the end | exit {k['exit_code']} in {k['stop_seconds']} s |",
        f"| RSS, max of the first minute / of the last minute / overall | {rss['first_minute_max']} / "
        f"{rss['last_minute_max']} / {rss['max']} MiB |",
        f"| longest time for /readyz to go non-200 after a broker stop | {ready['longest_to_go_false_s']} s "
        f"(went non-200 in {ready['went_false_in']}) |",
        f"| longest time for /readyz to be 200 again after a restart | {ready['longest_to_come_back_s']} s |",
    ]
    if k["poison_left_out"]:
        lines += ["", "Poison kinds left out because this checkout's decoder does not make them one invalid event: "
                  + "; ".join(f"{a}: {b}" for a, b in k["poison_left_out"].items())]
    lines += ["", "RSS by minute (max, MiB): "
              + ", ".join(f"{m['minute']}: {m['rss_mib']}" for m in rss["per_minute"]), "",
              "Outages (seconds from the start; /readyz non-200 after the stop, 200 again after the restart): "
              + "; ".join(f"{o['at_s']:g}: {o['not_ready_after_s']} / {o['ready_again_after_s']}"
                          for o in k["outages"])]
    return lines


def measured_on(machine: dict) -> str:
    """The host and code of a run, kept with each of its figures: a partial run rewrites the Machine table, and
    figures kept from earlier runs may come from another host (these machines change between sessions)."""
    commit = (machine.get("git") or {}).get("commit")
    return f"{machine['cpu_model']}, {machine['cores']} cores" + (f", commit {commit[:8]}" if commit else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one or two rounds: a smoke run")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of {','.join(BENCHES + OPTIONAL)}")
    parser.add_argument("--soak-minutes", type=float, default=None,
                        help="how long the soak runs (default 30; env DRIFTMON_SOAK_MINUTES)")
    parser.add_argument("--out", default=None,
                        help="folder for results.json and RESULTS.md (default: bench/, or bench/quick/ with --quick)")
    args = parser.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHES + OPTIONAL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out = Path(args.out) if args.out else (REPO / "bench" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)  # tests.brokers and the memory child import from the repo root

    started = time.perf_counter()
    doc = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine_info(),
        "results": {},
    }
    log(f"machine: {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores, "
        f"Python {doc['machine']['python']}; crc32c importable: {doc['machine']['crc32c']['importable']}")
    failed = False
    if args.soak_minutes is not None:
        os.environ["DRIFTMON_SOAK_MINUTES"] = str(args.soak_minutes)
    try:  # a partial run keeps the other benchmarks' last results (each says when it ran)
        previous_doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
        previous = previous_doc["results"]
    except (OSError, ValueError, KeyError):
        previous_doc, previous = {}, {}
    for name, entry in previous.items():
        if name not in only:
            entry.setdefault("run_at", previous_doc.get("started_at", "an earlier run"))
            doc["results"][name] = entry
    for name in BENCHES + OPTIONAL:
        if name not in only:
            continue
        log(f"== {name}")
        t0 = time.perf_counter()
        try:
            doc["results"][name] = _module(name).run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            doc["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        doc["results"][name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        doc["results"][name]["run_at"] = doc["started_at"]
        doc["results"][name]["measured_on"] = measured_on(doc["machine"])
    doc["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=float) + "\n", encoding="utf-8")
    text = markdown(doc)
    (out / "RESULTS.md").write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} in {doc['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
