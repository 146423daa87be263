"""Create the run journal on the hub: `ophelia_runs`, `ophelia_run_shards`, `ophelia_run_instances`.

Every `upgrade`/`downgrade` over the fleet records a run here as it goes: who started it and
where, each shard that took part, and one row per instance that becomes final when the
instance's result is. A run killed half-way thus leaves an accurate journal, and
`upgrade --resume RUN` redoes only what it did not finish. Like the registry, any
instance can act as the hub, so every database of the fleet gets the tables.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A run's finish and outcome are derived from its shards (a sharded run is finished when
# all of them are), so that shards on different machines never overwrite each other.
CREATE_TABLES = """
CREATE TABLE public.ophelia_runs (
    run_id text PRIMARY KEY CHECK (run_id ~ '^[A-Za-z0-9._:-]{1,100}$'),
    command text NOT NULL CHECK (command IN ('upgrade', 'downgrade')),
    target text NOT NULL,
    selection jsonb NOT NULL DEFAULT '{}',
    shard_count integer NOT NULL DEFAULT 1 CHECK (shard_count >= 1),
    resumes text REFERENCES public.ophelia_runs (run_id),
    tool_version text,
    started_by text,
    git_sha text,
    ci_job_url text,
    started_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ophelia_runs_started_at ON public.ophelia_runs (started_at DESC);

CREATE TABLE public.ophelia_run_shards (
    run_id text NOT NULL REFERENCES public.ophelia_runs (run_id) ON DELETE CASCADE,
    shard integer NOT NULL CHECK (shard >= 1),
    started_by text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome text,
    exit_code integer,
    PRIMARY KEY (run_id, shard)
);

CREATE TABLE public.ophelia_run_instances (
    run_id text NOT NULL REFERENCES public.ophelia_runs (run_id) ON DELETE CASCADE,
    instance text NOT NULL,
    shard integer NOT NULL DEFAULT 1,
    wave integer NOT NULL DEFAULT 1,
    state text NOT NULL CHECK (state IN ('planned', 'running', 'ok', 'noop', 'failed', 'locked',
                                         'refused', 'skipped', 'unreachable')),
    from_revision text,
    to_revision text,
    applied text[] NOT NULL DEFAULT '{}',
    duration_ms integer,
    exit_code integer,
    error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, instance)
);
COMMENT ON TABLE public.ophelia_runs IS
    'Run journal of the fleet runner (ophelia-db); no API role may read it.';
COMMENT ON COLUMN public.ophelia_run_instances.error IS
    'Redacted: never holds passwords, keys or tokens.';
"""

# RLS without a policy for the API roles, and no grant: the journal says which instances
# failed and why, which is for operators, not for the app. Supabase's default privileges
# would give anon, authenticated and service_role everything on new tables in public.
SECURE_TABLES = """
ALTER TABLE public.ophelia_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.ophelia_run_shards ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.ophelia_run_instances ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE public.ophelia_runs, public.ophelia_run_shards, public.ophelia_run_instances
    FROM PUBLIC, anon, authenticated, service_role;
"""

DROP_ALL = """
DROP TABLE public.ophelia_run_instances;
DROP TABLE public.ophelia_run_shards;
DROP TABLE public.ophelia_runs;
"""


def upgrade() -> None:
    op.execute(CREATE_TABLES)
    op.execute(SECURE_TABLES)


def downgrade() -> None:
    op.execute(DROP_ALL)
