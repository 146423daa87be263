"""Create the version mirror that the Ophelia app reads: schema_migrations and schema_version.

The app cannot read Alembic's alembic_version through its anon key, and it wants the history
too, so every database keeps one history row per applied revision in `schema_migrations` and
its current revision in the single row of `schema_version`. The runner writes both through
`register_migration()` in the same transaction as each revision, and the offline SQL calls the
same function. `get_schema_version()` and `get_pending_migrations()` let any API role read the
state. Everyone may read both tables; only service_role (or the owner, which the runner
connects as) may write them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE_TABLES = """
CREATE TABLE public.schema_migrations (
    id serial PRIMARY KEY,
    version varchar(50) UNIQUE NOT NULL,
    name varchar(255) NOT NULL,
    applied_at timestamptz DEFAULT now(),
    checksum varchar(80),
    execution_time_ms integer,
    applied_by varchar(200)
);
COMMENT ON TABLE public.schema_migrations IS
    'One row per applied revision; written by ophelia-db through register_migration().';

CREATE TABLE public.schema_version (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    current_version varchar(50) NOT NULL,
    updated_at timestamptz DEFAULT now(),
    instance_id varchar(50)
);
COMMENT ON TABLE public.schema_version IS
    'The single row holds the current revision; it equals alembic_version after every run.';
"""

# SECURITY INVOKER (the default): callers write with their own privileges, so the table
# policies decide who may register a revision. A NULL p_applied_by records current_user.
# Registering a version again replaces its history row.
CREATE_REGISTER_MIGRATION = """
CREATE FUNCTION public.register_migration(
    p_version text,
    p_name text,
    p_checksum text DEFAULT NULL,
    p_execution_time_ms integer DEFAULT NULL,
    p_applied_by text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
SET search_path = public
AS $fn$
BEGIN
    INSERT INTO schema_migrations AS m
        (version, name, applied_at, checksum, execution_time_ms, applied_by)
    VALUES
        (p_version, p_name, now(), p_checksum, p_execution_time_ms,
         coalesce(p_applied_by, current_user))
    ON CONFLICT (version) DO UPDATE SET
        name = EXCLUDED.name,
        applied_at = EXCLUDED.applied_at,
        checksum = EXCLUDED.checksum,
        execution_time_ms = EXCLUDED.execution_time_ms,
        applied_by = EXCLUDED.applied_by;

    INSERT INTO schema_version AS v (id, current_version, updated_at)
    VALUES (1, p_version, now())
    ON CONFLICT (id) DO UPDATE SET
        current_version = EXCLUDED.current_version,
        updated_at = EXCLUDED.updated_at;
END
$fn$;
"""

# Always exactly one row, so a client can ask for a single object: before the first
# registration current_version, updated_at and instance_id are NULL and migrations_count is 0.
CREATE_GET_SCHEMA_VERSION = """
CREATE FUNCTION public.get_schema_version()
RETURNS TABLE (
    current_version text,
    updated_at timestamptz,
    instance_id text,
    migrations_count integer
)
LANGUAGE sql
STABLE
SET search_path = public
AS $fn$
    SELECT v.current_version::text,
           v.updated_at,
           v.instance_id::text,
           (SELECT count(*) FROM schema_migrations)::integer
    FROM (VALUES (1)) AS one (id)
    LEFT JOIN schema_version AS v ON v.id = one.id
$fn$;
"""

# Keeps the caller's order. NULL entries are skipped, and a version given twice is returned
# once, at its first position.
CREATE_GET_PENDING_MIGRATIONS = """
CREATE FUNCTION public.get_pending_migrations(p_versions text[])
RETURNS SETOF text
LANGUAGE sql
STABLE
SET search_path = public
AS $fn$
    SELECT given.version
    FROM (
        SELECT DISTINCT ON (u.version) u.version, u.position
        FROM unnest(p_versions) WITH ORDINALITY AS u (version, position)
        WHERE u.version IS NOT NULL
        ORDER BY u.version, u.position
    ) AS given
    WHERE NOT EXISTS (
        SELECT 1 FROM schema_migrations AS m WHERE m.version = given.version
    )
    ORDER BY given.position
$fn$;
"""

# RLS is enabled but not forced: the owner (the runner's connection) keeps full access.
# Supabase's default privileges give anon and authenticated every privilege on new tables,
# sequences and functions in public, so those are revoked before the intended grants.
# Reading is granted to PUBLIC as well, so any role (a monitoring login, say) can read the
# version; anon and authenticated are named because Supabase's own grants name them.
SECURE_OBJECTS = """
ALTER TABLE public.schema_migrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.schema_version ENABLE ROW LEVEL SECURITY;

CREATE POLICY schema_migrations_select ON public.schema_migrations
    FOR SELECT TO PUBLIC USING (true);
CREATE POLICY schema_migrations_insert ON public.schema_migrations
    FOR INSERT TO service_role WITH CHECK (true);
CREATE POLICY schema_migrations_update ON public.schema_migrations
    FOR UPDATE TO service_role USING (true) WITH CHECK (true);
CREATE POLICY schema_migrations_delete ON public.schema_migrations
    FOR DELETE TO service_role USING (true);

CREATE POLICY schema_version_select ON public.schema_version
    FOR SELECT TO PUBLIC USING (true);
CREATE POLICY schema_version_insert ON public.schema_version
    FOR INSERT TO service_role WITH CHECK (true);
CREATE POLICY schema_version_update ON public.schema_version
    FOR UPDATE TO service_role USING (true) WITH CHECK (true);
CREATE POLICY schema_version_delete ON public.schema_version
    FOR DELETE TO service_role USING (true);

REVOKE ALL ON TABLE public.schema_migrations, public.schema_version
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON TABLE public.schema_migrations, public.schema_version
    TO PUBLIC, anon, authenticated;
GRANT ALL ON TABLE public.schema_migrations, public.schema_version TO service_role;

REVOKE ALL ON SEQUENCE public.schema_migrations_id_seq
    FROM PUBLIC, anon, authenticated, service_role;
GRANT USAGE, SELECT ON SEQUENCE public.schema_migrations_id_seq TO service_role;

REVOKE ALL ON FUNCTION public.register_migration(text, text, text, integer, text)
    FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.register_migration(text, text, text, integer, text)
    TO service_role;
GRANT EXECUTE ON FUNCTION public.get_schema_version()
    TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.get_pending_migrations(text[])
    TO anon, authenticated, service_role;

-- alembic_version is the runner's own bookkeeping: Supabase's default privileges would
-- let anon rewrite it through the API, so it is closed like the mirror's write side.
DO $$
BEGIN
    IF to_regclass('public.alembic_version') IS NOT NULL THEN
        REVOKE ALL ON TABLE public.alembic_version FROM PUBLIC, anon, authenticated;
        ALTER TABLE public.alembic_version ENABLE ROW LEVEL SECURITY;
    END IF;
END
$$;
"""

DROP_ALL = """
DROP FUNCTION public.get_pending_migrations(text[]);
DROP FUNCTION public.get_schema_version();
DROP FUNCTION public.register_migration(text, text, text, integer, text);
DROP TABLE public.schema_version;
DROP TABLE public.schema_migrations;
"""


def upgrade() -> None:
    op.execute(CREATE_TABLES)
    op.execute(CREATE_REGISTER_MIGRATION)
    op.execute(CREATE_GET_SCHEMA_VERSION)
    op.execute(CREATE_GET_PENDING_MIGRATIONS)
    op.execute(SECURE_OBJECTS)


def downgrade() -> None:
    op.execute(DROP_ALL)
