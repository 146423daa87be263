"""Alembic's offline renderings kept between runs, keyed by everything they are made from.

A run that finds work sends each pending revision as the SQL Alembic renders
for it offline (run/batch.py). Rendering imports Alembic and SQLAlchemy, about
a fifth of a second of CPU, and the hub's migration waits for it: on a fleet
of remote databases it was the longest wait before the first batch. The
rendering of a range of revisions depends only on files (the revisions,
``env.py``, ``alembic.ini``, the code that drives Alembic, Alembic's and
SQLAlchemy's own versions), so it is kept, like Python's bytecode, in the
``__pycache__`` beside the range's last revision file, one file per range,
under the hash of all of those files' bytes. A file that changes changes the hash,
and the range is rendered again; a cache file that is unreadable, foreign or
stale is ignored and replaced; a directory that cannot be written to only
costs the rendering. Whoever can write there can edit the revisions too, so
the cache adds no one who can change what runs.

The files hashed are those beside ``env.py`` and in the revision folders
(``chain.source_files``), not the folders below, which may be large. What the
hash does not see is rendered once: a revision whose offline SQL depends on
something other than those files (a module imported from elsewhere, an
environment variable, the clock). Offline SQL (``ophelia-db sql``) must not
depend on those either.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ophelia_db.run import driver
from ophelia_db.run.chain import Chain, source_files
from ophelia_db.run.driver import ChainSpec

log = logging.getLogger(__name__)
# Bumped when what is stored, or how it is made, changes.
_FORMAT = "1"
_LIBRARIES = ("alembic", "sqlalchemy")


def upgrade_statements(
    chain: Chain, start: str | None, goal: str, render: Callable[[], list[str]]
) -> list[str]:
    """``render()``'s statements for ``start`` → ``goal``, from the cache when its key still holds."""
    try:
        key = _key(chain.spec, start, goal)
        folder = chain.get(goal).path.parent / "__pycache__"
        path = folder / f"ophelia-rendered.{start or 'base'}-{goal}.json"
    except OSError as exc:  # a file of the chain vanished meanwhile: render, as without a cache
        log.debug("no render cache for %s:%s: %s", start, goal, exc)
        return render()
    cached = _read(path, key)
    if cached is not None:
        return cached
    statements = render()
    _write(path, key, statements)
    return statements


def _key(spec: ChainSpec, start: str | None, goal: str) -> str:
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed, so that no two different sets of inputs hash alike.
        for part in (label.encode(), data):
            digest.update(len(part).to_bytes(8, "big") + part)

    add("format", _FORMAT.encode())
    add("range", f"{start}:{goal}".encode())
    add("alembic.ini", spec.alembic_ini.read_bytes())
    add("version_locations", (spec.version_locations or "").encode())
    add("driver", Path(driver.__file__).read_bytes())
    for name in _LIBRARIES:
        # The package's __init__ (it holds __version__), found without importing it.
        found = importlib.util.find_spec(name)
        add(name, Path(found.origin).read_bytes() if found and found.origin else b"")
    for path in source_files(spec):
        add(str(path), path.read_bytes())
    return digest.hexdigest()


def _read(path: Path, key: str) -> list[str] | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    statements = stored.get("statements")
    if not isinstance(statements, list) or not all(isinstance(text, str) for text in statements):
        return None
    return statements


def _write(path: Path, key: str, statements: list[str]) -> None:
    try:
        path.parent.mkdir(exist_ok=True)
        # Written aside and renamed: a reader (another run, a worker process) sees all or nothing.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ophelia-rendered.")
        os.chmod(temporary, 0o644)  # as bytecode is: another user running the same chain may read it
    except OSError as exc:
        log.debug("render cache not written at %s: %s", path, exc)
        return
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"key": key, "statements": statements}, out)
        os.replace(temporary, path)
    except OSError as exc:
        log.debug("render cache not written at %s: %s", path, exc)
        Path(temporary).unlink(missing_ok=True)
