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
