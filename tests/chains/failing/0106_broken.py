"""A broken revision: valid DDL, then invalid SQL.

Test chain only: the table created first must vanish with the rollback.
"""

from alembic import op

revision = "0106"
down_revision = "0105"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE public.half_done (id integer)")
    op.execute("ALTER TABLE public.instance_notes ADD COLUMN tag text")
    op.execute("THIS IS NOT VALID SQL")


def downgrade() -> None:
    op.execute("DROP TABLE public.half_done")
