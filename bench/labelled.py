"""Labelled throughput: the in-process pipeline with labels inline, two fairness attributes and a segment.

``python -m bench.labelled [--quick]`` runs ``Pipeline.process`` over batches of 2000 wide()
messages (which carry the label ``repaid``) with one config two ways per round, alternating:
with ``schema.label`` set (labels inline, ``labels.window`` 5000, fairness attributes ``cat_0``
(3 groups) and ``cat_1`` (7 groups), both monitored features too, and the segment ``cat_2``
(11 values)) and the same config without ``schema.label`` (the same file without labels: the
segment's drift is computed either way, performance and fairness only with labels). Prints one
JSON object: the median rates and the median per-round ratio labelled / unlabelled (target
>= 0.5), and, for reference, figure 1's plain config (no segment) in the same rounds.
"""

from __future__ import annotations

import json
import statistics
import sys

from bench.common import (batches_from_pool, log, make_setup, message_pool, round_sizes, scratch_dir, time_batches,
                          wide_setup)

BATCH = 2000
WINDOW = 5000
TARGET_RATIO = 0.5


def labelled_overrides() -> dict:
    return {"window": {"size": WINDOW}, "labels": {"window": WINDOW, "positive": "1"},
            "segments": [{"name": "cat_2", "path": "inputs.cat_2", "max_values": 20}],
            "fairness": {"attributes": [{"name": "cat_0", "path": "inputs.cat_0"},
                                        {"name": "cat_1", "path": "inputs.cat_1"}], "favourable": "1"}}


def run(quick: bool = False) -> dict:
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config
    from monitor.daemon import streaming_gc
    from monitor.pipeline import Pipeline

    pool_n = 20_000 if quick else 100_000
    per_round, rounds = round_sizes(quick)
    train_rows = 20_000 if quick else 100_000
    synth, plain_config, plain_baseline = wide_setup("plain", train_rows, {"window": {"size": WINDOW}})
    tmp = scratch_dir("driftmon-bench-labelled-")
    path, unlabelled_config, unlabelled_baseline = make_setup(tmp, synth, train_rows, labelled_overrides())
    with open(path, encoding="utf-8") as fh:
        tree = yaml.safe_load(fh)
    tree["schema"]["label"] = {"name": "repaid", "type": "categorical"}
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    config = load_config(path)
    build_baseline(config, f"{tmp}/train.parquet").save(config.baseline)
    baseline = Baseline.load(config.baseline)
    assert unlabelled_config.schema.label is None and config.schema.label is not None
    log(f"labelled: generating a pool of {pool_n:,} wide() messages")
    pool = message_pool(pool_n, seed=1)

    def runner(cfg, base, labelled):
        def go() -> dict:
            pipeline = Pipeline(cfg, base)
            perf = 0

            def step(chunk):
                nonlocal perf
                pipeline.process(chunk)
                perf += len(pipeline.take_performance())

            with streaming_gc():
                got = time_batches(step, batches_from_pool(pool, BATCH, per_round))
            if labelled and perf != per_round // WINDOW:
                raise AssertionError(f"expected {per_round // WINDOW} performance windows, got {perf}")
            return {**got, "performance_windows": perf}
        return go

    unlabelled, labelled = runner(unlabelled_config, unlabelled_baseline, False), runner(config, baseline, True)
    plain = runner(plain_config, plain_baseline, False)
    unlabelled(), labelled(), plain()  # warm-up
    subjects = {"unlabelled": unlabelled, "labelled": labelled, "plain": plain}
    rates = {k: [] for k in subjects}
    for r in range(rounds):  # the three alternate, each round in a rotated order (the machine's speed wanders)
        order = list(subjects)[r % 3:] + list(subjects)[:r % 3]
        for name in order:
            rates[name].append(subjects[name]()["rate"])
        log(f"  labelled round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:,.0f} msg/s" for k, v in rates.items()))
    ratios = [a / b for a, b in zip(rates["labelled"], rates["unlabelled"])]
    plain_ratios = [a / b for a, b in zip(rates["labelled"], rates["plain"])]
    summary = {"subject_median": statistics.median(rates["labelled"]),
               "ceiling_median": statistics.median(rates["unlabelled"]),
               "ratio_median": statistics.median(ratios), "ratios": ratios, "rates": rates}
    out = {
        "what": "Pipeline.process, batches of 2000 wide() messages, labels inline, 2 fairness attributes, 1 segment",
        "reference_what": "the same config and messages without schema.label",
        "messages_per_round": per_round, "rounds": rounds,
        "labelled_msgs_per_s": summary["subject_median"], "unlabelled_msgs_per_s": summary["ceiling_median"],
        "ratio": summary["ratio_median"], "detail": summary, "target": {"ratio": TARGET_RATIO},
        "met": summary["ratio_median"] >= TARGET_RATIO,
        "plain_msgs_per_s": statistics.median(rates["plain"]),
        "labelled_over_plain": statistics.median(plain_ratios),
        "plain_what": "figure 1's config (no segment, no labels), in the same rounds",
    }
    log(f"labelled {out['labelled_msgs_per_s']:,.0f} msg/s, unlabelled {out['unlabelled_msgs_per_s']:,.0f} msg/s, "
        f"ratio {out['ratio']:.2f}; figure 1's plain config {out['plain_msgs_per_s']:,.0f} msg/s "
        f"(labelled / plain {out['labelled_over_plain']:.2f})")
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:])))
