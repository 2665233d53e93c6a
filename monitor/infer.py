"""`driftmon init`: a starter config with column roles and feature types inferred from training data."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from monitor.baseline import read_table

__all__ = ["infer_columns", "starter_config"]

#: An integer column with at most this many distinct values is treated as categorical (codes, flags, ratings).
MAX_INT_LEVELS = 15

_ROLES = (
    ("id", re.compile(r"^(id|.*_id|uuid|request_id|event_id)$", re.I)),
    ("timestamp", re.compile(r"^(timestamp|ts|time|event_time|created_at|.*_at)$", re.I)),
    ("score", re.compile(r"^(.*proba.*|.*probability.*|score|y_score|.*_score)$", re.I)),
    ("prediction", re.compile(r"^(y_pred|pred|prediction|predicted.*|.*_pred)$", re.I)),
    ("label", re.compile(r"^(label|target|y|y_true|ground_truth|outcome)$", re.I)),
)


def _kind(column: pa.ChunkedArray, rows: int) -> tuple[str, str]:
    """(type, reason) for a feature column."""
    t = column.type
    distinct = pc.count_distinct(column).as_py()
    if pa.types.is_boolean(t):
        return "categorical", "boolean values"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "categorical", f"text values, {distinct} distinct"
    if pa.types.is_integer(t):
        if distinct <= MAX_INT_LEVELS:
            return "categorical", f"integers with only {distinct} distinct values (<= {MAX_INT_LEVELS}): codes or levels"
        return "numeric", f"integers with {distinct} distinct values"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        if distinct <= 2:
            return "categorical", f"floats with only {distinct} distinct values: a flag"
        return "numeric", f"floating point, {distinct} distinct values"
    return "categorical", f"type {t}: treated as labels"


def infer_columns(path: str) -> tuple[dict, list[tuple[str, str, str]], int]:
    """Infer roles and feature types.

    Returns
    -------
    (roles, features, rows)
        roles: role -> column name for id, timestamp, prediction, score, label (those found);
        features: (name, type, reason) for the rest; rows: row count.
    """
    table = read_table(path)
    flat = table.flatten()
    roles: dict[str, str] = {}
    features = []
    for name in flat.column_names:
        role = next((r for r, pattern in _ROLES if pattern.match(name.split(".")[-1]) and r not in roles), None)
        column = flat.column(name)
        if role == "timestamp" and not (pa.types.is_timestamp(column.type) or pa.types.is_string(column.type)
                                         or pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            role = None
        if role is not None:
            roles[role] = name
            continue
        kind, reason = _kind(column, table.num_rows)
        features.append((name, kind, reason))
    return roles, features, table.num_rows


def starter_config(path: str, model: str = "my-model") -> str:
    """A commented YAML config for the training data at ``path``."""
    roles, features, rows = infer_columns(path)
    table = read_table(path).flatten()
    lines = [
        f"# driftmon starter config inferred from {path} ({rows} rows).",
        "# Review the types below: each line says why it was chosen. Then run:",
        "#   driftmon baseline --config driftmon.yaml --data " + path + " --out baseline.json",
        f"model: {model}",
        "kafka:",
        '  bootstrap_servers: "127.0.0.1:9092"',
        "  topic: predictions",
        f"  group_id: driftmon-{model}",
        "schema:",
        f"  id: {{path: {roles.get('id', 'id')}}}" + ("" if "id" in roles else "   # not found in the data: adjust"),
    ]
    if "timestamp" in roles:
        lines.append(f"  timestamp: {{path: {roles['timestamp']}}}")
    lines.append("  features:")
    for name, kind, reason in features:
        short = name.split(".")[-1]
        path_part = f", path: {name}" if "." in name else ""
        lines.append(f"    - {{name: {short}, type: {kind}{path_part}}}   # {reason}")
    for role in ("prediction", "score", "label"):
        if role in roles:
            name = roles[role]
            kind = "numeric" if role == "score" else _kind(table.column(name), rows)[0]
            lines.append(f"  {role}: {{name: {name}, type: {kind}}}")
    lines += [
        "baseline: baseline.json",
        "window:",
        "  size: 5000          # events per tumbling window; or `duration: 10m`",
        "http:",
        "  port: 9108",
        "state:",
        "  dir: state",
        "",
    ]
    return "\n".join(lines)
