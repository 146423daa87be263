"""The lock in the first batch's message (fleet/lock.py: ``first_message_lock``).

An instance whose first look's connection is kept, and shown direct, gets its
token, its lock and a check that the state is still the look's in the message
of its first batch. The plan made from the look runs only if that check
holds under the lock; otherwise nothing runs, nothing stays locked, and the
usual way (the lock, then the state read under it) decides. Here the look is
made stale on purpose, between the look and the migration.
"""

from __future__ import annotations

import threading
import time

import psycopg

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.connections import connect
from ophelia_db.fleet.lock import MIGRATION_LOCK_KEY
from ophelia_db.run.chain import ChainSpec
from ophelia_db.run.instance import migrate
from ophelia_db.run.state import read_state
from tests.helpers import (
    ALEMBIC_INI,
    HEAD,
    REVISIONS,
    assert_consistent,
    current_version,
    failing_chain,
    write_fleet,
)

SPEC = ChainSpec(alembic_ini=ALEMBIC_INI)


def _fleet(tmp_path, fleet_dbs, defaults: str = ""):
    hub, instances = fleet_dbs(1)
    return load_fleet(write_fleet(tmp_path, hub, instances, defaults=defaults)), instances["inst1"]


def _looked_at(target):
    """A first look, as a run takes it: its connection (kept for the migration) and what it read."""
    kept = connect(target, autocommit=True)
    return kept, read_state(kept)


def _advisory_locks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    return row[0] if row else -1


def _statements_run(url: str, pattern: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM public.schema_migrations WHERE version LIKE %s", (pattern,)
        ).fetchone()
    return row[0] if row else -1


def test_a_look_made_stale_by_another_run_is_not_acted_on(tmp_path, fleet_dbs):
    fleet, url = _fleet(tmp_path, fleet_dbs)
    target = fleet.get("inst1")
    kept, look = _looked_at(target)  # an empty database: the plan from it would be 0001..head
    assert look.direct and look.revision is None
    # Another run moves the instance after the look.
    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to=REVISIONS[2], jobs=1)
    assert [r.result for r in report.instances] == ["ok"]

    result = migrate(target, SPEC, HEAD, kept=kept, look=look)

    # Planned from the look, 0001 would have failed ("already exists"): the state read under
    # the lock planned the rest instead.
    assert result.result == "ok", result.error
    assert result.from_revision == REVISIONS[2]
    assert result.applied == tuple(REVISIONS[3:])
    assert current_version(url) == HEAD
    assert_consistent(url, HEAD)
    assert _statements_run(url, REVISIONS[0]) == 1  # recorded once: never run again
    assert _advisory_locks(url) == 0


def test_a_changed_history_under_the_same_revision_is_noticed(tmp_path, fleet_dbs):
    fleet, url = _fleet(tmp_path, fleet_dbs)
    target = fleet.get("inst1")
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to=REVISIONS[-2], jobs=1)
    kept, look = _looked_at(target)
    # Same revision, but a recorded checksum changed since the look: a checksum mismatch,
    # which the plan from the look (one revision to run) knows nothing of.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE public.schema_migrations SET checksum = 'edited' WHERE version = %s", (REVISIONS[0],)
        )

    result = migrate(target, SPEC, HEAD, kept=kept, look=look)

    # Read under the lock, the edited checksum refuses the instance: nothing runs.
    assert (result.result, result.exit_code) == ("refused", 4), result
    assert "recorded edited" in (result.error or ""), result.error
    assert current_version(url) == REVISIONS[-2]
    assert _advisory_locks(url) == 0


def test_a_lock_taken_after_the_look_is_waited_for_the_usual_way(tmp_path, fleet_dbs):
    fleet, url = _fleet(tmp_path, fleet_dbs, defaults='lock_wait = "200ms"')
    target = fleet.get("inst1")
    kept, look = _looked_at(target)
    assert not look.locked
    with psycopg.connect(url, autocommit=True, application_name="other-runner") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        result = migrate(target, SPEC, HEAD, kept=kept, look=look)
        assert result.result == "locked", result
        # Named by the usual way's wait, which the busy opening handed over to.
        assert "other-runner" in (result.error or "")
        assert _advisory_locks(url) == 1  # the holder's alone
    assert current_version(url) is None


def test_an_opening_cancelled_midway_is_undone_and_the_usual_way_takes_over(tmp_path, fleet_dbs):
    fleet, url = _fleet(tmp_path, fleet_dbs)
    target = fleet.get("inst1")
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to=REVISIONS[-2], jobs=1)
    kept, look = _looked_at(target)
    pid = kept.info.backend_pid
    results = []
    with psycopg.connect(url) as blocker:
        # The opening's check reads alembic_version after taking the lock: it waits here.
        blocker.execute("LOCK TABLE public.alembic_version IN ACCESS EXCLUSIVE MODE")
        running = threading.Thread(
            target=lambda: results.append(migrate(target, SPEC, HEAD, kept=kept, look=look))
        )
        running.start()
        deadline = time.monotonic() + 30
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
        while blocker.execute(waiting, (pid,)).fetchone() != (1,):
            assert time.monotonic() < deadline, "the opening never waited for the table"
            time.sleep(0.02)
        blocker.execute("SELECT pg_cancel_backend(%s)", (pid,))
        blocker.rollback()
    running.join(timeout=60)
    [result] = results
    # Cancelled inside its opening, the lock taken and the token undone: the lock is released,
    # and the usual way (token, lock, the state read under it) migrates. Taken for a pooler's
    # doing, or run on without the lock, it would have been refused, or applied unlocked.
    assert result.result == "ok", result
    assert result.applied == (HEAD,)
    assert_consistent(url, HEAD)
    assert _advisory_locks(url) == 0


def test_a_first_message_that_does_not_parse_runs_nothing_and_the_usual_way_takes_over(tmp_path, fleet_dbs):
    # A syntax error anywhere in a message runs none of it, the opening included: the revision
    # is then named by Alembic online, under the lock the usual way took.
    hub, instances = fleet_dbs(1)
    url = instances["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub, instances))
    chain = failing_chain()
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)  # at 0005: 0105, then 0106 broken
    target = fleet.get("inst1")
    kept, look = _looked_at(target)
    with psycopg.connect(url, autocommit=True) as watcher:
        result = migrate(target, chain.spec, chain.head, kept=kept, look=look)
        assert result.result == "failed", result
        assert "(in: THIS IS NOT VALID SQL)" in (result.error or ""), result.error
        assert watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
    assert_consistent(url, "0105", chain)
