"""Statements the server runs for one instance, counted by ``pg_stat_statements``.

Round trips (test_round_trips.py) say what the network costs; these counts say
what the server's CPU does, which is what a fleet sharing a few cores waits on.
The statements inside DO blocks are counted too (``track = all``). The module
runs its own cluster: ``pg_stat_statements`` must be preloaded at start-up.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.local.binaries import free_port
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import HEAD, REVISIONS, current_version, make_state_dir, rows, write_fleet


@pytest.fixture(scope="module")
def counting_cluster(pg_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """A cluster of its own that counts every statement (``pg_cluster``: the binaries are there)."""
    state_dir = make_state_dir()
    cluster = LocalCluster(state_dir, free_port())
    try:
        cluster.start()
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        cluster.stop()
        cluster.start()
        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(state_dir, ignore_errors=True)


def _calls(cluster: LocalCluster, database: str, starting: str) -> int:
    """How many times statements of ``database`` starting with ``starting`` were run."""
    found = rows(
        cluster.url("postgres"),
        "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = %s AND s.query LIKE %s",
        [database, starting + "%"],
    )
    return int(found[0][0])


def test_a_batch_from_empty_to_head_writes_each_mirror_row_once(tmp_path, counting_cluster):
    # The revisions go as one message, before the instance has its mirror: each revision's
    # rows are guarded, the first to see the mirror backfills the earlier ones, and those
    # after it record only themselves. Backfilling every earlier revision again in each of
    # them, as before, ran 14 inserts for these 5 revisions (growing with the square of the
    # chain's length).
    with psycopg.connect(counting_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE hub")
        conn.execute("CREATE DATABASE inst1")
        # Statements inside DO blocks too, in every session the run opens there.
        conn.execute("ALTER DATABASE inst1 SET pg_stat_statements.track = 'all'")
    fleet = load_fleet(
        write_fleet(tmp_path, counting_cluster.url("hub"), {"inst1": counting_cluster.url("inst1")})
    )
    rows(counting_cluster.url("postgres"), "SELECT pg_stat_statements_reset()")

    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)

    assert [r.result for r in report.instances] == ["ok"], report.instances
    assert current_version(counting_cluster.url("inst1")) == HEAD
    recorded = rows(
        counting_cluster.url("inst1"),
        "SELECT version FROM public.schema_migrations WHERE execution_time_ms IS NOT NULL ORDER BY id",
    )
    assert [version for (version,) in recorded] == REVISIONS
    assert _calls(counting_cluster, "inst1", "INSERT INTO public.schema_migrations") == len(REVISIONS)
    # 0002 creates the mirror in this message, which the run sees in its statements: no revision's
    # rows need a PL/pgSQL guard (one block per revision, which the server compiles each time).
    assert _calls(counting_cluster, "inst1", "DO $ophelia$\nBEGIN\n  IF ") == 0
    # One check for the message, its opening's (the lock, the backend, the state under the lock):
    # the later transactions run on the backend it did. It was one session check per revision,
    # then one per message besides the lock's own round trip.
    assert _calls(counting_cluster, "inst1", "DO $ophelia$ BEGIN\n  IF NOT pg_try_advisory_lock") == 1
    assert (
        _calls(counting_cluster, "inst1", "DO $ophelia$ BEGIN\n  IF current_setting('ophelia.session_token'")
        == 0
    )


def test_a_run_reports_to_the_hub_in_one_statement_per_table(tmp_path, counting_cluster):
    # A no-op run settles every instance from its first look and writes the hub once at the
    # end: the five registry rows in one statement, the five journal rows in one. One upsert
    # per row, as before, ran 5 of each (each planned and run on its own).
    names = ["hub2", "a1", "a2", "a3", "a4"]
    with psycopg.connect(counting_cluster.url("postgres"), autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE DATABASE {name}")
    urls = {name: counting_cluster.url(name) for name in names[1:]}
    fleet = load_fleet(write_fleet(tmp_path, counting_cluster.url("hub2"), urls))
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True)).exit_code == 0
    rows(counting_cluster.url("postgres"), "SELECT pg_stat_statements_reset()")

    report = ophelia_db.upgrade(fleet, fleet.select(all_=True))

    assert {r.result for r in report.instances} == {"noop"} and report.hub_report == "ok"
    assert _calls(counting_cluster, "hub2", "INSERT INTO public.instance_registry") == 1
    # The planned rows at the start, the finished ones at the end.
    assert _calls(counting_cluster, "hub2", "INSERT INTO public.ophelia_run_instances") <= 2
    registry = rows(
        counting_cluster.url("hub2"),
        "SELECT subdomain, schema_version, last_run_status FROM public.instance_registry ORDER BY 1",
    )
    assert registry == [(name, HEAD, "noop") for name in sorted(["hub", *urls])]
    journal = rows(
        counting_cluster.url("hub2"),
        "SELECT count(*) FROM public.ophelia_run_instances WHERE run_id = %s AND state = 'noop'",
        [report.run_id],
    )
    assert journal == [(5,)]
