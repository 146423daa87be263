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

from ophelia_db.results import Record

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Target

# Bump when the snapshot's shape changes, so cached reference snapshots are rebuilt.
CATALOG_FORMAT = 1
DEFAULT_SCHEMAS = ("public",)
# The tool's own bookkeeping: present or not depending on how an instance was
# versioned (by a run, by adopt, by a repair), never part of the chain's schema.
BOOKKEEPING_TABLES = ("public.alembic_version", "public.ophelia_repairs")
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

_NOT_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass
  AND e.objid = {oid} AND e.deptype = 'e')"""

_RELATIONS = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       c.relowner,
       coalesce(c.relacl,
                acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND {_NOT_EXTENSION.format(catalog="pg_class", oid="c.oid")}
  AND n.nspname || '.' || c.relname <> ALL(%(excluded)s)
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
      AND tn.nspname || '.' || t.relname = ANY(%(excluded)s))
"""

_SCHEMAS = """
SELECT n.nspname, n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner))::text
FROM pg_namespace n WHERE n.nspname = ANY(%(schemas)s)
"""

_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END, a.attacl::text
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = ANY(%(oids)s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
"""

_SEQUENCES = """
SELECT s.seqrelid, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       s.seqcache, s.seqcycle
FROM pg_sequence s WHERE s.seqrelid = ANY(%(oids)s::oid[])
"""

_INDEXES = """
SELECT i.indrelid, ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(oids)s::oid[])
"""

_CONSTRAINTS = """
SELECT c.conrelid, c.conname, c.contype, pg_get_constraintdef(c.oid), c.convalidated
FROM pg_constraint c WHERE c.conrelid = ANY(%(oids)s::oid[])
"""

_TRIGGERS = """
SELECT t.tgrelid, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
FROM pg_trigger t WHERE t.tgrelid = ANY(%(oids)s::oid[]) AND NOT t.tgisinternal
"""

_POLICIES = """
SELECT p.polrelid, p.polname, p.polpermissive, p.polcmd,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r)::text END
             FROM unnest(p.polroles) AS r ORDER BY 1),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_policy p WHERE p.polrelid = ANY(%(oids)s::oid[])
"""

_FUNCTIONS = f"""
SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       l.lanname, p.prokind, p.provolatile, p.prosecdef, p.proisstrict, p.proconfig, p.prosrc,
       p.proowner, coalesce(p.proacl, acldefault('f', p.proowner))::text
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = ANY(%(schemas)s) AND {_NOT_EXTENSION.format(catalog="pg_proc", oid="p.oid")}
"""

_TYPES = f"""
SELECT n.nspname, t.typname, t.typtype,
       CASE WHEN t.typtype = 'e' THEN
              (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e
               WHERE e.enumtypid = t.oid)
            ELSE format_type(t.typbasetype, t.typtypmod) || coalesce(' ' ||
              (SELECT string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname)
               FROM pg_constraint c WHERE c.contypid = t.oid), '')
       END
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd')
  AND {_NOT_EXTENSION.format(catalog="pg_type", oid="t.oid")}
"""

# aclexplode() over the effective ACL (acldefault() where it is NULL), without the
# owner's own entries: owners legitimately differ (postgres, supabase_admin, ...).
_ACL = """
SELECT x.kind, x.name, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END,
       a.privilege_type, a.is_grantable
FROM unnest(%(kinds)s::text[], %(names)s::text[], %(owners)s::oid[], %(acls)s::text[])
     AS x(kind, name, owner, acl)
CROSS JOIN LATERAL aclexplode(x.acl::aclitem[]) AS a
WHERE a.grantee <> x.owner
"""

_RELKINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
}
_CONSTRAINT_TYPES = {
    "p": "primary key",
    "u": "unique",
    "f": "foreign key",
    "c": "check",
    "x": "exclusion",
    "t": "trigger",
    "n": "not null",
}
_FUNCTION_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window"}
_VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
_POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


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
    from ophelia_db.errors import OpheliaError
    from ophelia_db.fleet.connections import connect, is_connection_error

    try:
        with connect(target, autocommit=True) as conn:
            return fingerprint(conn)
    except OpheliaError:
        return None
    except Exception as exc:
        if getattr(exc, "sqlstate", None) is None and not is_connection_error(exc):
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
    objects: dict[str, dict[str, Any]] = {category: {} for category in CATEGORIES}
    acls: list[tuple[str, str, int, str]] = []
    for name, owner, acl in _rows(conn, _SCHEMAS, {"schemas": schemas}):
        objects["schema"][name] = {"kind": "schema"}
        acls.append(("schema", name, owner, acl))
    relations = _rows(conn, _RELATIONS, {"schemas": schemas, "excluded": excluded})
    names: dict[int, str] = {}
    for oid, schema, name, kind, rls, force, view, owner, acl in relations:
        qualified = f"{schema}.{name}"
        names[oid] = qualified
        if kind == "S":
            acls.append(("sequence", qualified, owner, acl))
            continue
        objects["table"][qualified] = {
            "kind": _RELKINDS[kind],
            "rls": bool(rls),
            "force_rls": bool(force),
            "definition": view,
        }
        acls.append(("table", qualified, owner, acl))
    params = {"oids": list(names)}
    owners = {oid: owner for oid, *_, owner, _acl in relations}
    for rel, col, type_, not_null, default, identity, generated, collation, acl in _rows(
        conn, _COLUMNS, params
    ):
        key = f"{names[rel]}.{col}"
        objects["column"][key] = {
            "type": type_,
            "not_null": bool(not_null),
            "default": default,
            "identity": identity or None,
            "generated": generated or None,
            "collation": collation,
        }
        if acl is not None:
            acls.append(("column", key, owners[rel], acl))
    for rel, type_, start, step, low, high, cache, cycle in _rows(conn, _SEQUENCES, params):
        objects["sequence"][names[rel]] = {
            "type": type_,
            "start": start,
            "increment": step,
            "min": low,
            "max": high,
            "cache": cache,
            "cycle": bool(cycle),
        }
    schema_of = {oid: qualified.split(".", 1)[0] for oid, qualified in names.items()}
    for rel, name, definition, valid in _rows(conn, _INDEXES, params):
        objects["index"][f"{schema_of[rel]}.{name}"] = {
            "table": names[rel],
            "definition": definition,
            "valid": bool(valid),
        }
    for rel, name, kind, definition, validated in _rows(conn, _CONSTRAINTS, params):
        objects["constraint"][f"{names[rel]}.{name}"] = {
            "type": _CONSTRAINT_TYPES.get(kind, kind),
            "definition": definition,
            "validated": bool(validated),
        }
    for rel, name, definition, enabled in _rows(conn, _TRIGGERS, params):
        objects["trigger"][f"{names[rel]}.{name}"] = {"definition": definition, "enabled": enabled}
    for rel, name, permissive, command, roles, using, check in _rows(conn, _POLICIES, params):
        objects["policy"][f"{names[rel]}.{name}"] = {
            "command": _POLICY_COMMANDS.get(command, command),
            "permissive": bool(permissive),
            "roles": list(roles),
            "using": using,
            "with_check": check,
        }
    for row in _rows(conn, _FUNCTIONS, {"schemas": schemas}):
        schema, name, args, result, language, kind, volatility, definer, strict, config, body, owner, acl = (
            row
        )
        key = f"{schema}.{name}({args})"
        objects["function"][key] = {
            "kind": _FUNCTION_KINDS.get(kind, kind),
            "result": result,
            "language": language,
            "volatility": _VOLATILITY.get(volatility, volatility),
            "security_definer": bool(definer),
            "strict": bool(strict),
            "config": sorted(config or []),
            "definition": body,
        }
        acls.append(("function", key, owner, acl))
    for schema, name, kind, definition in _rows(conn, _TYPES, {"schemas": schemas}):
        objects["type"][f"{schema}.{name}"] = {
            "kind": "enum" if kind == "e" else "domain",
            "definition": definition,
        }
    objects["grant"] = _grants(conn, acls)
    return Snapshot(objects={category: dict(sorted(found.items())) for category, found in objects.items()})


def _grants(conn: Any, acls: list[tuple[str, str, int, str]]) -> dict[str, Any]:
    """Explode every object's ACL in one query into ``{"table public.t to anon": privileges}``."""
    if not acls:
        return {}
    rows = _rows(
        conn,
        _ACL,
        {
            "kinds": [kind for kind, *_ in acls],
            "names": [name for _, name, *_ in acls],
            "owners": [owner for _, _, owner, _ in acls],
            "acls": [acl for *_, acl in acls],
        },
    )
    grants: dict[str, set[str]] = {}
    for kind, name, grantee, privilege, grantable in rows:
        grants.setdefault(f"{kind} {name} to {grantee}", set()).add(
            privilege + (" WITH GRANT OPTION" if grantable else "")
        )
    return {key: {"privileges": ", ".join(sorted(value))} for key, value in grants.items()}
