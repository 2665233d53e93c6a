"""`driftmon init`: a starter config with column roles and feature types inferred from training data.

Every choice comes with its reason, as a YAML comment, so the first baseline a new user builds is one
they keep: event-time columns go to ``schema.timestamp`` (never a feature: every value is new), columns
with a distinct value per row are ids or free text (a categorical feature of them would be all unseen
categories), and the prediction, score and label are recognized by their names and their values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitor.baseline import read_table
from monitor.values import category_name

__all__ = ["Inference", "infer_columns", "starter_config"]

#: An integer column with at most this many distinct values is treated as categorical (codes, flags, ratings).
MAX_INT_LEVELS = 15
#: A text column with at least this share of distinct values (among its non-missing ones) is an id or free text.
UNIQUE_SHARE = 0.9
#: Values checked when deciding whether text holds timestamps.
SAMPLE = 200

_NAMES = {
    "id": re.compile(r"^(id|uuid|guid|.*_id|.*_uuid|request|request_?id|event_?id)$", re.I),
    "timestamp": re.compile(r"^(timestamp|ts|time|datetime|date|event_?time|.*_at|.*_time|.*_ts|.*_date)$",
                            re.I),
    "score": re.compile(r"^(.*proba.*|.*probability.*|score|y_score|.*_score|confidence|likelihood)$", re.I),
    "prediction": re.compile(r"^(y_?pred|y_hat|yhat|pred|preds|prediction|predicted.*|.*_pred|.*_prediction|"
                             r"output|decision)$", re.I),
    "label": re.compile(r"^(label|labels|target|y|y_?true|ground_?truth|outcome|actual|truth|class)$", re.I),
}
# The score pattern would take a feature like "credit_score": a score must also be a probability.
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass
class Inference:
    """What ``driftmon init`` found: each role's column and reason, the features, and the skipped columns."""

    rows: int
    roles: dict = field(default_factory=dict)  # role -> (column, type or None, reason)
    features: list = field(default_factory=list)  # (column, type, reason)
    skipped: list = field(default_factory=list)  # (column, reason)
    dimensions: dict = field(default_factory=dict)  # embedding feature -> vector length
    positive: tuple | None = None  # (label value the score is the probability of, reason)


def _is_text(t) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _values(column: pa.ChunkedArray, n: int = SAMPLE) -> list:
    """Up to ``n`` non-missing values, spread over the column."""
    present = pc.drop_null(column)
    if len(present) == 0:
        return []
    step = max(1, len(present) // n)
    return present.take(pa.array(np.arange(0, len(present), step)[:n])).to_pylist()


def _looks_iso(values: list) -> bool:
    if not values:
        return False
    ok = 0
    for v in values:
        if isinstance(v, str) and _ISO.match(v.strip()):
            try:
                datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
                ok += 1
            except ValueError:
                pass
    return ok >= 0.95 * len(values)


def _kind(column: pa.ChunkedArray, distinct: int) -> tuple[str, str]:
    """(type, reason) for a feature column."""
    t = column.type
    if pa.types.is_boolean(t):
        return "categorical", "boolean values"
    if _is_text(t) or pa.types.is_dictionary(t):
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


def _binary(values: np.ndarray) -> bool:
    return np.unique(values[~np.isnan(values)]).size == 2


def _as_float(column: pa.ChunkedArray) -> np.ndarray | None:
    t = column.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return None


def _auc(score: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC of ``score`` for the larger of ``y``'s two values (Mann-Whitney), None if undefined."""
    ok = ~(np.isnan(score) | np.isnan(y))
    score, y = score[ok], y[ok]
    levels = np.unique(y)
    if levels.size != 2:
        return None
    pos = y == levels[1]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def infer_columns(path: str) -> Inference:
    """Infer roles, feature types and skipped columns, each with its reason."""
    table = read_table(path).flatten()
    rows = table.num_rows
    out = Inference(rows=rows)
    columns = {name: table.column(name) for name in table.column_names}
    for name in [n for n, c in columns.items() if pa.types.is_nested(c.type)]:
        # lists of numbers of one length are embeddings; other nested values cannot be profiled
        col = columns.pop(name)
        t = col.type
        lengths = set(pc.unique(pc.list_value_length(col)).to_pylist()) - {None} \
            if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) else set()
        numeric = bool(lengths) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))
        if numeric and len(lengths) == 1 and min(lengths) >= 2:
            dimension = lengths.pop()
            out.features.append((name, "embedding", f"lists of {dimension} numbers: an embedding vector"))
            out.dimensions[name] = dimension
        else:
            what = (f"lists of lengths {sorted(lengths)[:5]}" if numeric
                    else f"lists of {t.value_type}" if lengths else f"type {t}")
            out.skipped.append((name, f"{what}: only fixed-length lists of numbers (embeddings) are monitored"))
    distinct = {name: pc.count_distinct(col).as_py() for name, col in columns.items()}
    present = {name: len(col) - col.null_count for name, col in columns.items()}
    taken: set[str] = set()

    def short(name: str) -> str:
        return name.split(".")[-1]

    def named(role: str) -> list[str]:
        return [n for n in columns if n not in taken and _NAMES[role].match(short(n))]

    # event time: datetime types, ISO 8601 text, or epoch numbers under a time-like name
    times = []
    for name, col in columns.items():
        t = col.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            times.append((name, f"a {t} column"))
        elif _is_text(t) and _looks_iso(_values(col)):
            times.append((name, f"ISO 8601 date-times ({distinct[name]} distinct)"))
        elif (pa.types.is_integer(t) or pa.types.is_floating(t)) and _NAMES["timestamp"].match(short(name)):
            values = _as_float(col)
            finite = values[np.isfinite(values)]
            # seconds (or milliseconds) since 1970 between 2000 and 2100
            if finite.size and ((finite > 9.4e8) & (finite < 4.2e9)).all():
                times.append((name, "epoch seconds"))
            elif finite.size and ((finite > 9.4e11) & (finite < 4.2e12)).all():
                out.skipped.append((name, "epoch milliseconds: driftmon reads event times as ISO 8601 or epoch "
                                          "seconds; send seconds to use it as the event time"))
                taken.add(name)
    if times:
        # a time-like name wins (event_time over created_at is a judgment call: say which was picked)
        times.sort(key=lambda item: not _NAMES["timestamp"].match(short(item[0])))
        name, why = times[0]
        out.roles["timestamp"] = (name, None, f"{why}: the event time (windows by `duration` use it)")
        for other, why in times[1:]:
            out.skipped.append((other, f"{why}: another time column"))
        taken.update(n for n, _ in times)

    # the id: by name only (an all-distinct column could as well be free text; it is skipped below, with why)
    for name in named("id"):
        unique = present[name] and distinct[name] == present[name]
        why = "named like an id" + (f", {distinct[name]} distinct values in {present[name]} rows" if unique else "")
        out.roles["id"] = (name, None, why)
        taken.add(name)
        break

    # the score: a probability, i.e. floats in [0, 1], preferably named like one
    def probability(name: str) -> bool:
        values = _as_float(columns[name])
        if values is None or not pa.types.is_floating(columns[name].type):
            return False
        finite = values[np.isfinite(values)]
        return bool(finite.size) and finite.min() >= 0.0 and finite.max() <= 1.0 and distinct[name] > 2

    scores = [n for n in named("score") if probability(n)]
    if scores:
        name = scores[0]
        values = _as_float(columns[name])
        out.roles["score"] = (name, "numeric", f"named like a score, floats in [{np.nanmin(values):.3g}, "
                                               f"{np.nanmax(values):.3g}]")
        taken.add(name)

    # the prediction: by name; or the column that equals score >= 0.5
    score_values = _as_float(columns[out.roles["score"][0]]) if "score" in out.roles else None
    preds = named("prediction")
    prediction_why = None
    if preds:
        name = preds[0]
        prediction_why = "named like a prediction"
    elif score_values is not None:
        name = None
        for n in columns:
            values = _as_float(columns[n])
            if n in taken or values is None or not _binary(values):
                continue
            agree = float(np.nanmean((score_values >= 0.5) == (values == np.nanmax(values))))
            if agree >= 0.95:
                name, prediction_why = n, f"equals score >= 0.5 in {agree:.0%} of rows"
                break
    if prediction_why is not None:
        kind, values_why = _kind(columns[name], distinct[name])
        if score_values is not None and (values := _as_float(columns[name])) is not None and _binary(values):
            agree = float(np.nanmean((score_values >= 0.5) == (values == np.nanmax(values))))
            if "equals" not in prediction_why:
                prediction_why += f", equals score >= 0.5 in {agree:.0%} of rows"
        out.roles["prediction"] = (name, kind, f"{prediction_why}; {values_why}")
        taken.add(name)

    # the label: by name; or a two-valued column the score ranks well (what a model's target looks like)
    labels = named("label")
    if labels:
        name = labels[0]
        kind, values_why = _kind(columns[name], distinct[name])
        why = f"named like a label; {values_why}"
        if "prediction" in out.roles:
            same = set(_values(columns[name], 1000)) <= set(_values(columns[out.roles["prediction"][0]], 1000))
            why += ", the prediction's values" if same else ""
        out.roles["label"] = (name, kind, why)
        taken.add(name)
    elif score_values is not None:
        best = None
        for n in columns:
            values = _as_float(columns[n])
            if n in taken or values is None or not _binary(values):
                continue
            auc = _auc(score_values, values)
            if auc is None:
                continue
            # A calibrated score's mean is its target's positive share; a binary feature's share is anything.
            share = float(np.nanmean(values == np.nanmax(values)))
            mean = float(np.nanmean(score_values))
            if (auc >= 0.7 or (auc >= 0.55 and abs(share - mean) <= 0.03)) and (best is None or auc > best[1]):
                best = (n, auc, share, mean)
        if best is not None:
            name, auc, share, mean = best
            kind, values_why = _kind(columns[name], distinct[name])
            out.roles["label"] = (name, kind, f"two values that the score ranks with ROC AUC {auc:.2f}, positive "
                                              f"share {share:.2f} against a mean score of {mean:.2f}: looks like "
                                              f"the model's target (a strong binary feature could too: check); "
                                              f"{values_why}")
            taken.add(name)

    # performance reads the score as the probability of `labels.positive`, whose default (the minority class)
    # is the wrong one when the positive class is the majority: name the value the score ranks high
    if "label" in out.roles and score_values is not None:
        column = columns[out.roles["label"][0]]
        values = _as_float(column) if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) else None
        auc = _auc(score_values, values) if values is not None and _binary(values) else None
        if auc is not None:
            low, high = np.unique(values[~np.isnan(values)])
            value, shown = (high, auc) if auc >= 0.5 else (low, 1 - auc)
            out.positive = (category_name(float(value)), f"the label value the score ranks high (ROC AUC "
                                                         f"{shown:.2f}): the score is its probability")

    # the rest are features, except ids and free text
    for name, col in columns.items():
        if name in taken:
            continue
        if present[name] == 0:
            out.skipped.append((name, "no values"))
            continue
        share = distinct[name] / present[name]
        if _is_text(col.type) and present[name] > 1 and share >= UNIQUE_SHARE:
            what = "all" if distinct[name] == present[name] else f"{share:.0%} of the"
            out.skipped.append((name, f"{what} {present[name]} values distinct: an id or free text, not a category "
                                      "(every window would be all unseen categories)"))
            continue
        kind, why = _kind(col, distinct[name])
        out.features.append((name, kind, why))
    return out


def _yaml_name(name: str) -> str:
    return name if re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", name) else '"' + name.replace('"', '\\"') + '"'


def starter_config(path: str, model: str = "my-model") -> str:
    """A commented YAML config for the training data at ``path``."""
    found = infer_columns(path)
    roles = found.roles
    lines = [
        f"# driftmon starter config inferred from {path} ({found.rows} rows).",
        "# Review it: each line says why it was chosen. Then run:",
        "#   driftmon baseline --config driftmon.yaml --data " + path + " --out baseline.json",
        f"model: {model}",
        "kafka:",
        '  bootstrap_servers: "127.0.0.1:9092"',
        "  topic: predictions",
        f"  group_id: driftmon-{model}",
        "schema:",
    ]
    if "id" in roles:
        lines.append(f"  id: {{path: {_yaml_name(roles['id'][0])}}}   # {roles['id'][2]}")
    else:
        lines.append("  id: {path: id}   # not found in the data: the field of your prediction messages that holds "
                     "the request id")
    if "timestamp" in roles:
        lines.append(f"  timestamp: {{path: {_yaml_name(roles['timestamp'][0])}}}   # {roles['timestamp'][2]}")
    lines.append("  features:")
    for name, kind, reason in found.features:
        short = name.split(".")[-1]
        path_part = f", path: {_yaml_name(name)}" if "." in name else ""
        if kind == "embedding":
            path_part = f", dimension: {found.dimensions[name]}" + path_part
        lines.append(f"    - {{name: {_yaml_name(short)}, type: {kind}{path_part}}}   # {reason}")
    for role in ("prediction", "score", "label"):
        if role in roles:
            name, kind, reason = roles[role]
            path_part = f", path: {_yaml_name(name)}" if "." in name else ""
            lines.append(f"  {role}: {{name: {_yaml_name(name.split('.')[-1])}, type: {kind}{path_part}}}   # {reason}")
    if found.skipped:
        lines.append("  # not monitored:")
        lines += [f"  #   {name}: {reason}" for name, reason in found.skipped]
    if found.positive is not None:
        lines += ["labels:", f'  positive: "{found.positive[0]}"   # {found.positive[1]}']
    lines += [
        "baseline: baseline.json",
        "window:",
        "  size: 5000          # events per tumbling window; or `duration: 10m`"
        + (" (on the event time)" if "timestamp" in roles else ""),
        "http:",
        "  port: 9108",
        "state:",
        "  dir: state",
        "",
    ]
    return "\n".join(lines)
