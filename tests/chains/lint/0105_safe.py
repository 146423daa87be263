"""A revision lint must pass: a new table, its index, and a concurrent index in an autocommit block.

Used by tests/test_lint.py and, for the `sql` sections, by the same file.
"""

from alembic import op

revision = "0105"
down_revision = "0005"
branch_labels = None
depends_on = None
lock_timeout = "2s"


def upgrade() -> None:
    op.execute("CREATE TABLE public.lint_notes (id bigint PRIMARY KEY, body text)")
    # Brand-new table: a plain index and a NOT NULL column are fine here.
    op.execute("CREATE INDEX lint_notes_body ON public.lint_notes (body)")
    op.execute("ALTER TABLE public.lint_notes ADD COLUMN author text NOT NULL")
    op.execute("ALTER TABLE public.instance_config ADD COLUMN lint_flag boolean NOT NULL DEFAULT false")
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY instance_config_lint_flag ON public.instance_config (lint_flag)")


def downgrade() -> None:
    op.execute("DROP INDEX public.instance_config_lint_flag")
    op.execute("ALTER TABLE public.instance_config DROP COLUMN lint_flag")
    op.execute("DROP TABLE public.lint_notes")
