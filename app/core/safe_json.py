"""JSON values every store accepts: NaN and infinities become null.

A diverging fit reports a NaN loss. Postgres refuses NaN in a JSON column (the write, and
with it the job, would fail), SQLite stores a token that strict JSON readers (browsers
reading the event stream) reject, and model.json is written as strict JSON.
"""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None (JSON null), in nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
