"""What the test of material drift costs, next to decoding the window it judges.

``python -m bench.decision`` builds the wide() setup (25 features, prediction and score:
27 monitored columns), fills one 5,000-event window through the pipeline, and times, in
alternating rounds:

- decode: ``Pipeline.decoder.decode`` of the window's 5,000 messages (the least the
  pipeline does per window, see figure 1 of bench/README.md);
- evaluate: ``Evaluator.evaluate`` of the window (every statistic, the material tests,
  Holm, the result dict);
- material: the material tests alone (``material_wasserstein`` / ``material_divergence``
  for the 27 columns, on the same counts).

Prints one JSON object: medians in microseconds per window and the ratios to decoding.
"""

from __future__ import annotations

import json
import statistics

from bench.common import Timer, log, make_setup, message_pool, scratch_dir

WINDOW = 5000
ROUNDS = 15


def run() -> dict:
    from detectors import CategoricalProfile
    from detectors.drift import _unselected
    from detectors.stats import material_divergence, material_wasserstein
    from monitor.pipeline import Pipeline
    from monitor.synth import wide

    _path, config, baseline = make_setup(scratch_dir("driftmon-decision-"), wide(1), 50_000)
    pool = message_pool(WINDOW)
    pipeline = Pipeline(config, baseline)
    pipeline.process(pool[:WINDOW - 1])  # one event short of closing: the window stays open to evaluate
    window, evaluator = pipeline.window, pipeline.evaluator
    columns = []
    for _role, spec in config.drift_columns():
        profile, acc = baseline.profiles[spec.name], window.accumulators[spec.name]
        columns.append((spec.name, profile, acc))

    def material():
        for _name, profile, acc in columns:
            if isinstance(profile, CategoricalProfile):
                p = list(profile.counts) + [profile.other_count, 0]
                q = list(acc.counts) + [acc.other, acc.unseen]
                import numpy as np

                material_divergence(*_unselected(profile, np.array(p, float), np.array(q, float)),
                                    "jensen_shannon", 0.05)
            elif profile.std:
                material_wasserstein(profile.edges, profile.counts, acc.counts, min(profile.min, acc.min),
                                     max(profile.max, acc.max), profile.sums, acc.sums, profile.std, acc.std, 0.1,
                                     scale=profile.std)

    subjects = {"decode": lambda: pipeline.decoder.decode(pool[:WINDOW]),
                "evaluate": lambda: evaluator.evaluate(window), "material": material}
    times = {k: [] for k in subjects}
    for f in subjects.values():
        f()  # warm-up
    for r in range(ROUNDS):
        for name in (list(subjects) if r % 2 == 0 else list(reversed(subjects))):
            with Timer() as t:
                subjects[name]()
            times[name].append(t.seconds * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"window_events": WINDOW, "columns": len(columns), "rounds": ROUNDS,
           "decode_us": round(med["decode"]), "evaluate_us": round(med["evaluate"]),
           "material_tests_us": round(med["material"]),
           "material_us_per_column": round(med["material"] / len(columns), 1),
           "material_over_decode": round(med["material"] / med["decode"], 4),
           "evaluate_over_decode": round(med["evaluate"] / med["decode"], 4)}
    log(f"decode {med['decode']:.0f} us, evaluate {med['evaluate']:.0f} us, material tests {med['material']:.0f} us "
        f"per {WINDOW}-event window of {len(columns)} columns")
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
