"""Figure 1: in-process pipeline throughput against the bare "decode into columns" rate.

Subject: ``monitor.pipeline.Pipeline.process`` over batches of 2000 wide() messages
(decode, extract, window update, and an evaluation every 5000 events).

Ceiling: the least any pipeline must do with the same batches: msgspec decodes the
batch (one JSON array) into a list of typed Structs made for exactly this schema
(no optional fields, no unions), then the same columns the pipeline's decoder
yields are built: 19 float64 arrays (18 numeric features and the score), 8 lists
(7 categorical features and the prediction), the ids, and the event times as a
float64 array of epoch seconds (msgspec parses the ISO 8601 timestamps in C).
"""

from __future__ import annotations

import datetime as _dt

import msgspec
import numpy as np

from bench.common import (batches_from_pool, interleave, log, message_pool, round_sizes, summarize, time_batches,
                          wide_setup)

BATCH = 2000
WINDOW = 5000
TARGET_RATE = 200_000


class ColumnsCeiling:
    """Fastest-known decode of wide() messages into numpy columns (see the module docstring)."""

    def __init__(self, synth):
        self.numeric, self.categorical, fields = [], [], []
        for spec in synth.specs:
            key = (spec.path or spec.name).split(".")[-1]
            if spec.type == "numeric":
                self.numeric.append(spec.name)
                fields.append((key, float))
            else:
                self.categorical.append(spec.name)
                fields.append((key, str))
        # Struct fields keep the spec order: numeric first in wide(), then categorical.
        order = [s.name for s in synth.specs]
        self._num_idx = [order.index(n) for n in self.numeric]
        self._cat_idx = [order.index(n) for n in self.categorical]
        inputs = msgspec.defstruct("BenchInputs", fields, gc=False)
        message = msgspec.defstruct("BenchMessage", [
            ("id", str), ("timestamp", _dt.datetime), ("inputs", inputs),
            ("y_pred", int), ("y_pred_proba", float)], gc=False)
        self._decoder = msgspec.json.Decoder(list[message])

    def columns(self, values: list[bytes]) -> dict:
        msgs = self._decoder.decode(b"[" + b",".join(values) + b"]")
        astuple = msgspec.structs.astuple
        rows = list(zip(*[astuple(m.inputs) for m in msgs]))
        cols = {name: np.array(rows[i], dtype=np.float64) for name, i in zip(self.numeric, self._num_idx)}
        for name, i in zip(self.categorical, self._cat_idx):
            cols[name] = list(rows[i])
        cols["y_pred"] = [m.y_pred for m in msgs]
        cols["y_pred_proba"] = np.array([m.y_pred_proba for m in msgs], dtype=np.float64)
        cols["\x00id"] = [m.id for m in msgs]
        cols["\x00timestamp"] = np.array([m.timestamp.timestamp() for m in msgs], dtype=np.float64)
        return cols


def _check_same_columns(ceiling: ColumnsCeiling, pipeline, values: list[bytes]) -> None:
    """The ceiling must produce what the pipeline's decoder produces, or it is no ceiling."""
    mine = ceiling.columns(values)
    batch = pipeline.decoder.decode(values)
    for name, col in batch.columns.items():
        ref = mine[name]
        if isinstance(col, np.ndarray):
            if not np.array_equal(col, ref):
                raise AssertionError(f"ceiling column {name} differs from the pipeline's")
        elif [str(v) for v in col] != [str(v) for v in ref]:
            raise AssertionError(f"ceiling column {name} differs from the pipeline's")
    if not np.allclose(batch.timestamps, mine["\x00timestamp"], rtol=0, atol=1e-6):
        raise AssertionError("ceiling timestamps differ from the pipeline's")
    if list(batch.ids) != mine["\x00id"]:
        raise AssertionError("ceiling ids differ from the pipeline's")


def run(quick: bool = False) -> dict:
    from monitor.daemon import streaming_gc
    from monitor.pipeline import Pipeline

    pool_n = 20_000 if quick else 100_000
    per_round, rounds = round_sizes(quick)
    synth, config, baseline = wide_setup("pipeline", 20_000 if quick else 100_000, {"window": {"size": WINDOW}})
    log(f"pipeline: generating a pool of {pool_n:,} wide() messages")
    pool = message_pool(pool_n, seed=1)
    mean_bytes = float(np.mean([len(m) for m in pool]))
    ceiling = ColumnsCeiling(synth)
    _check_same_columns(ceiling, Pipeline(config, baseline), pool[:BATCH])

    # Both sides run under the daemon's garbage-collector setting (monitor.daemon.streaming_gc), as
    # the pipeline does in production; the ceiling gets the same benefit, so the ratio stays honest.
    def run_ceiling() -> dict:
        with streaming_gc():
            return time_batches(ceiling.columns, batches_from_pool(pool, BATCH, per_round))

    def run_subject() -> dict:
        pipeline = Pipeline(config, baseline)
        windows = []
        with streaming_gc():
            got = time_batches(lambda chunk: windows.extend(pipeline.process(chunk)[0]),
                               batches_from_pool(pool, BATCH, per_round))
        if pipeline.invalid:
            raise AssertionError(f"pipeline rejected messages: {dict(pipeline.invalid)}")
        return {**got, "windows": len(windows)}

    run_ceiling(), run_subject()  # warm-up: imports, caches, allocator
    rounds_out = interleave(run_ceiling, run_subject, rounds, log=log, label="pipeline")
    summary = summarize(rounds_out, "rate")
    return {
        "what": "Pipeline.process over batches of 2000 wide() messages, 5000-event windows, one core, "
                "under the daemon's GC setting (both sides)",
        "ceiling_what": "msgspec typed-Struct decode of the batch + the same numpy columns (incl. epoch timestamps)",
        "batch": BATCH,
        "window": WINDOW,
        "messages_per_round": per_round,
        "rounds": rounds,
        "pool": pool_n,
        "mean_message_bytes": round(mean_bytes, 1),
        "columns": len(config.schema.columns()),
        "windows_per_round": rounds_out[0]["subject"]["windows"],
        "subject_msgs_per_s": summary["subject_median"],
        "ceiling_msgs_per_s": summary["ceiling_median"],
        "ratio": summary["ratio_median"],
        "detail": summary,
        "target": {"subject_msgs_per_s": TARGET_RATE},
        "met": summary["subject_median"] >= TARGET_RATE,
    }
