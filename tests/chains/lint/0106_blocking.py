"""A revision lint must refuse: a blocking index build, a concurrent one inside the transaction,
a NOT NULL column without default on an existing table, and no lock_timeout of its own.
"""

from alembic import op

revision = "0106"
down_revision = "0105"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX instance_config_category ON instance_config (category)")
    op.execute("CREATE INDEX CONCURRENTLY instance_registry_status ON public.instance_registry (status)")
    op.execute("ALTER TABLE public.instance_registry ADD COLUMN region text NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE public.instance_registry DROP COLUMN region")
    op.execute("DROP INDEX public.instance_registry_status")
    op.execute("DROP INDEX public.instance_config_category")
