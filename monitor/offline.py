"""`driftmon compare`: one reference-versus-current comparison of two data files, no Kafka.

The same profiles, statistics and decision rule as the daemon, with the current file
counted column by column in Arrow (categories) and numpy (numbers) instead of
message by message.
"""

from __future__ import annotations

import os

from detectors import CategoryCounter
from detectors.window import FeatureDrift
from monitor.baseline import (Baseline, _arrow_column, _column, build_baseline, categorical_names, category_counts,
                              read_table)
from monitor.config import Config
from monitor.registry import feature_policies
from monitor.window import Evaluator, Window

__all__ = ["compare_files"]


def compare_files(config: Config, current_path: str, reference_path: str | None = None) -> dict:
    """The drift result of ``current_path`` against a reference file or the config's baseline."""
    if reference_path is not None:
        baseline = build_baseline(config, reference_path)
    else:
        baseline = Baseline.load(config.baseline)
        baseline.check(config)
    table = read_table(current_path, categorical_names(config))
    names = [spec.name for role, spec in config.drift_columns() if _present(table, spec)]
    missing = [spec.name for _role, spec in config.drift_columns() if spec.name not in names]
    if any(role == "feature" for role, spec in config.drift_columns() if spec.name in missing):
        raise ValueError(f"{current_path} lacks feature columns: {missing}")
    features = [spec.name for role, spec in config.drift_columns() if role == "feature"]
    outputs = {role: spec.name for role, spec in config.drift_columns() if role != "feature" and spec.name in names}
    window = Window(baseline, detectors=[FeatureDrift(baseline.profiles, feature_policies(config), features, outputs)])
    for _role, spec in config.drift_columns():
        if spec.name not in names:
            continue
        acc = window.accumulators[spec.name]
        if isinstance(acc, CategoryCounter):
            acc.update_counts(*category_counts(_arrow_column(table, spec)))
        else:
            acc.update(_column(table, spec))
    window.events = table.num_rows
    evaluator = Evaluator(config, baseline)
    result = evaluator.evaluate(window)
    result["window"]["source"] = os.path.basename(current_path)
    return result


def _present(table, spec) -> bool:
    try:
        _arrow_column(table, spec)
        return True
    except ValueError:
        return False
