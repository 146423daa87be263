"""Errors in fleet.toml said where they are: the file, the line, the key.

tomllib names only the second declaration of a duplicate and pydantic only the
key path; these helpers find the lines, so that every refusal reads
``fleet.toml:12: ...``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ophelia_db.errors import ConfigError

_HEADER = re.compile(r"^\s*\[\s*instances\s*\.\s*\"?([^\]\"]+)\"?\s*\]\s*(?:#.*)?$")


def refuse_duplicates(path: Path, text: str) -> None:
    """tomllib names the second declaration only; say where the first one is too."""
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(line)
        if not match:
            continue
        name = match.group(1).strip()
        if name in seen:
            raise ConfigError(
                f"{path}:{number}: duplicate instance '{name}' (first declared on line {seen[name]})"
            )
        seen[name] = number


# The keys a section of fleet.toml may hold, given the section's path (``["instances", "corte"]``).
KeysOf = Callable[[Sequence[str]], Sequence[str]]


def describe_validation(
    path: Path, text: str, exc: ValidationError, community_types: tuple[str, ...], keys_of: KeysOf
) -> str:
    errors = exc.errors()
    # A misspelt key is two errors, the required key missing and the misspelling unknown: the
    # misspelling, with the key it resembles, is what tells the operator what to fix.
    resembling = ((e, _resemblance(e, keys_of)) for e in errors)
    error, close = next(((e, key) for e, key in resembling if key), (errors[0], None))
    location = [str(part) for part in error["loc"]]
    dotted = ".".join(location)
    line = _line_of(text, location)
    where = f"{path}:{line}" if line else str(path)
    if error["type"] == "extra_forbidden":
        hint = f"; did you mean '{close}'?" if close else ""
        return f"{where}: unknown key '{location[-1]}' in {_section(location)}{hint}"
    if error["type"] == "missing":
        return f"{where}: missing key '{location[-1]}' in {_section(location)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a table (a [section]), not a single value"  # never pydantic's class names
    if error["type"] == "literal_error" and location[-1] == "community_type":
        message = f"must be one of {', '.join(community_types)}"
    return f"{where}: {dotted}: {message}"


def _resemblance(error: Any, keys_of: KeysOf) -> str | None:
    """The known key an unknown key's name is close to, if any."""
    if error["type"] != "extra_forbidden":
        return None
    location = [str(part) for part in error["loc"]]
    close = difflib.get_close_matches(location[-1], keys_of(location[:-1]), n=1)
    return close[0] if close else None


def _section(location: list[str]) -> str:
    parent = location[:-1]
    return f"[{'.'.join(parent)}]" if parent else "the top level"


def _line_of(text: str, location: list[str]) -> int | None:
    """Best-effort line of a key, so that the error points into the file."""
    if not location:
        return None
    section = ".".join(location[:-1])
    key = location[-1]
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = re.sub(r"\s*\.\s*", ".", header.group(1)).replace('"', "")
            if not section and current == key:
                return number
            continue
        if current == section and re.match(rf"^\"?{re.escape(key)}\"?\s*=", stripped):
            return number
    return None
