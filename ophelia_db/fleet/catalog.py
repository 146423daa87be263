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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet import catalog_queries as queries
from ophelia_db.fleet.connections import connect, is_connection_error, sqlstate_of
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
) -> Snapshot:
    """Read the normalised snapshot of ``schemas`` through psycopg connection ``conn``."""
    with _pinned_search_path(conn):
        return _read(conn, list(schemas), list(excluded))


def fingerprint(conn: Any, *, schemas: Sequence[str] = DEFAULT_SCHEMAS) -> str:
    """The live schema's fingerprint, as ``drift`` computes it and the hub registry stores it."""
    return snapshot(conn, schemas=schemas).fingerprint


def fingerprint_of(target: Target) -> str | None:
    """Connect to ``target`` and return its fingerprint; ``None`` when it cannot be read.

    For reports that must not fail because of it (the hub registry's metadata).
    """
    try:
        with connect(target, autocommit=True) as conn:
            return fingerprint(conn)
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


@contextmanager
def _pinned_search_path(conn: Any) -> Iterator[None]:
    # pg_get_expr/pg_get_indexdef/format_type qualify names by what the search
    # path makes visible; pinning it makes their text the same on every database.
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        yield


def _rows(conn: Any, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return list(conn.execute(query, params).fetchall())


def _read(conn: Any, schemas: list[str], excluded: list[str]) -> Snapshot:
    reader = _Reader(conn, schemas)
    reader.schemas()
    reader.relations(excluded)
    reader.columns_and_sequences()
    reader.indexes_constraints_triggers_policies()
    reader.functions_and_types()
    objects = reader.objects
    objects["grant"] = _grants(conn, reader.acls)
    return Snapshot(objects={category: dict(sorted(found.items())) for category, found in objects.items()})


class _Reader:
    """Fills ``objects`` category by category; ``acls`` collects every object's ACL for ``_grants``."""

    def __init__(self, conn: Any, schemas: list[str]) -> None:
        self.conn = conn
        self.params: dict[str, Any] = {"schemas": schemas}
        self.objects: dict[str, dict[str, Any]] = {category: {} for category in CATEGORIES}
        self.acls: list[tuple[str, str, int, str]] = []
        self.names: dict[int, str] = {}
        self.owners: dict[int, int] = {}
        self.sequence_oids: set[int] = set()

    def rows(self, query: str, **extra: Any) -> list[tuple[Any, ...]]:
        return _rows(self.conn, query, {**self.params, **extra})

    def schemas(self) -> None:
        for name, owner, acl in self.rows(queries.SCHEMAS):
            self.objects["schema"][name] = {"kind": "schema"}
            self.acls.append(("schema", name, owner, acl))

    def relations(self, excluded: list[str]) -> None:
        for oid, schema, name, kind, rls, force, view, owner, acl in self.rows(
            queries.RELATIONS, excluded=excluded
        ):
            qualified = f"{schema}.{name}"
            self.names[oid], self.owners[oid] = qualified, owner
            if kind == "S":
                self.sequence_oids.add(oid)
                self.acls.append(("sequence", qualified, owner, acl))
                continue
            self.objects["table"][qualified] = {
                "kind": queries.RELKINDS[kind],
                "rls": bool(rls),
                "force_rls": bool(force),
                "definition": view,
            }
            self.acls.append(("table", qualified, owner, acl))
        self.params["oids"] = list(self.names)

    def columns_and_sequences(self) -> None:
        names = self.names
        for rel, col, type_, not_null, default, identity, generated, collation, acl in self.rows(
            queries.COLUMNS
        ):
            if rel in self.sequence_oids:
                continue  # a sequence's last_value, log_cnt, is_called are its state, not columns
            key = f"{names[rel]}.{col}"
            self.objects["column"][key] = {
                "type": type_,
                "not_null": bool(not_null),
                "default": default,
                "identity": identity or None,
                "generated": generated or None,
                "collation": collation,
            }
            if acl is not None:
                self.acls.append(("column", key, self.owners[rel], acl))
        for rel, type_, start, step, low, high, cache, cycle in self.rows(queries.SEQUENCES):
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
        for rel, name, definition, valid in self.rows(queries.INDEXES):
            objects["index"][f"{schema_of[rel]}.{name}"] = {
                "table": names[rel],
                "definition": definition,
                "valid": bool(valid),
            }
        for rel, name, kind, definition, validated in self.rows(queries.CONSTRAINTS):
            objects["constraint"][f"{names[rel]}.{name}"] = {
                "type": queries.CONSTRAINT_TYPES.get(kind, kind),
                "definition": definition,
                "validated": bool(validated),
            }
        for rel, name, definition, enabled in self.rows(queries.TRIGGERS):
            objects["trigger"][f"{names[rel]}.{name}"] = {"definition": definition, "enabled": enabled}
        for rel, name, permissive, command, roles, using, check in self.rows(queries.POLICIES):
            objects["policy"][f"{names[rel]}.{name}"] = {
                "command": queries.POLICY_COMMANDS.get(command, command),
                "permissive": bool(permissive),
                "roles": list(roles),
                "using": using,
                "with_check": check,
            }

    def functions_and_types(self) -> None:
        for row in self.rows(queries.FUNCTIONS):
            schema, name, args, result, language, kind, volatility, *rest = row
            definer, strict, config, body, owner, acl = rest
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
            self.acls.append(("function", key, owner, acl))
        for schema, name, kind, definition in self.rows(queries.TYPES):
            self.objects["type"][f"{schema}.{name}"] = {
                "kind": "enum" if kind == "e" else "domain",
                "definition": definition,
            }


def _grants(conn: Any, acls: list[tuple[str, str, int, str]]) -> dict[str, Any]:
    """Explode every object's ACL in one query into ``{"table public.t to anon": privileges}``."""
    if not acls:
        return {}
    rows = _rows(
        conn,
        queries.ACL,
        {
            "kinds": [kind for kind, *_ in acls],
            "names": [name for _, name, *_ in acls],
            "owners": [owner for _, _, owner, _ in acls],
            "acls": [acl for *_, acl in acls],
        },
    )
    grants: dict[str, set[str]] = {}
    for kind, name, grantee, privilege, grantable in rows:
        if grantee not in MANAGED_GRANTEES:
            continue
        grants.setdefault(f"{kind} {name} to {grantee}", set()).add(
            privilege + (" WITH GRANT OPTION" if grantable else "")
        )
    return {key: {"privileges": ", ".join(sorted(value))} for key, value in grants.items()}
