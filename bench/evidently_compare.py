"""Figure 4: one reference-vs-current drift comparison, Evidently's DataDriftPreset against driftmon.

Both start from the same two Parquet files (25 feature columns each: 18 numeric, 7
categorical): the reference is wide() training data, the current sample is wide()
with its drift switched on (``num_0`` shifted by a quarter of its standard deviation).

* Evidently: read both files with pandas, ``Report([DataDriftPreset()]).run(...)`` with a
  DataDefinition naming the numeric and categorical columns, and ``snapshot.dict()`` to
  materialize every result.
* driftmon: ``monitor.offline.compare_files`` (``driftmon compare --reference ...
  --current ...``): ``build_baseline`` on the reference file (the baseline profile), the
  current file read with ``read_table`` and counted column by column into one 100k-row
  window, and ``Evaluator.evaluate`` on it.

The drifted columns each tool reports are recorded next to the times, as a check that
both did the job. A secondary figure times driftmon from raw JSON messages instead of
Parquet (the current window fed through ``Pipeline.process``), for information.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import FIXED_START, Timer, interleave, log, make_setup, scratch_dir, summarize

TARGET_SPEEDUP = 50.0


def _evidently_drifted(snapshot_dict: dict) -> tuple[list[str], float | None]:
    drifted, count = [], None
    for metric in snapshot_dict.get("metrics", []):
        cfg = metric.get("config", {})
        kind = cfg.get("type", "")
        if kind.endswith("DriftedColumnsCount"):
            count = metric["value"]["count"]
        elif kind.endswith("ValueDrift"):
            value, threshold = metric["value"], cfg.get("threshold")
            method = str(cfg.get("method", "")).lower()
            if threshold is None:
                continue
            hit = value < threshold if "p_value" in method else value >= threshold
            if hit:
                drifted.append(cfg["column"])
    return sorted(drifted), count


def run(quick: bool = False) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from monitor.baseline import build_baseline
    from monitor.offline import compare_files
    from monitor.pipeline import Pipeline
    from monitor.synth import wide

    rows = 10_000 if quick else 100_000
    rounds = 1 if quick else 3

    tmp = Path(scratch_dir("driftmon-bench-evidently-"))
    reference_synth, current_synth = wide(0), wide(1, drift=True)
    _, config, _ = make_setup(tmp, reference_synth, 1000, {"window": {"size": rows}}, drop=("prediction", "score"))
    features = [f.name for f in config.schema.features]
    numeric = [f.name for f in config.schema.features if f.type == "numeric"]
    categorical = [f.name for f in config.schema.features if f.type == "categorical"]

    def write(path: Path, cols: dict) -> str:
        pq.write_table(pa.table({k: cols[k].tolist() if cols[k].dtype.kind in "OU" else cols[k] for k in features}),
                       path)
        return str(path)

    ref_path = write(tmp / "reference.parquet", reference_synth.columns(rows))
    cur_path = write(tmp / "current.parquet", current_synth.columns(rows, drifted=True))
    log(f"evidently: {rows:,} reference and {rows:,} current rows, {len(features)} features "
        f"(Evidently {evidently.__version__})")
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    verdicts: dict[str, list] = {}

    def run_driftmon() -> dict:
        with Timer() as t:  # what `driftmon compare --reference ref --current cur` does
            result = compare_files(config, cur_path, ref_path)
        verdicts["driftmon"] = result["drifted"]
        return {"seconds": t.seconds}

    def run_evidently() -> dict:
        import pandas as pd

        with Timer() as t:
            reference = pd.read_parquet(ref_path)
            current = pd.read_parquet(cur_path)
            snapshot = Report([DataDriftPreset()]).run(
                current_data=Dataset.from_pandas(current, data_definition=definition),
                reference_data=Dataset.from_pandas(reference, data_definition=definition))
            doc = snapshot.dict()
        verdicts["evidently"], verdicts["evidently_count"] = _evidently_drifted(doc)
        return {"seconds": t.seconds}

    # Warm-up both (imports, first-call caches), Evidently on a small slice of the same data.
    run_driftmon()
    import pandas as pd

    small = {k: Dataset.from_pandas(pd.read_parquet(p).head(2000), data_definition=definition)
             for k, p in (("reference", ref_path), ("current", cur_path))}
    Report([DataDriftPreset()]).run(current_data=small["current"], reference_data=small["reference"]).dict()
    rounds_out = interleave(run_evidently, run_driftmon, rounds, log=log, label="evidently")
    summary = summarize(rounds_out, "seconds", higher_is_better=False)

    # For information: driftmon from raw JSON (the current window decoded by the pipeline).
    messages = current_synth.messages(rows, drift_at=0, start_time=FIXED_START)
    json_times = []
    for _ in range(rounds):
        with Timer() as t:
            baseline = build_baseline(config, ref_path)
            pipeline = Pipeline(config, baseline)
            results = []
            for i in range(0, rows, 5000):
                results += pipeline.process(messages[i:i + 5000])[0]
        json_times.append(t.seconds)
    json_times.sort()
    return {
        "what": f"reference-vs-current drift check, {rows:,} + {rows:,} rows, {len(features)} features, from Parquet",
        "subject_what": "driftmon compare: build_baseline(reference) + the current file counted into one window + evaluate",
        "ceiling_what": "Evidently Report([DataDriftPreset()]).run + snapshot.dict()",
        "rows": rows,
        "features": len(features),
        "rounds": rounds,
        "evidently_version": evidently.__version__,
        "evidently_seconds": summary["ceiling_median"],
        "driftmon_seconds": summary["subject_median"],
        "speedup": summary["ratio_median"],
        "driftmon_from_json_seconds": json_times[len(json_times) // 2],
        "drifted": {"driftmon": verdicts.get("driftmon"), "evidently": verdicts.get("evidently"),
                    "evidently_count": verdicts.get("evidently_count"),
                    "truth": [s.name for s in current_synth.specs if s.drift is not None]},
        "detail": summary,
        "target": {"speedup": TARGET_SPEEDUP},
        "met": summary["ratio_median"] >= TARGET_SPEEDUP,
    }
