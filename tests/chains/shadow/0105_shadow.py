"""A revision that leaves its session a temporary table named like a catalog.

Test chain only. A temporary table is searched before ``pg_catalog`` whatever
the search path, so every later unqualified ``pg_proc`` in the session is this
table: the schema fingerprint's query fails on it, deterministically, after
the revision committed.
"""

from alembic import op

revision = "0105"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TEMPORARY TABLE pg_proc (shadow integer)")


def downgrade() -> None:
    pass
