"""Create stand-ins for the Supabase roles and auth functions where they are missing.

Later revisions grant privileges to and write policies for the Supabase roles `anon`,
`authenticated` and `service_role`, and the Ophelia app calls `auth.uid()` and `auth.role()`.
A Supabase project already has all of them, and this revision leaves them exactly as they
are. A plain PostgreSQL database has none of them, so this revision creates NOLOGIN roles
and PostgREST-style `auth` functions with the same names. Every schema or function it
creates carries the comment 'ophelia-db stand-in', so the downgrade removes only those.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Roles are cluster-wide, and the runner migrates many databases of one cluster at the same
# moment. Two transactions can both see a role as missing. The second CREATE ROLE then
# either waits for the first transaction's commit and fails with unique_violation, or sees
# the committed role and fails with duplicate_object. Each CREATE ROLE therefore runs in its
# own subtransaction (a block with an EXCEPTION clause), and losing the race is not an error.
# Every database creates the roles in the same order, so these waits cannot deadlock.
# BYPASSRLS can only be granted by a superuser. Without it, service_role still gets full
# access to our tables through the explicit service_role policies of later revisions.
CREATE_ROLES = """
DO $$
DECLARE
    is_superuser boolean := (SELECT rolsuper FROM pg_catalog.pg_roles
                             WHERE rolname = current_user);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        BEGIN
            CREATE ROLE anon NOLOGIN;
            COMMENT ON ROLE anon IS 'ophelia-db stand-in';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        BEGIN
            CREATE ROLE authenticated NOLOGIN;
            COMMENT ON ROLE authenticated IS 'ophelia-db stand-in';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        BEGIN
            IF is_superuser THEN
                CREATE ROLE service_role NOLOGIN BYPASSRLS;
            ELSE
                CREATE ROLE service_role NOLOGIN;
            END IF;
            COMMENT ON ROLE service_role IS 'ophelia-db stand-in';
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;
"""

# The schema and each function are checked separately, so a database that has some of
# them keeps those untouched and receives only the missing ones. The privileges below are
# granted only on the objects created here; Supabase grants its own.
# Like PostgREST, the functions read the per-claim setting first and fall back to the
# JSON claims object.
CREATE_AUTH_STANDINS = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'auth') THEN
        CREATE SCHEMA auth;
        COMMENT ON SCHEMA auth IS 'ophelia-db stand-in';
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'uid' AND p.pronargs = 0
    ) THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE sql STABLE
        AS $fn$
            SELECT coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb
                    ->> 'sub'
            )::uuid
        $fn$;
        COMMENT ON FUNCTION auth.uid() IS 'ophelia-db stand-in';
        GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'role' AND p.pronargs = 0
    ) THEN
        CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE sql STABLE
        AS $fn$
            SELECT coalesce(
                nullif(pg_catalog.current_setting('request.jwt.claim.role', true), ''),
                nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb
                    ->> 'role'
            )::text
        $fn$;
        COMMENT ON FUNCTION auth.role() IS 'ophelia-db stand-in';
        GRANT EXECUTE ON FUNCTION auth.role() TO anon, authenticated, service_role;
    END IF;
END
$$;
"""

# Supabase grants the same privilege; granting it again changes nothing there.
GRANT_PUBLIC_USAGE = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
"""

# Roles are never dropped: they are shared by every database of the cluster, and other
# databases still hold privileges and policies that name them. The USAGE grant on schema
# public stays for the same reason, and because a Supabase project had it before.
# The auth schema is dropped only when nothing but our own stand-ins lived in it.
DROP_AUTH_STANDINS = """
DO $$
BEGIN
    IF pg_catalog.obj_description(
        pg_catalog.to_regprocedure('auth.uid()'), 'pg_proc') = 'ophelia-db stand-in'
    THEN
        DROP FUNCTION auth.uid();
    END IF;

    IF pg_catalog.obj_description(
        pg_catalog.to_regprocedure('auth.role()'), 'pg_proc') = 'ophelia-db stand-in'
    THEN
        DROP FUNCTION auth.role();
    END IF;

    IF pg_catalog.obj_description(
        pg_catalog.to_regnamespace('auth'), 'pg_namespace') = 'ophelia-db stand-in'
    THEN
        BEGIN
            DROP SCHEMA auth;
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'schema auth still holds other objects; it is kept';
        END;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(CREATE_ROLES)
    op.execute(CREATE_AUTH_STANDINS)
    op.execute(GRANT_PUBLIC_USAGE)


def downgrade() -> None:
    op.execute(DROP_AUTH_STANDINS)
