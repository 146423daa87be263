"""Create the hub registry `instance_registry`: one row per instance of the fleet.

The hub records every instance here (subdomain, community, Supabase endpoint and public anon
key, status) and the runner reports each instance's schema version and last run into it.
The Ophelia app resolves a subdomain to its instance by reading the active rows through its
anon key, so anon and authenticated may read only active rows and only the columns the app
needs. Any instance can act as the hub, so every database of the fleet gets the table.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Only the public anon key is stored: a service_role key is never stored here, because
# this table is readable through the anon key.
CREATE_TABLE = """
CREATE TABLE public.instance_registry (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subdomain text UNIQUE NOT NULL CHECK (subdomain ~ '^[a-z0-9-]{1,20}$'),
    community_name text NOT NULL,
    community_type text CHECK (community_type IN
        ('municipality', 'intercommunality', 'university', 'association', 'region')),
    supabase_url text,
    supabase_anon_key text,
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('pending', 'active', 'suspended', 'archived')),
    metadata jsonb NOT NULL DEFAULT '{}',
    is_hub boolean NOT NULL DEFAULT false,
    contact_email text,
    schema_version text,
    schema_updated_at timestamptz,
    migrations_count integer,
    last_run_status text,
    last_run_at timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE public.instance_registry IS
    'Hub registry of the fleet; active rows are readable through the anon key.';
COMMENT ON COLUMN public.instance_registry.supabase_anon_key IS
    'Public anon key only; a service_role key is never stored here.';
COMMENT ON COLUMN public.instance_registry.last_error IS
    'Last run error, redacted: never holds passwords, keys or tokens.';
"""

CREATE_TOUCH_TRIGGER = """
CREATE FUNCTION public.instance_registry_touch() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public
AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$fn$;

CREATE TRIGGER instance_registry_touch
    BEFORE UPDATE ON public.instance_registry
    FOR EACH ROW EXECUTE FUNCTION public.instance_registry_touch();
"""

# RLS is enabled but not forced: the runner writes the registry as the owner or as
# service_role. anon and authenticated get column-level SELECT only, so `SELECT *` is
# refused for them and the app names the columns it reads; contact_email, metadata and
# the run reports stay private. Supabase's default privileges give anon and authenticated
# every privilege on new tables in public, hence the REVOKE before the intended grants.
SECURE_TABLE = """
ALTER TABLE public.instance_registry ENABLE ROW LEVEL SECURITY;

CREATE POLICY instance_registry_active_select ON public.instance_registry
    FOR SELECT TO anon, authenticated USING (status = 'active');
CREATE POLICY instance_registry_service_role_all ON public.instance_registry
    FOR ALL TO service_role USING (true) WITH CHECK (true);

REVOKE ALL ON TABLE public.instance_registry FROM PUBLIC, anon, authenticated;
-- Only the trigger calls this function; Supabase's default privileges would grant it to
-- the API roles, so its ACL is set here rather than left to whatever the defaults are.
REVOKE ALL ON FUNCTION public.instance_registry_touch() FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT (id, subdomain, community_name, community_type, supabase_url,
              supabase_anon_key, status, is_hub, schema_version)
    ON TABLE public.instance_registry TO anon, authenticated;
GRANT ALL ON TABLE public.instance_registry TO service_role;
"""

DROP_ALL = """
DROP TABLE public.instance_registry;
DROP FUNCTION public.instance_registry_touch();
"""


def upgrade() -> None:
    op.execute(CREATE_TABLE)
    op.execute(CREATE_TOUCH_TRIGGER)
    op.execute(SECURE_TABLE)


def downgrade() -> None:
    op.execute(DROP_ALL)
