"""Prediction-log decoding: JSON messages to numpy columns, one batch at a time.

A msgspec Struct type is generated from the configured schema (dotted paths
become nested Structs), so decoding, type checks and field extraction happen
in C. Each record is decoded on its own boundaries (a record holding half an
object, or two objects, is malformed whatever its neighbours hold); the whole
batch goes through one ``map`` of the C decoder, which is as fast as decoding
the batch as one JSON array. Only when a record fails is the batch decoded
record by record to find and count the bad ones, so a malformed record costs a
slow path for its own batch and never loses the good records beside it.

Every record becomes exactly one valid event or one rejection with a reason
from :data:`INVALID_REASONS`; no content makes :meth:`Decoder.decode` raise.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from datetime import datetime, timezone
from itertools import repeat
from typing import Annotated, Any

import msgspec
import numpy as np

from monitor.config import SchemaConfig

__all__ = ["Batch", "Decoder", "INVALID_REASONS", "MAX_MESSAGE_BYTES"]

#: Every reason a message can be rejected for (metric label values; bounded). See README "Bad input".
INVALID_REASONS = ("not_json", "wrong_type", "missing_field", "nan", "bad_timestamp",
                   "null_value", "too_large", "too_deep", "not_utf8", "not_object")

#: Default cap on a record's size (``kafka.max_message_bytes``): larger records are rejected as ``too_large``
#: before they are parsed.
MAX_MESSAGE_BYTES = 1_048_576

#: Event times outside [1970, 10000) are rejected as ``bad_timestamp`` (epoch milliseconds sent as
#: seconds would otherwise open windows thousands of years ahead).
_MAX_EPOCH = 253_402_300_800.0

_NUMERIC = float | None
_CATEGORICAL = str | int | bool | None
# Text is parsed per batch by numpy (0.04 us a value) when it is UTC ("...Z"), else per value.
_TIMESTAMP = str | float | None
_ALL_BUT_LAST = operator.itemgetter(slice(None, -1))
_ID = str | int


class Batch:
    """Columns of the valid messages of one batch.

    Attributes
    ----------
    n : int
        Valid messages.
    columns : dict
        Monitored column name -> float64 array (numeric, NaN = missing) or tuple (categorical, None = missing).
    ids : list or None
        Message ids, when the schema has an id.
    timestamps : ndarray or None
        Event times in epoch seconds (NaN where absent), when the schema has a timestamp.
    valid : ndarray of bool
        For every input message, whether it was decoded (aligned with the input).
    invalid : Counter
        Reason -> count of rejected messages.
    rejected : list of (int, str)
        Input index and reason of each rejected message, for a dead-letter topic.
    """

    __slots__ = ("n", "columns", "ids", "timestamps", "valid", "invalid", "rejected")

    def __init__(self, n, columns, ids, timestamps, valid, invalid, rejected):
        self.n = n
        self.columns = columns
        self.ids = ids
        self.timestamps = timestamps
        self.valid = valid
        self.invalid = invalid
        self.rejected = rejected

    def take(self, rows: np.ndarray) -> "Batch":
        """The valid-message rows at the given positions."""
        columns = {k: v[rows] if isinstance(v, np.ndarray) else [v[i] for i in rows] for k, v in self.columns.items()}
        ids = None if self.ids is None else [self.ids[i] for i in rows]
        ts = None if self.timestamps is None else self.timestamps[rows]
        return Batch(len(rows), columns, ids, ts, None, Counter(), [])

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` of the valid messages."""
        columns = {k: v[start:stop] for k, v in self.columns.items()}
        ids = None if self.ids is None else self.ids[start:stop]
        ts = None if self.timestamps is None else self.timestamps[start:stop]
        return Batch(stop - start, columns, ids, ts, None, Counter(), [])


class _Tree:
    """Fields of one JSON object level: leaves (column name -> type) and nested objects."""

    def __init__(self):
        self.leaves: dict[str, tuple[str, Any]] = {}  # json key -> (column name, type)
        self.children: dict[str, _Tree] = {}

    def add(self, parts: list[str], column: str, type_) -> None:
        if len(parts) == 1:
            if parts[0] in self.leaves or parts[0] in self.children:
                raise ValueError(f"path {'.'.join(parts)!r} is used twice")
            self.leaves[parts[0]] = (column, type_)
        else:
            if parts[0] in self.leaves:
                raise ValueError(f"path segment {parts[0]!r} is both a value and an object")
            self.children.setdefault(parts[0], _Tree()).add(parts[1:], column, type_)

    def build(self, name: str, required: set[str]):
        """Return (Struct type, extraction plan) for this level."""
        fields, plan = [], []
        for key, (column, type_) in sorted(self.leaves.items()):
            attr = f"f{len(fields)}"
            if column in required:
                fields.append((attr, type_, msgspec.field(name=key)))
            else:
                fields.append((attr, type_, msgspec.field(name=key, default=None)))
            plan.append((len(plan), column, None))
        for key, child in sorted(self.children.items()):
            attr = f"f{len(fields)}"
            child_type, child_plan = child.build(f"{name}_{key}", required)
            empty = child_type()  # every field of a nested level is optional
            fields.append((attr, child_type | None, msgspec.field(name=key, default=None)))
            plan.append((len(plan), None, (child_plan, empty)))
        # Required fields must come first in a Struct definition.
        order = sorted(range(len(fields)), key=lambda i: fields[i][2].default is not msgspec.NODEFAULT)
        fields = [fields[i] for i in order]
        plan = [(order.index(i), col, sub) for i, col, sub in plan]
        struct = msgspec.defstruct(name, fields, gc=False, forbid_unknown_fields=False)
        return struct, plan


def _epoch(value) -> float:
    """Epoch seconds of a timestamp (ISO 8601 text or a number); a time without a zone is UTC."""
    if value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)).timestamp()


class Decoder:
    """Decode batches of JSON prediction logs into columns.

    Parameters
    ----------
    schema : SchemaConfig
        Which fields to read, from which dotted paths, with which types.
    columns : list of (role, spec), optional
        The monitored columns to read (default: all of the schema's).
    extra : list of Segment, optional
        Further categorical fields (segments, fairness attributes) to read.
    max_bytes : int, optional
        Records longer than this are rejected as ``too_large`` without being parsed.

    Notes
    -----
    Nesting depth is bounded by the interpreter's recursion limit (1,000 frames by default, less the
    caller's stack): a record nested deeper, in any field, read or not, is rejected as ``too_deep``.
    """

    _ID_COL = "\x00id"
    _TS_COL = "\x00timestamp"

    def __init__(self, schema: SchemaConfig, columns: list | None = None, extra: list = (),
                 max_bytes: int = MAX_MESSAGE_BYTES):
        self.schema = schema
        self.columns = columns
        self.extra = extra
        self.max_bytes = max_bytes
        self.numeric: list[str] = []
        self.categorical: list[str] = []
        self.embedding: dict[str, int] = {}  # embedding feature -> dimension
        tree, required = _Tree(), set()
        self.aliases: dict[str, str] = {}  # extra field -> the monitored column that reads the same path
        sources: dict[str, str] = {}
        for spec in schema.embeddings():
            self.embedding[spec.name] = spec.dimension
            vector = Annotated[list[float], msgspec.Meta(min_length=spec.dimension, max_length=spec.dimension)]
            tree.add(spec.source.split("."), spec.name, vector | None)
        for role, spec in (schema.columns() if columns is None else columns) + [("extra", e) for e in extra]:
            if role == "extra" and spec.source in sources:
                # a segment or fairness attribute may be a monitored feature too (sex, often): read it once
                self.aliases[spec.name] = sources[spec.source]
                continue
            sources.setdefault(spec.source, spec.name)
            if getattr(spec, "type", "categorical") == "numeric":
                self.numeric.append(spec.name)
                tree.add(spec.source.split("."), spec.name, _NUMERIC)
            else:
                self.categorical.append(spec.name)
                tree.add(spec.source.split("."), spec.name, _CATEGORICAL)
        if schema.id is not None:
            tree.add((schema.id.path or "id").split("."), self._ID_COL, _ID)
            required.add(self._ID_COL)
        if schema.timestamp is not None:
            tree.add((schema.timestamp.path or "timestamp").split("."), self._TS_COL, _TIMESTAMP)
        self._struct, self._plan = tree.build("Message", required)
        self._one = msgspec.json.Decoder(self._struct)
        self._many = msgspec.json.Decoder(list[self._struct])

    def _decode_all(self, values: list):
        """Decode a batch; returns (messages, valid mask or None, invalid Counter, rejected)."""
        if values:
            try:
                # One C call per record, no Python in between: as fast as one array of the whole batch,
                # and a record can neither borrow nor lend bytes to its neighbours. len() raises on None.
                if max(map(len, values)) <= self.max_bytes:
                    return list(map(self._one.decode, values)), None, Counter(), []
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, TypeError, ValueError):
                pass
        msgs, valid, invalid, rejected = [], np.zeros(len(values), dtype=bool), Counter(), []
        for i, raw in enumerate(values):
            reason = self._judge(raw, msgs)
            if reason is None:
                valid[i] = True
            else:
                invalid[reason] += 1
                rejected.append((i, reason))
        return msgs, valid, invalid, rejected

    def _judge(self, raw, msgs: list) -> str | None:
        """Decode one record into ``msgs``; None when valid, else the reason it is rejected."""
        if raw is None:
            return "null_value"  # a tombstone
        if len(raw) > self.max_bytes:
            return "too_large"
        problem = None
        try:
            msgs.append(self._one.decode(raw))
            return None
        except msgspec.ValidationError as exc:
            problem = str(exc)
        except RecursionError:
            return "too_deep"
        except msgspec.DecodeError:
            pass
        except (TypeError, ValueError, OverflowError, MemoryError):  # not bytes-like; absurd sizes
            return "not_json"
        # The typed decoder stops at the first wrong type; whether the record is JSON at all comes first.
        try:
            msgspec.json.decode(raw)
        except RecursionError:
            return "too_deep"
        except msgspec.ValidationError as exc:  # JSON, but a number no float holds (1e999)
            problem = str(exc)
        except msgspec.DecodeError:
            if not _is_utf8(raw):
                return "not_utf8"
            if (b"NaN" in raw or b"Infinity" in raw) and _is_json_with_nan(raw):
                return "nan"
            return "not_json"
        if problem is None:
            return "not_json"
        if problem.startswith("Object missing required field"):
            return "missing_field"
        if problem.startswith("Number out of range"):
            return "nan"
        if problem.startswith("Expected `object`") and " - at `" not in problem:
            return "not_object"  # the record itself is an array, string, number or null
        return "wrong_type"

    def decode(self, values: list) -> Batch:
        """Decode one batch of raw message values (bytes, or None for a tombstone); never raises."""
        msgs, valid, invalid, rejected = self._decode_all(values)
        if valid is None:
            valid = np.ones(len(values), dtype=bool)
        raw_columns: dict[str, list] = {}
        self._extract(msgs, self._plan, raw_columns)
        ids = raw_columns.pop(self._ID_COL, None)
        ids = None if ids is None else list(ids)
        ts_raw = raw_columns.pop(self._TS_COL, None)
        timestamps = None
        if ts_raw is not None:
            timestamps, bad = self._timestamps(ts_raw)
            if bad:
                # Unparseable timestamps: reject those rows, keep the rest.
                keep = [i for i in range(len(msgs)) if i not in bad]
                positions = np.flatnonzero(valid)
                for i in sorted(bad):
                    valid[positions[i]] = False
                    rejected.append((int(positions[i]), "bad_timestamp"))
                invalid["bad_timestamp"] += len(bad)
                raw_columns = {k: tuple(v[i] for i in keep) for k, v in raw_columns.items()}
                ids = None if ids is None else [ids[i] for i in keep]
                timestamps = timestamps[keep]
                msgs = keep
        columns: dict[str, Any] = {}
        for name in self.numeric:
            columns[name] = np.array(raw_columns[name], dtype=np.float64)
        for name in self.categorical:
            columns[name] = raw_columns[name]
        for name, dimension in self.embedding.items():
            columns[name] = _vectors(raw_columns[name], dimension)
        for name, target in self.aliases.items():
            if name != target:
                value = columns[target]
                columns[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return Batch(len(msgs), columns, ids, timestamps, valid, invalid, rejected)

    @staticmethod
    def _timestamps(raw: list) -> tuple[np.ndarray, set[int]]:
        """Epoch seconds (NaN where absent) and the positions of unparseable or out-of-range values."""
        out, bad = Decoder._parse_timestamps(raw)
        with np.errstate(invalid="ignore"):
            outside = (out < 0) | (out >= _MAX_EPOCH)  # NaN (absent) compares False
        if outside.any():
            bad = bad | set(np.flatnonzero(outside).tolist())
        return out, bad

    @staticmethod
    def _parse_timestamps(raw: list) -> tuple[np.ndarray, set[int]]:
        try:
            return np.array(raw, dtype=np.float64), set()  # epoch seconds or null
        except (TypeError, ValueError, OverflowError):
            pass
        try:  # str.endswith refuses a None or a number: then not all are UTC text
            utc = all(map(str.endswith, raw, repeat("Z")))
        except TypeError:
            utc = False
        if utc:
            try:  # UTC text, the common case: numpy parses the batch in C
                parsed = np.array(list(map(_ALL_BUT_LAST, raw)), dtype="datetime64[us]")
                if not np.isnat(parsed).any():
                    return parsed.astype(np.int64) / 1e6, set()
            except (ValueError, OverflowError):
                pass
        out, bad = np.empty(len(raw)), set()
        for i, value in enumerate(raw):
            try:
                out[i] = _epoch(value)
            except (TypeError, ValueError, OverflowError):
                out[i] = math.nan
                bad.add(i)
        return out, bad

    @classmethod
    def _extract(cls, msgs, plan, out: dict) -> None:
        """Columns (tuples) of the structs, transposed in C; nested levels recursively."""
        rows = list(zip(*map(msgspec.structs.astuple, msgs))) if len(msgs) else None
        for index, column, sub in plan:
            values = rows[index] if rows is not None else ()
            if sub is None:
                out[column] = values
            else:
                child_plan, empty = sub
                if None in values:  # an absent nested object: all its fields are missing
                    values = [empty if v is None else v for v in values]
                cls._extract(values, child_plan, out)


def _vectors(values, dimension: int) -> np.ndarray:
    """An embedding column: ``(n, dimension)`` floats, a row of NaN where the vector is absent."""
    if None not in values:
        return np.array(values, dtype=np.float64).reshape(len(values), dimension)
    out = np.full((len(values), dimension), np.nan)
    rows = [i for i, v in enumerate(values) if v is not None]
    if rows:
        out[rows] = np.array([values[i] for i in rows], dtype=np.float64)
    return out


def _is_utf8(raw) -> bool:
    try:
        bytes(raw).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _is_json_with_nan(raw: bytes) -> bool:
    """Whether the message is JSON once NaN/Infinity tokens are replaced (Python's json writes them)."""
    try:
        msgspec.json.decode(raw.replace(b"-Infinity", b"null").replace(b"Infinity", b"null").replace(b"NaN", b"null"))
        return True
    except msgspec.DecodeError:
        return False
