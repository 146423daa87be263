"""The catalog query behind ``catalog.snapshot``, and the codes it returns spelled out.

Each part reads one kind of object of the given schemas, leaving out what
extensions own, so that a snapshot holds only what migrations created, each
object with its own grants. The parts are put together into one statement
(``SNAPSHOT``): the managed relations are selected once, in a CTE the parts
share, and the server plans one query instead of ten (planning these catalog
joins costs more than running them), which keeps the fingerprint cheap after
every migration.
"""

NOT_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass
  AND e.objid = {oid} AND e.deptype = 'e')"""

# An object's grants as ``[[grantee, privilege, grantable], ...]``: aclexplode() over
# its effective ACL (acldefault() where it is NULL), without the owner's own
# entries, since owners legitimately differ (postgres, supabase_admin, ...).
GRANTS = """(SELECT json_agg(json_build_array(
    CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee)::text END,
    g.privilege_type, g.is_grantable))
  FROM aclexplode({acl}) AS g WHERE g.grantee <> {owner})"""
_RELATION_ACL = (
    "coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))"
)

_SCHEMA_ACL = "coalesce(n.nspacl, acldefault('n', n.nspowner))"

# The relations a snapshot covers: the managed schemas' tables, views, sequences,
# less extension members, the bookkeeping tables and what they own (their
# sequences and indexes). Computed once per snapshot, in the ``managed`` CTE.
MANAGED_RELATIONS = f"""
SELECT c.oid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND {NOT_EXTENSION.format(catalog="pg_class", oid="c.oid")}
  AND n.nspname || '.' || c.relname <> ALL(%(excluded)s)
  AND NOT EXISTS (
    SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
      AND tn.nspname || '.' || t.relname = ANY(%(excluded)s))
"""
# An array, not ``IN (SELECT ...)``: the planner keeps the catalogs' index scans.
MANAGED_OIDS = "ARRAY(SELECT oid FROM managed)"

# Each part: the columns of one row per object, and where the rows come from.
PARTS: dict[str, tuple[str, str]] = {
    "SCHEMAS": (
        "n.nspname, " + GRANTS.format(acl=_SCHEMA_ACL, owner="n.nspowner"),
        "pg_namespace n WHERE n.nspname = ANY(%(schemas)s)",
    ),
    "RELATIONS": (
        f"""c.oid, n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
       {GRANTS.format(acl=_RELATION_ACL, owner="c.relowner")}""",
        f"pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY({MANAGED_OIDS})",
    ),
    "COLUMNS": (
        f"""a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END,
       CASE WHEN a.attacl IS NOT NULL THEN {GRANTS.format(acl="a.attacl", owner="r.relowner")} END""",
        f"""pg_attribute a
JOIN pg_class r ON r.oid = a.attrelid AND r.relkind <> 'S'
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attrelid = ANY({MANAGED_OIDS}) AND a.attnum > 0 AND NOT a.attisdropped""",
    ),
    "SEQUENCES": (
        """s.seqrelid, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       s.seqcache, s.seqcycle""",
        f"pg_sequence s WHERE s.seqrelid = ANY({MANAGED_OIDS})",
    ),
    "INDEXES": (
        "i.indrelid, ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid",
        f"pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = ANY({MANAGED_OIDS})",
    ),
    "CONSTRAINTS": (
        "c.conrelid, c.conname, c.contype, pg_get_constraintdef(c.oid), c.convalidated",
        f"pg_constraint c WHERE c.conrelid = ANY({MANAGED_OIDS})",
    ),
    "TRIGGERS": (
        "t.tgrelid, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled",
        f"pg_trigger t WHERE t.tgrelid = ANY({MANAGED_OIDS}) AND NOT t.tgisinternal",
    ),
    "POLICIES": (
        """p.polrelid, p.polname, p.polpermissive, p.polcmd,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r)::text END
             FROM unnest(p.polroles) AS r ORDER BY 1),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)""",
        f"pg_policy p WHERE p.polrelid = ANY({MANAGED_OIDS})",
    ),
    "FUNCTIONS": (
        f"""n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
       l.lanname, p.prokind, p.provolatile, p.prosecdef, p.proisstrict, p.proconfig, p.prosrc,
       {GRANTS.format(acl="coalesce(p.proacl, acldefault('f', p.proowner))", owner="p.proowner")}""",
        f"""pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = ANY(%(schemas)s) AND {NOT_EXTENSION.format(catalog="pg_proc", oid="p.oid")}""",
    ),
    "TYPES": (
        """n.nspname, t.typname, t.typtype,
       CASE WHEN t.typtype = 'e' THEN
              (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e
               WHERE e.enumtypid = t.oid)
            ELSE format_type(t.typbasetype, t.typtypmod) || coalesce(' ' ||
              (SELECT string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname)
               FROM pg_constraint c WHERE c.contypid = t.oid), '')
       END""",
        f"""pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd')
  AND {NOT_EXTENSION.format(catalog="pg_type", oid="t.oid")}""",
    ),
}

# One row, one JSON array: for each part in PARTS' order, the array of its rows.
SNAPSHOT = (
    f"WITH managed AS MATERIALIZED ({MANAGED_RELATIONS})\nSELECT json_build_array(\n"
    + ",\n".join(
        f"(SELECT coalesce(json_agg(json_build_array({columns})), '[]'::json) FROM {source})"
        for columns, source in PARTS.values()
    )
    + ")"
)

RELKINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
}
CONSTRAINT_TYPES = {
    "p": "primary key",
    "u": "unique",
    "f": "foreign key",
    "c": "check",
    "x": "exclusion",
    "t": "trigger",
    "n": "not null",
}
FUNCTION_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window"}
VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}
POLICY_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
