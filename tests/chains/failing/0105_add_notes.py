"""Add the test table instance_notes (a revision that works).

Test chain only: used by tests to exercise a failure in the middle of a run.
"""

from alembic import op

revision = "0105"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE public.instance_notes (id serial PRIMARY KEY, body text NOT NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE public.instance_notes")
