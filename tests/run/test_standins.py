"""Revision 0001 on a cluster where the Supabase roles do not exist yet, many databases at once.

Roles are cluster-wide: parallel workers migrating sibling databases race to
create them, and the loser must not fail its run.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.local.binaries import free_port
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import make_state_dir, write_fleet

pytestmark = pytest.mark.pg
ROLES = ("anon", "authenticated", "service_role")


@pytest.fixture
def bare_cluster(pg_cluster: LocalCluster):
    """A cluster of its own, so that the Supabase roles start out missing."""
    cluster = LocalCluster(make_state_dir(), free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_parallel_first_runs_create_the_roles_once_without_failing(bare_cluster, tmp_path: Path) -> None:
    names = [f"tenant_{i}" for i in range(6)]
    for attempt in range(2):
        with psycopg.connect(bare_cluster.url("postgres"), autocommit=True) as conn:
            for name in ["hub_db", *names]:
                conn.execute(f"DROP DATABASE IF EXISTS {name}")
            for role in ROLES:
                conn.execute(f"DROP ROLE IF EXISTS {role}")
        bare_cluster.ensure_databases(["hub_db", *names])
        fleet = load_fleet(
            write_fleet(
                tmp_path,
                bare_cluster.url("hub_db"),
                {name.replace("_", "-"): bare_cluster.url(name) for name in names},
            )
        )
        instances = [t for t in fleet.select(all_=True) if t.role == "instance"]
        report = ophelia_db.upgrade(fleet, instances, jobs=6)
        assert [(r.name, r.result) for r in report.instances] == [(t.name, "ok") for t in instances], (
            attempt,
            [r.error for r in report.instances],
        )
        with psycopg.connect(bare_cluster.url("postgres"), autocommit=True) as conn:
            found = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),))
            assert sorted(r[0] for r in found) == sorted(ROLES)
