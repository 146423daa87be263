"""A test revision that takes a while: a table, then a long statement.

Tests interrupt it mid-statement (SIGTERM) or hold a conflicting lock on
``slow_target`` to exercise lock_timeout.
"""

from alembic import op

revision = "0105"
down_revision = "0005"
branch_labels = None
depends_on = None
lock_timeout = "300ms"


def upgrade() -> None:
    op.execute("CREATE TABLE IF NOT EXISTS slow_marker (id integer)")
    op.execute("LOCK TABLE slow_target IN ACCESS EXCLUSIVE MODE")
    op.execute("SELECT pg_sleep(coalesce(current_setting('ophelia.test_sleep', true), '0')::float)")
    op.execute("ALTER TABLE slow_target ADD COLUMN added_by_0005 integer")


def downgrade() -> None:
    op.execute("ALTER TABLE slow_target DROP COLUMN added_by_0005")
    op.execute("DROP TABLE slow_marker")
