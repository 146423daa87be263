"""The revision chain: which revisions the code knows, in order, with checksums.

This module owns reading the Alembic script directory once per run (the
expensive part of Alembic's start-up), the single-head rule, each revision
file's ``sha256:`` checksum with line endings normalised, and the cached
chain of each process (``chain_for``). It never connects to a database.
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ophelia_db.durations import parse_duration
from ophelia_db.errors import ConfigError, IntegrityRefusal
from ophelia_db.run.driver import ChainSpec, script_directory


def file_checksum(path: Path) -> str:
    """Return ``sha256:<hex>`` of a file, ignoring a BOM and CRLF/CR line endings."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Revision:
    """One revision file; ``lock_timeout``/``statement_timeout`` are its own time boxes, if set."""

    id: str
    name: str
    path: Path
    checksum: str
    down_revision: str | None
    lock_timeout: float | None = None
    statement_timeout: float | None = None


class Chain:
    """The ordered, single-headed list of revisions the code knows."""

    def __init__(self, spec: ChainSpec, revisions: list[Revision]) -> None:
        self.spec = spec
        self.revisions = tuple(revisions)
        self._position = {rev.id: index for index, rev in enumerate(self.revisions)}

    @classmethod
    def load(cls, spec: ChainSpec | None = None) -> Chain:
        """Read the revision files and compute every checksum once.

        A linear chain (the normal case) is read with ``ast``, without
        importing Alembic, which keeps ``status`` and no-op runs fast; any
        other shape goes through Alembic's ``ScriptDirectory``.
        """
        spec = spec or ChainSpec.default()
        revisions = _read_linear(spec)
        return cls(spec, revisions if revisions is not None else _read_with_alembic(spec))

    @cached_property
    def head(self) -> str | None:
        return self.revisions[-1].id if self.revisions else None

    def knows(self, revision: str) -> bool:
        return revision in self._position

    def get(self, revision: str) -> Revision:
        return self.revisions[self._position[revision]]

    def resolve(self, target: str) -> str | None:
        """Turn ``head``/``base``/an id (or unique prefix) into an id; ``None`` is base."""
        if target in ("head", "heads"):
            return self.head
        if target == "base":
            return None
        if target in self._position:
            return target
        matches = [rev.id for rev in self.revisions if rev.id.startswith(target)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(rev.id for rev in self.revisions) or "none"
        raise ConfigError(f"unknown revision '{target}' (known: {known}, head, base)")

    def between(self, current: str | None, target: str | None) -> list[str]:
        """Return the revisions to apply going up from ``current`` to ``target``."""
        start = -1 if current is None else self._position[current]
        end = -1 if target is None else self._position[target]
        return [rev.id for rev in self.revisions[start + 1 : end + 1]]

    def applied_through(self, current: str | None) -> list[str]:
        """Return every revision from base up to and including ``current``."""
        if current is None:
            return []
        return [rev.id for rev in self.revisions[: self._position[current] + 1]]

    def is_after(self, first: str | None, second: str | None) -> bool:
        """Tell whether ``first`` comes strictly after ``second`` in the chain."""
        return self._index(first) > self._index(second)

    def _index(self, revision: str | None) -> int:
        return -1 if revision is None else self._position[revision]


def _single(down: str | tuple[str, ...] | list[str] | None) -> str | None:
    if down is None or isinstance(down, str):
        return down
    return down[0] if down else None


def _read_with_alembic(spec: ChainSpec) -> list[Revision]:
    script_dir = script_directory(spec)
    heads = script_dir.get_heads()
    if len(heads) > 1:
        raise _many_heads(heads)
    ordered = list(reversed(list(script_dir.walk_revisions("base", "heads"))))
    return [
        _revision(
            script.revision,
            script.doc,
            Path(script.path),
            _single(script.down_revision),
            {key: getattr(script.module, key, None) for key in _TIME_BOXES},
        )
        for script in ordered
    ]


def _many_heads(heads: Iterable[str]) -> IntegrityRefusal:
    heads = sorted(heads)
    return IntegrityRefusal(
        f"the revision chain has {len(heads)} heads ({', '.join(heads)}); "
        "merge them (alembic merge heads) before running"
    )


_TIME_BOXES = ("lock_timeout", "statement_timeout")


def _revision(
    rev_id: str, doc: str | None, path: Path, down: str | None, values: dict[str, object]
) -> Revision:
    name = (doc or rev_id).strip().splitlines()[0][:255] if (doc or rev_id).strip() else rev_id
    boxes: dict[str, float | None] = {}
    for key in _TIME_BOXES:
        value = values.get(key)
        if value is None:
            boxes[key] = None
            continue
        try:
            boxes[key] = parse_duration(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path.name}: {key} = {value!r} is not a duration: {exc}") from None
    return Revision(
        id=rev_id,
        name=name,
        path=path,
        checksum=file_checksum(path),
        down_revision=down,
        lock_timeout=boxes["lock_timeout"],
        statement_timeout=boxes["statement_timeout"],
    )


def _alembic_section(spec: ChainSpec) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(defaults={"here": str(spec.alembic_ini.parent)})
    parser.read(spec.alembic_ini, encoding="utf-8")
    if not parser.has_section("alembic"):
        raise ConfigError(f"{spec.alembic_ini} has no [alembic] section")
    return parser["alembic"]


def _script_location(spec: ChainSpec) -> Path:
    """The directory of the chain's ``env.py`` (``script_location`` in ``alembic.ini``)."""
    return Path(_alembic_section(spec).get("script_location", "alembic"))


def source_files(spec: ChainSpec) -> list[Path]:
    """Every file the chain's Python may come from: those beside ``env.py`` and in the revision
    folders (their subfolders too when ``recursive_version_locations`` is on, as Alembic reads them)."""
    recursive = _alembic_section(spec).getboolean("recursive_version_locations", fallback=False)
    folders = [(_script_location(spec), False), *((folder, recursive) for folder in _version_dirs(spec))]
    found: dict[Path, None] = {}
    for folder, deep in folders:
        paths = folder.rglob("*") if deep else folder.glob("*")
        for path in sorted(paths):
            if path.is_file() and "__pycache__" not in path.relative_to(folder).parts:
                found[path] = None
    return list(found)


def _version_dirs(spec: ChainSpec) -> list[Path]:
    section = _alembic_section(spec)
    locations = spec.version_locations or section.get("version_locations")
    if not locations:
        return [_script_location(spec) / "versions"]
    separator = {"os": os.pathsep, "space": " ", "newline": "\n", ";": ";", ":": ":", ",": ","}.get(
        section.get("path_separator", "space"), " "
    )
    parts = locations.split(separator) if separator != " " else locations.split()
    return [Path(part.strip()) for part in parts if part.strip()]


def _literal_assignments(tree: ast.Module) -> dict[str, object]:
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                found[target.id] = ast.literal_eval(value)
            except ValueError:
                found[target.id] = ...
    return found


def _read_linear(spec: ChainSpec) -> list[Revision] | None:
    """Read a linear chain without Alembic; ``None`` when the shape needs Alembic."""
    by_id: dict[str, tuple[str | None, str | None, Path, dict[str, object]]] = {}
    for directory in _version_dirs(spec):
        if not directory.is_dir():
            raise ConfigError(
                f"revision directory {directory} does not exist (alembic.ini version_locations)"
            )
        for path in sorted(directory.glob("*.py")):
            tree = ast.parse(path.read_bytes(), filename=str(path))
            values = _literal_assignments(tree)
            rev_id, down = values.get("revision"), values.get("down_revision")
            plain = isinstance(rev_id, str) and (down is None or isinstance(down, str))
            if not plain or values.get("depends_on") or values.get("branch_labels"):
                return None
            assert isinstance(rev_id, str)
            if rev_id in by_id:
                raise IntegrityRefusal(f"revision id {rev_id} is used by {by_id[rev_id][2]} and {path}")
            by_id[rev_id] = (down if isinstance(down, str) else None, ast.get_docstring(tree), path, values)
    for rev_id, (down, _doc, path, _values) in by_id.items():
        if down is not None and down not in by_id:
            raise IntegrityRefusal(
                f"revision {rev_id} ({path.name}) points to revision {down} (down_revision), which no "
                f"file defines; restore {down}'s file: the file of a revision that may have been "
                "applied must never be deleted"
            )
    children: dict[str | None, list[str]] = {}
    for rev_id, (down, *_) in by_id.items():
        children.setdefault(down, []).append(rev_id)
    heads = [rev_id for rev_id in by_id if rev_id not in children]
    if len(heads) > 1:
        raise _many_heads(heads)
    ordered, current = [], None
    while current in children or current is None:
        nexts = children.get(current, [])
        if not nexts:
            break
        if len(nexts) > 1:
            raise _many_heads(nexts)
        current = nexts[0]
        down, doc, path, values = by_id[current]
        ordered.append(_revision(current, doc, path, down, values))
    if len(ordered) != len(by_id):
        return None
    return ordered


_loaded: dict[ChainSpec, Chain] = {}


def chain_for(spec: ChainSpec | None = None) -> Chain:
    """The chain of ``spec`` (default: the project's), read once per process."""
    spec = spec or ChainSpec.default()
    if spec not in _loaded:
        _loaded[spec] = Chain.load(spec)
    return _loaded[spec]
