"""Schema snapshots from the PostgreSQL catalogs: what a database's schema is, not how it got there.

This module owns reading a normalised snapshot of the schemas the chain manages
(``public`` by default): tables and views with their RLS switches, columns with
types and defaults, sequences, indexes, constraints, functions, triggers, RLS
policies, enum and domain types, and the grants on all of them. It also owns
the diff between two snapshots and the stable fingerprint (sha256 of the
normalised snapshot) that ``drift`` groups instances by and the hub stores.
What legitimately differs between databases is left out: OIDs, the database
and owner names (and the owner's own privileges), comments, sequence values,
extension members, every table's rows, and the tool's own bookkeeping tables
(``alembic_version``, ``ophelia_repairs``). It reads through a connection it
is given and never writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg.pq import TransactionStatus

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet import catalog_queries as queries
from ophelia_db.fleet.connections import autocommit, connect, is_connection_error, sqlstate_of
from ophelia_db.fleet.lock import Step
from ophelia_db.results import Record

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Target

# Bump when the snapshot's shape changes, so cached reference snapshots are rebuilt.
CATALOG_FORMAT = 2
DEFAULT_SCHEMAS = ("public",)
# The tool's own bookkeeping: present or not depending on how an instance was
# versioned (by a run, by adopt, by a repair), never part of the chain's schema.
BOOKKEEPING_TABLES = ("public.alembic_version", "public.ophelia_repairs", "public.ophelia_interrupted_steps")
# The roles the chain grants to and revokes from. Grants to any other role are
# the platform's (Supabase grants USAGE on public to postgres, and more to its
# admin roles), not the chain's, so they are never drift.
MANAGED_GRANTEES = frozenset({"PUBLIC", "anon", "authenticated", "service_role"})
CATEGORIES = (
    "schema",
    "table",
    "column",
    "sequence",
    "index",
    "constraint",
    "function",
    "trigger",
    "policy",
    "type",
    "grant",
)


@dataclass(frozen=True)
class Difference(Record):
    """One object that differs: ``missing`` from the live schema, ``extra`` in it, or ``changed``."""

    json_names: ClassVar[dict[str, str]] = {"key": "object"}

    category: str
    key: str
    change: str
    detail: str

    def describe(self) -> str:
        return f"{self.category} {self.key}: {self.change}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Snapshot:
    """A normalised schema: ``objects[category][key]`` holds each object's attributes."""

    objects: Mapping[str, Mapping[str, Any]]

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the snapshot in canonical JSON: equal schemas, equal fingerprints."""
        return "sha256:" + hashlib.sha256(self.canonical().encode()).hexdigest()

    def canonical(self) -> str:
        return json.dumps(self.objects, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def counts(self) -> dict[str, int]:
        """How many objects of each category, for evidence lines ("12 tables, 80 columns")."""
        return {category: len(self.objects.get(category, {})) for category in CATEGORIES}

    def as_record(self) -> dict[str, Any]:
        return {"format": CATALOG_FORMAT, "objects": json.loads(self.canonical())}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Snapshot | None:
        """Rebuild a cached snapshot; ``None`` when it was written in another format."""
        if record.get("format") != CATALOG_FORMAT:
            return None
        return cls(objects=record["objects"])


def snapshot(
    conn: Any,
    *,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    excluded: Sequence[str] = BOOKKEEPING_TABLES,
    then: Step | None = None,
) -> Snapshot:
    """Read the normalised snapshot of ``schemas`` through psycopg connection ``conn``.

    ``then`` is sent last in the same round trip (the migration lock's unlock,
    after a run), and hears its row.
    """
    return _read(conn, list(schemas), list(excluded), then)


def fingerprint(conn: Any, *, schemas: Sequence[str] = DEFAULT_SCHEMAS, then: Step | None = None) -> str:
    """The live schema's fingerprint, as ``drift`` computes it and the hub registry stores it."""
    return snapshot(conn, schemas=schemas, then=then).fingerprint


def fingerprint_steps(
    heard: Callable[[str], None],
    *,
    schemas: Sequence[str] = DEFAULT_SCHEMAS,
    excluded: Sequence[str] = BOOKKEEPING_TABLES,
) -> list[Step]:
    """The fingerprint's statements, for another message to carry (a run's last batch carries them
    behind its last revision: one round trip less); ``heard`` gets the fingerprint.

    The carrier sends them in one transaction and in this order: the settings
    the first one pins hold for the second.
    """
    return _snapshot_steps(list(schemas), list(excluded), lambda found: heard(found.fingerprint))


def _snapshot_steps(schemas: list[str], excluded: list[str], heard: Callable[[Snapshot], None]) -> list[Step]:
    """What reading a snapshot sends, whoever carries it; ``heard`` gets the snapshot."""

    def answer(row: tuple[Any, ...]) -> None:
        heard(_snapshot_of(_parts(row)))

    params = {"schemas": schemas, "excluded": excluded}
    return [Step(_PINNED_SETTINGS, {}, _ignored), Step(queries.SNAPSHOT, params, answer)]


def _ignored(row: tuple[Any, ...]) -> None:
    """The answer of a statement sent for its effect."""


def fingerprint_of(target: Target, conn: Any = None) -> str | None:
    """``target``'s fingerprint, on ``conn`` when given (open, autocommit), else on a connection
    of its own; ``None`` when it cannot be read.

    For reports that must not fail because of it (the hub registry's metadata).
    """
    try:
        if conn is not None:
            return fingerprint(conn)
        with connect(target, autocommit=True) as own:
            return fingerprint(own)
    except OpheliaError:
        return None
    except Exception as exc:
        if sqlstate_of(exc) is None and not is_connection_error(exc):
            raise
        return None


def diff(reference: Snapshot, live: Snapshot) -> list[Difference]:
    """What ``live`` has that ``reference`` has not, and the other way round, in a stable order."""
    found: list[Difference] = []
    for category in CATEGORIES:
        want = reference.objects.get(category, {})
        have = live.objects.get(category, {})
        for key in sorted(set(want) | set(have)):
            if key not in have:
                found.append(Difference(category, key, "missing", _summary(want[key])))
            elif key not in want:
                found.append(Difference(category, key, "extra", _summary(have[key])))
            elif want[key] != have[key]:
                found.append(Difference(category, key, "changed", _changes(want[key], have[key])))
    return found


def _summary(value: Any) -> str:
    if not isinstance(value, Mapping):
        return str(value)
    for name in ("type", "definition", "privileges", "command", "kind"):
        if value.get(name):
            return str(value[name])
    return ""


def _changes(want: Any, have: Any) -> str:
    if not (isinstance(want, Mapping) and isinstance(have, Mapping)):
        return f"expected {want!r}, found {have!r}"
    parts = []
    for name in sorted(set(want) | set(have)):
        if want.get(name) != have.get(name):
            parts.append(f"{name}: expected {_short(want.get(name))}, found {_short(have.get(name))}")
    return "; ".join(parts)


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# For the snapshot's transaction only. pg_get_expr/pg_get_indexdef/format_type qualify
# names by what the search path makes visible: pinning it makes their text the same on
# every database. The planner settings change the plan, never the answer: the snapshot
# joins small sets of catalog rows on indexed oids, where nested loops in the order
# written are cheapest, and the planner, weighing hash joins and join orders from a new
# database's catalog statistics, spent more finding a plan (3.2 ms) than nested loops
# take to run (7.0 ms in all before, 5.3 after, on the shipped chain's schema).
_PINNED_SETTINGS = """SELECT set_config('search_path', 'pg_catalog', true),
  set_config('join_collapse_limit', '1', true), set_config('from_collapse_limit', '1', true),
  set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"""


def _read(conn: Any, schemas: list[str], excluded: list[str], then: Step | None = None) -> Snapshot:
    """Read the snapshot in one round trip (a pipeline), in one transaction, ``then`` last.

    Outside a transaction (an autocommit connection, or one Alembic's transactions
    are over on) the pipeline's statements up to its one Sync are one implicit
    transaction; inside one, a savepoint of psycopg's holds them.
    """
    found: list[Snapshot] = []
    steps = [*_snapshot_steps(schemas, excluded, found.append), *([then] if then is not None else [])]
    outside = conn.autocommit or conn.info.transaction_status == TransactionStatus.IDLE
    with (
        autocommit(conn) if outside else nullcontext(),
        conn.pipeline(),
        nullcontext() if outside else conn.transaction(),
    ):
        cursors = [conn.execute(step.sql, step.params or None) for step in steps]
    for step, cursor in zip(steps, cursors, strict=True):
        step.answer(tuple(cursor.fetchone() or ()))
    return found[0]


def _parts(row: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog query's one row, as each part's rows by the part's name."""
    (parts,) = row
    return {
        name: [tuple(part_row) for part_row in rows] for name, rows in zip(queries.PARTS, parts, strict=True)
    }


def _snapshot_of(fetched: dict[str, list[tuple[Any, ...]]]) -> Snapshot:
    reader = _Reader(fetched)
    reader.schemas()
    reader.relations()
    reader.columns_and_sequences()
    reader.indexes_constraints_triggers_policies()
    reader.functions_and_types()
    objects = reader.objects
    return Snapshot(objects={category: dict(sorted(found.items())) for category, found in objects.items()})


class _Reader:
    """Fills ``objects`` category by category from the fetched rows, grants included."""

    def __init__(self, fetched: dict[str, list[tuple[Any, ...]]]) -> None:
        self.fetched = fetched
        self.objects: dict[str, dict[str, Any]] = {category: {} for category in CATEGORIES}
        self.names: dict[int, str] = {}
        self.sequence_oids: set[int] = set()

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        return self.fetched[query]

    def grant(self, kind: str, name: str, grants: list[list[Any]] | None) -> None:
        """Record ``grants`` (grantee, privilege, grantable) on one object, for the managed roles."""
        found: dict[str, set[str]] = {}
        for grantee, privilege, grantable in grants or []:
            if grantee in MANAGED_GRANTEES:
                found.setdefault(grantee, set()).add(privilege + (" WITH GRANT OPTION" if grantable else ""))
        for grantee, privileges in found.items():
            key = f"{kind} {name} to {grantee}"
            self.objects["grant"][key] = {"privileges": ", ".join(sorted(privileges))}

    def schemas(self) -> None:
        for name, grants in self.rows("SCHEMAS"):
            self.objects["schema"][name] = {"kind": "schema"}
            self.grant("schema", name, grants)

    def relations(self) -> None:
        for oid, schema, name, kind, rls, force, view, grants in self.rows("RELATIONS"):
            qualified = f"{schema}.{name}"
            self.names[oid] = qualified
            if kind == "S":
                self.sequence_oids.add(oid)
                self.grant("sequence", qualified, grants)
                continue
            self.objects["table"][qualified] = {
                "kind": queries.RELKINDS[kind],
                "rls": bool(rls),
                "force_rls": bool(force),
                "definition": view,
            }
            self.grant("table", qualified, grants)

    def columns_and_sequences(self) -> None:
        # The query leaves out a sequence's last_value, log_cnt, is_called: its state, not columns.
        names = self.names
        for rel, col, type_, not_null, default, identity, generated, collation, grants in self.rows(
            "COLUMNS"
        ):
            key = f"{names[rel]}.{col}"
            self.objects["column"][key] = {
                "type": type_,
                "not_null": bool(not_null),
                "default": default,
                "identity": identity or None,
                "generated": generated or None,
                "collation": collation,
            }
            self.grant("column", key, grants)
        for rel, type_, start, step, low, high, cache, cycle in self.rows("SEQUENCES"):
            self.objects["sequence"][names[rel]] = {
                "type": type_,
                "start": start,
                "increment": step,
                "min": low,
                "max": high,
                "cache": cache,
                "cycle": bool(cycle),
            }

    def indexes_constraints_triggers_policies(self) -> None:
        names, objects = self.names, self.objects
        schema_of = {oid: qualified.split(".", 1)[0] for oid, qualified in names.items()}
        for rel, name, definition, valid in self.rows("INDEXES"):
            objects["index"][f"{schema_of[rel]}.{name}"] = {
                "table": names[rel],
                "definition": definition,
                "valid": bool(valid),
            }
        for rel, name, kind, definition, validated in self.rows("CONSTRAINTS"):
            objects["constraint"][f"{names[rel]}.{name}"] = {
                "type": queries.CONSTRAINT_TYPES.get(kind, kind),
                "definition": definition,
                "validated": bool(validated),
            }
        for rel, name, definition, enabled in self.rows("TRIGGERS"):
            objects["trigger"][f"{names[rel]}.{name}"] = {"definition": definition, "enabled": enabled}
        for rel, name, permissive, command, roles, using, check in self.rows("POLICIES"):
            objects["policy"][f"{names[rel]}.{name}"] = {
                "command": queries.POLICY_COMMANDS.get(command, command),
                "permissive": bool(permissive),
                "roles": list(roles),
                "using": using,
                "with_check": check,
            }

    def functions_and_types(self) -> None:
        for row in self.rows("FUNCTIONS"):
            schema, name, args, result, language, kind, volatility, *rest = row
            definer, strict, config, body, grants = rest
            key = f"{schema}.{name}({args})"
            self.objects["function"][key] = {
                "kind": queries.FUNCTION_KINDS.get(kind, kind),
                "result": result,
                "language": language,
                "volatility": queries.VOLATILITY.get(volatility, volatility),
                "security_definer": bool(definer),
                "strict": bool(strict),
                "config": sorted(config or []),
                "definition": body,
            }
            self.grant("function", key, grants)
        for schema, name, kind, definition in self.rows("TYPES"):
            self.objects["type"][f"{schema}.{name}"] = {
                "kind": "enum" if kind == "e" else "domain",
                "definition": definition,
            }
