"""Fixtures shared by the whole suite: one real PostgreSQL cluster per session.

The session cluster is the embedded ``LocalCluster`` started in a private temp
directory; tests get brand-new empty databases on it through ``make_database``
(created and dropped by pytest-postgresql's ``DatabaseJanitor``). Every test
that uses the cluster is marked ``pg``, so ``pytest -m "not pg"`` runs
without PostgreSQL. Each area's own fixtures are in its folder's conftest.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from ophelia_db.errors import ClusterError
from ophelia_db.local.binaries import find_bin_dir, free_port
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import FleetDbs, MakeDatabase, make_state_dir


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    """A fresh local PostgreSQL cluster for the session, deleted at the end."""
    try:
        find_bin_dir()
    except ClusterError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the database tests: {exc}")
        pytest.skip(str(exc))
    state_dir = make_state_dir()
    cluster = LocalCluster(state_dir, free_port())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def make_database(pg_cluster: LocalCluster) -> Iterator[MakeDatabase]:
    """Factory of brand-new empty databases (URL returned), dropped at teardown."""
    janitors: list[DatabaseJanitor] = []

    def make(prefix: str = "db", template: str | None = None) -> str:
        name = f"{prefix[:40]}_{uuid.uuid4().hex[:12]}".lower()
        janitor = DatabaseJanitor(
            user="postgres",
            host=pg_cluster.host,
            port=pg_cluster.port,
            dbname=name,
            template_dbname=template,
            connection_timeout=10,
        )
        janitor.init()
        janitors.append(janitor)
        return pg_cluster.url(name)

    yield make
    # drop() forbids new connections and terminates the ones a test left open.
    for janitor in reversed(janitors):
        janitor.drop()


@pytest.fixture
def fleet_dbs(make_database: MakeDatabase) -> FleetDbs:
    """Factory of a hub database plus instances inst1..instN: (hub_url, {name: url})."""

    def make(n: int) -> tuple[str, dict[str, str]]:
        hub_url = make_database("hub")
        return hub_url, {f"inst{i}": make_database(f"inst{i}") for i in range(1, n + 1)}

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``pg`` every test that reaches the database cluster, directly or through a fixture."""
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pg)
