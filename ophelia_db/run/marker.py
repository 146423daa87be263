"""The marker of an interrupted non-transactional section: its only writer.

A revision's ``autocommit_block`` (``CREATE INDEX CONCURRENTLY`` ...) cannot be
rolled back: a run killed inside it leaves the schema half-changed. The
marker, a table whose existence is the mark, tells the next run so, and that
run refuses the instance (exit 6) until ``ophelia-db resolve`` records the
operator's decision.
"""

from __future__ import annotations

from typing import Any

from psycopg.pq import TransactionStatus

from ophelia_db.fleet.connections import autocommit, closed_to_api_roles, sql_literal

# Written and committed as the section starts, dropped in the transaction that
# records the revision (``mirror``). Its existence is the marker, so that the
# state read can test for it for free.
INTERRUPTED_TABLE = "public.ophelia_interrupted_steps"
_MARK = f"""DO $ophelia$
BEGIN
  IF to_regclass('{INTERRUPTED_TABLE}') IS NULL THEN
    CREATE TABLE {INTERRUPTED_TABLE} (
      revision text PRIMARY KEY,
      started_at timestamptz NOT NULL DEFAULT now(),
      started_by text NOT NULL
    );
    ALTER TABLE {INTERRUPTED_TABLE} ENABLE ROW LEVEL SECURITY;
{closed_to_api_roles(f"TABLE {INTERRUPTED_TABLE}")}
  END IF;
END $ophelia$"""


def mark_nontransactional(conn: Any, revision: str, by: str) -> None:
    """Record, committed at once, that ``revision`` entered its non-transactional section.

    One message in one round trip, committed as the message's own implicit transaction.
    """
    if not conn.autocommit and conn.info.transaction_status != TransactionStatus.IDLE:
        conn.commit()  # what was open is committed with the marker, as before
    insert = (
        f"INSERT INTO {INTERRUPTED_TABLE} (revision, started_by) "
        f"VALUES ({sql_literal(revision)}, {sql_literal(by[:200])}) ON CONFLICT DO NOTHING"
    )
    with autocommit(conn):
        conn.execute(f"{_MARK};\n{insert}")


def clear_nontransactional(conn: Any) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {INTERRUPTED_TABLE}")
