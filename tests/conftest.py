"""Fixtures shared by the whole suite: one real PostgreSQL cluster per session.

The session cluster is the embedded ``LocalCluster`` started in a private temp
directory; tests get brand-new empty databases on it through ``make_database``
(created and dropped by pytest-postgresql's ``DatabaseJanitor``) and write
fleet.toml files with ``write_fleet``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from ophelia_db.errors import ClusterError
from ophelia_db.local.binaries import find_bin_dir, free_port
from ophelia_db.local.cluster import LocalCluster

MakeDatabase = Callable[..., str]
FleetDbs = Callable[[int], tuple[str, dict[str, str]]]


def make_state_dir() -> Path:
    """Return a new /tmp directory the server user can use (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ophelia-test-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def write_fleet(
    directory: Path,
    hub_url: str,
    instances: dict[str, str],
    *,
    extra: str = "",
    defaults: str = "",
) -> Path:
    """Write ``directory/fleet.toml`` in the docs/design.md §2 format and return its path."""

    def key(name: str) -> str:
        return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)

    # JSON string literals are valid TOML basic strings.
    parts = [f"[defaults]\n{defaults}\n", f"[hub]\nurl = {json.dumps(hub_url)}\n"]
    for name, url in instances.items():
        parts.append(
            f"[instances.{key(name)}]\n"
            f"community_name = {json.dumps(name.title(), ensure_ascii=False)}\n"
            'community_type = "municipality"\n'
            f"url = {json.dumps(url)}\n"
        )
    path = Path(directory) / "fleet.toml"
    path.write_text("\n".join(parts) + extra, encoding="utf-8")
    return path


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
