"""A revision with a non-transactional section: an index built concurrently.

Test chain only: tests kill the runner while the index is being built (it waits
for a transaction holding the table) or after it (during the sleep).
"""

from alembic import op

revision = "0105"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE IF NOT EXISTS public.cic_target (id integer)")
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS cic_target_id ON public.cic_target (id)")
        op.execute("SELECT pg_sleep(coalesce(current_setting('ophelia.test_sleep', true), '0')::float)")


def downgrade() -> None:
    op.execute("DROP TABLE public.cic_target")
