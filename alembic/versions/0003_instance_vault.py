"""Create the instance vault `instance_config`: per-instance settings stored as JSON values.

Each instance keeps its settings (community name, map centre, feature switches, keys) in one
table that `ophelia-db config` and the provisioning seed write and the Ophelia app reads.
Values are jsonb, so the seed style `INSERT INTO instance_config (key, value, is_secret)
VALUES ('COMMUNITY_NAME', '"Ma Communauté"', false)` works. A trigger bumps `version` and
keeps `previous_value` whenever a value changes. Row-level security keeps secret rows away
from the API roles: anon reads only public non-secret rows, authenticated reads non-secret
rows, and only service_role (or the owner) writes.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE_TABLE = """
CREATE TABLE public.instance_config (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key text UNIQUE NOT NULL,
    value jsonb NOT NULL,
    category text NOT NULL DEFAULT 'general',
    description text,
    is_secret boolean NOT NULL DEFAULT false,
    is_public boolean NOT NULL DEFAULT false,
    version integer NOT NULL DEFAULT 1,
    previous_value jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT instance_config_secret_not_public CHECK (NOT (is_secret AND is_public))
);
COMMENT ON TABLE public.instance_config IS
    'Instance vault: settings as JSON values; anon and authenticated never read secret rows.';
"""

# version, previous_value and created_at are managed here, whatever the UPDATE sets:
# version counts the changes of value, and previous_value is the value before the last one.
CREATE_TOUCH_TRIGGER = """
CREATE FUNCTION public.instance_config_touch() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public
AS $fn$
BEGIN
    IF NEW.value IS DISTINCT FROM OLD.value THEN
        NEW.previous_value := OLD.value;
        NEW.version := OLD.version + 1;
    ELSE
        NEW.previous_value := OLD.previous_value;
        NEW.version := OLD.version;
    END IF;
    NEW.created_at := OLD.created_at;
    NEW.updated_at := now();
    RETURN NEW;
END
$fn$;

CREATE TRIGGER instance_config_touch
    BEFORE UPDATE ON public.instance_config
    FOR EACH ROW EXECUTE FUNCTION public.instance_config_touch();
"""

# RLS is enabled but deliberately not forced: the runner and the provisioning seed connect
# as the table owner (postgres on Supabase) and must be able to read and write every row.
# Forcing it would only make the owner need its own policy. There are no write policies for
# anon or authenticated, so with RLS enabled they cannot change anything even if a later
# grant slipped through. Supabase's default privileges give anon and authenticated every
# privilege on new tables in public, hence the REVOKE before the intended grants.
SECURE_TABLE = """
ALTER TABLE public.instance_config ENABLE ROW LEVEL SECURITY;

CREATE POLICY instance_config_anon_select ON public.instance_config
    FOR SELECT TO anon USING (is_public AND NOT is_secret);
CREATE POLICY instance_config_authenticated_select ON public.instance_config
    FOR SELECT TO authenticated USING (NOT is_secret);
CREATE POLICY instance_config_service_role_all ON public.instance_config
    FOR ALL TO service_role USING (true) WITH CHECK (true);

REVOKE ALL ON TABLE public.instance_config FROM PUBLIC, anon, authenticated;
-- Only the trigger calls this function; Supabase's default privileges would grant it to
-- the API roles, so its ACL is set here rather than left to whatever the defaults are.
REVOKE ALL ON FUNCTION public.instance_config_touch() FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON TABLE public.instance_config TO anon, authenticated;
GRANT ALL ON TABLE public.instance_config TO service_role;
"""

DROP_ALL = """
DROP TABLE public.instance_config;
DROP FUNCTION public.instance_config_touch();
"""


def upgrade() -> None:
    op.execute(CREATE_TABLE)
    op.execute(CREATE_TOUCH_TRIGGER)
    op.execute(SECURE_TABLE)


def downgrade() -> None:
    op.execute(DROP_ALL)
