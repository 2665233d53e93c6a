"""Baselines: profiles of the training data, stored as versioned JSON with a sha256 fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone

import numpy as np

from detectors import CategoricalProfile, NumericProfile
from monitor.config import Column, Config, ConfigError
from monitor.multivariate import vectors_of
from monitor.performance import baseline_performance
from monitor.registry import Training, check_extras, fit_extras
from monitor.values import category_name, segment_value

__all__ = ["Baseline", "BaselineError", "build_baseline", "category_name", "read_table", "segment_value"]

FORMAT = "driftmon.baseline"
FORMAT_VERSION = 1


class BaselineError(ValueError):
    """A baseline file that cannot be used with this config."""


def read_table(path: str, categorical: tuple[str, ...] = ()):
    """Read data (CSV, Parquet or JSON Lines, by extension) into a pyarrow Table.

    Parquet columns named in ``categorical`` stay dictionary-encoded (three times faster to read and to
    count than materialized strings).
    """
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            present = set(pq.read_schema(path).names)
            return pq.read_table(path, read_dictionary=[c for c in categorical if c in present] or None)
        if lower.endswith((".jsonl", ".ndjson", ".json")):
            import pyarrow.json as pj

            return pj.read_json(path)
        if lower.endswith((".csv", ".csv.gz", ".tsv")):
            import pyarrow.csv as pc

            parse = pc.ParseOptions(delimiter="\t" if lower.endswith(".tsv") else ",")
            return pc.read_csv(path, parse_options=parse)
    except OSError as exc:
        raise BaselineError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # pyarrow raises its own ArrowInvalid with a useful message
        raise BaselineError(f"cannot parse {path}: {exc}") from None
    raise BaselineError(f"{path}: unknown data format (use .csv, .tsv, .parquet or .jsonl)")


def category_counts(column) -> tuple[dict, int]:
    """Category name -> count and the missing count of an Arrow column, counted in C++."""
    import pyarrow.compute as pc

    missing = column.null_count
    counts: dict[str, int] = {}
    for entry in pc.value_counts(column).to_pylist():
        value, n = entry["values"], entry["counts"]
        key = category_name(value)
        if key is None:
            missing += 0 if value is None else n  # NaN in a float column (nulls are in null_count)
            continue
        counts[key] = counts.get(key, 0) + n
    return counts, missing


def _arrow_column(table, spec):
    """The Arrow column for a spec: by its name, else by its dotted path flattened."""
    names = set(table.column_names)
    for candidate in (spec.name, spec.source, spec.source.replace(".", "_")):
        if candidate in names:
            column = table.column(candidate)
            break
    else:
        flat = table.flatten()  # nested JSON Lines: struct columns become "inputs.dti"
        if spec.source in flat.column_names:
            column = flat.column(spec.source)
        else:
            raise BaselineError(
                f"training data has no column {spec.name!r} (nor {spec.source!r}); columns: {sorted(names)[:20]}"
            )
    return column


def _column(table, spec) -> "np.ndarray | list":
    """The training column for a spec as numpy floats (numeric) or a list of values (categorical)."""
    column = _arrow_column(table, spec)
    if spec.type == "numeric":
        try:
            return column.cast("float64").to_numpy(zero_copy_only=False)
        except Exception as exc:
            raise BaselineError(f"column {spec.name!r} is declared numeric but is {column.type}: {exc}") from None
    import pyarrow as pa

    values = column.to_pylist()
    if pa.types.is_floating(column.type):  # 1.0 and 1 are one category (integral floats come from NaN-able ints)
        return [category_name(v) for v in values]
    return values


class Baseline:
    """Profiles of every monitored column of the training data.

    Attributes
    ----------
    profiles : dict
        Column name -> NumericProfile or CategoricalProfile.
    roles : dict
        Column name -> "feature", "prediction", "score" or "label".
    meta : dict
        Model, source file, row count and creation time.
    fingerprint : str
        ``sha256:`` of the canonical JSON of everything but the creation time.
    """

    def __init__(self, profiles: dict, roles: dict, meta: dict, extras: dict | None = None):
        self.profiles = profiles
        self.roles = roles
        self.meta = meta
        self.extras = extras or {}  # "performance" (labelled baseline metrics), "segments" (top values)
        self.fingerprint = self._fingerprint()

    def _content(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.meta.get("model"),
            "source": self.meta.get("source"),
            "columns": {
                name: {"role": self.roles[name], "type": _type_of(p), "profile": p.to_dict()}
                for name, p in self.profiles.items()
            },
            "extras": self.extras,
        }

    def _fingerprint(self) -> str:
        canonical = json.dumps(self._content(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        doc = self._content()
        doc["created_at"] = self.meta.get("created_at")
        doc["fingerprint"] = self.fingerprint
        return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False) + "\n"

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        except OSError as exc:
            raise BaselineError(f"cannot write baseline {path}: {exc.strerror}") from None

    @classmethod
    def load(cls, path: str) -> "Baseline":
        """Read a baseline file; every problem with it is a BaselineError naming the file and what is wrong."""
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except OSError as exc:
            raise BaselineError(f"cannot read baseline {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise BaselineError(f"baseline {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise BaselineError(f"baseline {path} is not JSON: {exc}") from None
        except RecursionError:
            raise BaselineError(f"baseline {path} is nested too deeply to be a driftmon baseline") from None
        if not isinstance(doc, dict):
            raise BaselineError(f"{path} is not a driftmon baseline: a JSON object is expected, "
                                f"found a JSON {_json_kind(doc)}")
        if doc.get("format") != FORMAT:
            raise BaselineError(f"{path} is not a driftmon baseline (format {doc.get('format')!r})")
        if doc.get("version") != FORMAT_VERSION:
            raise BaselineError(f"{path}: baseline format version {doc.get('version')} is not supported")
        columns = doc.get("columns")
        if not isinstance(columns, dict):
            raise BaselineError(f"{path}: `columns` is missing or not an object; rebuild it with driftmon baseline")
        profiles, roles = {}, {}
        for name, entry in columns.items():
            if not isinstance(entry, dict):
                raise BaselineError(f"{path}: column {name!r} is not an object")
            for key in ("type", "role", "profile"):
                if key not in entry:
                    raise BaselineError(f"{path}: column {name!r} has no `{key}`")
            if entry["type"] not in ("numeric", "categorical"):
                raise BaselineError(f"{path}: column {name!r} has type {entry['type']!r} "
                                    "(expected numeric or categorical)")
            kind = NumericProfile if entry["type"] == "numeric" else CategoricalProfile
            try:
                profiles[name] = kind.from_dict(entry["profile"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BaselineError(f"{path}: column {name!r} has an invalid profile: {exc}") from None
            roles[name] = entry["role"]
        if not isinstance(doc.get("extras", {}), dict):
            raise BaselineError(f"{path}: `extras` is not an object")
        meta = {"model": doc.get("model"), "source": doc.get("source"), "created_at": doc.get("created_at")}
        baseline = cls(profiles, roles, meta, doc.get("extras", {}))
        if doc.get("fingerprint") != baseline.fingerprint:
            raise BaselineError(f"{path}: fingerprint mismatch: the file was edited or is corrupt")
        return baseline

    def check(self, config: Config) -> None:
        """Raise ConfigError if a configured column is missing from the baseline or has another type."""
        for role, spec in config.drift_columns():
            profile = self.profiles.get(spec.name)
            key = f"schema.{'features' if role == 'feature' else role}"
            if profile is None:
                raise ConfigError(key, f"{spec.name!r} is not in the baseline {config.baseline}; rebuild it")
            if _type_of(profile) != spec.type:
                raise ConfigError(
                    key, f"{spec.name!r} is {spec.type} in the config but {_type_of(profile)} in the baseline"
                )
        check_extras(config, self.extras, config.baseline)  # what the window detectors learnt (monitor/registry.py)
        if config.schema.label is not None and config.schema.prediction is not None \
                and "performance" not in self.extras:
            raise ConfigError("schema.label", "the baseline has no performance: rebuild it with labelled data "
                                              "(driftmon baseline --validation ...)")


def _type_of(profile) -> str:
    return "numeric" if isinstance(profile, NumericProfile) else "categorical"


def categorical_names(config: Config) -> tuple[str, ...]:
    """Column names that hold categories (features, outputs, segments, fairness attributes)."""
    names = {spec.name for _role, spec in config.schema.columns() if spec.type == "categorical"}
    names |= {spec.source for _role, spec in config.schema.columns() if spec.type == "categorical"}
    names |= {s.name for s in config.extra_columns()}
    return tuple(sorted(names))


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def build_baseline(config: Config, data_path: str, seed: int = 0, validation_path: str | None = None) -> Baseline:
    """Profile every configured column of the training data.

    With a label and a prediction configured, the baseline also records the model's performance on
    labelled data (``validation_path``, else the training data when it has prediction and label columns)
    and the score calibration used to estimate performance before labels arrive.
    """
    table = read_table(data_path, categorical_names(config))
    if table.num_rows == 0:
        raise BaselineError(f"{data_path} has no rows")
    labelled = read_table(validation_path, categorical_names(config)) if validation_path else None
    profiles, roles = {}, {}
    for role, spec in config.schema.columns():
        source = table
        try:
            _arrow_column(table, spec)
        except BaselineError as exc:
            # Training data often lacks the model's outputs: take them from the labelled set.
            if role == "feature":
                raise
            if labelled is None:
                raise BaselineError(f"{exc}; give labelled data with --validation") from None
            source = labelled
        values = _column(source, spec) if spec.type == "numeric" else category_counts(_arrow_column(source, spec))
        if spec.type == "numeric":
            profiles[spec.name] = NumericProfile.fit(values, bins=config.drift.bins, seed=seed)
        else:
            profiles[spec.name] = CategoricalProfile.from_counts(*values, max_categories=config.drift.max_categories)
        roles[spec.name] = role
    meta = {
        "model": config.model,
        "source": {"file": os.path.basename(data_path), "rows": table.num_rows, "sha256": _sha256_file(data_path)},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    training = Training(lambda spec: _column(table, spec), lambda spec: vectors_of(_arrow_column(table, spec)))
    try:
        extras = fit_extras(config, training, seed)  # what the window detectors learn (monitor/registry.py)
    except BaselineError:
        raise
    except ValueError as exc:
        raise BaselineError(f"{data_path}: {exc}") from None
    schema = config.schema
    if schema.label is not None and schema.prediction is not None:
        labelled = labelled if labelled is not None else table
        try:
            label = _column(labelled, schema.label)
            prediction = _column(labelled, schema.prediction)
            score = _column(labelled, schema.score) if schema.score else None
        except BaselineError as exc:
            if validation_path:
                raise
            raise BaselineError(f"{exc}: give labelled data with --validation for the baseline performance") from None
        extras["performance"] = baseline_performance(config, label, prediction, score, config.labels.positive)
        extras["performance"]["source"] = os.path.basename(validation_path or data_path)
        if config.fairness is not None:
            from detectors import GroupAccumulator

            groups = {}
            for attr in config.fairness.attributes:
                try:
                    values = _column(labelled, Column(name=attr.name, type="categorical", path=attr.path))
                except BaselineError:
                    continue  # the labelled data lack the attribute: no baseline gaps for it
                acc = GroupAccumulator(config.fairness.favourable, max_groups=attr.max_values)
                acc.update([category_name(v) for v in values], [category_name(v) for v in prediction],
                           [category_name(v) for v in label])
                groups[attr.name] = acc.state_dict()
            if groups:
                extras["fairness"] = groups
    return Baseline(profiles, roles, meta, extras)


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
