"""Durations as people write them in fleet.toml and revision files: ``"500ms"``, ``"30s"``, ``"15min"``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | int | float) -> float:
    """Return seconds from ``"30s"``, ``"15min"``, ``"500ms"`` or a number of seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (use e.g. '500ms', '30s', '15min', '1h')")
    return float(match.group(1)) * _UNITS[match.group(2)]
