"""Value helpers shared across the service: times as ISO text, categories as text, segment values.

A leaf module (it imports nothing from ``monitor``), so that the baseline, the window and the
performance tracker can all use it without importing each other.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

__all__ = ["category_name", "iso", "segment_value"]


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string (None, NaN and infinities become None)."""
    if ts is None or not math.isfinite(ts):
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def category_name(value) -> str | None:
    """A category as text (None for missing); integral floats as ints, so 1.0 and 1 are one category."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def segment_value(value, known) -> str:
    """The segment a value belongs to: its category name when the baseline knows it, else "other"."""
    name = category_name(value)
    return name if name in known else "other"
