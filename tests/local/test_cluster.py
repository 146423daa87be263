"""The embedded local cluster, against real PostgreSQL servers."""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from ophelia_db.errors import ClusterError, ExitCode
from ophelia_db.local.binaries import find_bin_dir, free_port
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import FleetDbs, MakeDatabase, make_state_dir, run_cli, write_fleet

pytestmark = pytest.mark.pg


def test_session_cluster_accepts_connections(pg_cluster: LocalCluster) -> None:
    with psycopg.connect(pg_cluster.url("postgres")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW max_connections").fetchone() == ("300",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
    status = pg_cluster.status()
    assert status.running and status.initialized and status.pid
    assert status.port == pg_cluster.port


def test_start_when_running_is_a_noop(pg_cluster: LocalCluster) -> None:
    """No pg_ctl run, no restart: the same postmaster, and nothing new in the server log."""
    pid = pg_cluster.status().pid
    log_size = pg_cluster.log_path.stat().st_size
    assert pg_cluster.start() is False
    assert pg_cluster.status().pid == pid
    with pg_cluster.log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(log_size)
        assert "waiting for server to start" not in log.read()


def test_ensure_databases_creates_only_missing(pg_cluster: LocalCluster) -> None:
    names = [f"a_x_{uuid.uuid4().hex[:8]}", f"a_y_{uuid.uuid4().hex[:8]}"]
    try:
        assert pg_cluster.ensure_databases(names) == names
        assert pg_cluster.ensure_databases(names) == []
        with psycopg.connect(pg_cluster.url(names[1])) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (names[1],)
    finally:
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def test_url_format(pg_cluster: LocalCluster) -> None:
    assert pg_cluster.url("hub") == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/hub"


@pytest.mark.usefixtures("pg_cluster")  # skips, or fails on CI, without server binaries
def test_second_cluster_concurrent_start_stop_destroy() -> None:
    state_dir = make_state_dir()
    port = free_port()
    first, second = LocalCluster(state_dir, port), LocalCluster(state_dir, port)
    try:
        with ThreadPoolExecutor(2) as pool:
            started = sorted(pool.map(lambda cluster: cluster.start(), [first, second]))
        assert started == [False, True]
        with psycopg.connect(first.url("postgres")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert first.stop() is True
        status = first.status()
        assert status.initialized and not status.running and status.pid is None
        assert first.stop() is False
        first.destroy()
        assert not first.data_dir.exists()
        assert not first.status().initialized
    finally:
        first.destroy()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.usefixtures("pg_cluster")
@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback data dir is for root only")
def test_state_dir_postgres_cannot_reach_uses_fallback() -> None:
    private = Path(tempfile.mkdtemp(prefix="ophelia-test-", dir="/tmp"))  # 0700, root-owned
    cluster = LocalCluster(private / ".ophelia", free_port())
    try:
        assert cluster.start() is True
        assert not cluster.data_dir.is_relative_to(private)
        assert (private / ".ophelia" / "postgres.log").stat().st_uid == 0
        again = LocalCluster(private / ".ophelia", cluster.port)
        assert again.data_dir == cluster.data_dir
        assert again.start() is False
        cluster.destroy()
        assert not cluster.base_dir.exists()
    finally:
        cluster.destroy()
        shutil.rmtree(private, ignore_errors=True)


def test_find_bin_dir_names_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPHELIA_PG_BIN", str(tmp_path))
    with pytest.raises(ClusterError) as caught:
        find_bin_dir()
    assert "apt install postgresql-15" in str(caught.value)
    assert "OPHELIA_PG_BIN" in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.usefixtures("pg_cluster")
def test_find_bin_dir_honours_override(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_bin_dir()
    monkeypatch.setenv("OPHELIA_PG_BIN", str(real))
    assert find_bin_dir() == real


def test_password_authentication_on_loopback(pg_cluster: LocalCluster) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    password = "p@ss:w/rd#%?&1"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
    base = f"127.0.0.1:{pg_cluster.port}/postgres"
    try:
        url = f"postgresql://{role}:{quote(password, safe='')}@{base}"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        with psycopg.connect(
            host="127.0.0.1", port=pg_cluster.port, dbname="postgres", user=role, password=password
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://{role}:wrong@{base}")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://{role}@{base}")
    finally:
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_make_database_gives_empty_databases_and_drops_them(
    pg_cluster: LocalCluster, make_database: MakeDatabase
) -> None:
    first, second = make_database("mk"), make_database()
    assert first != second
    leftover = psycopg.connect(second)  # teardown must cope with an open connection
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert leftover.execute(tables).fetchone() == (0,)


def test_fleet_dbs_and_write_fleet(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    hub_url, instances = fleet_dbs(2)
    assert list(instances) == ["inst1", "inst2"]
    path = write_fleet(tmp_path, hub_url, instances, defaults="jobs = 2", extra="\n# tail\n")
    data = tomllib.loads(path.read_text())
    assert data["defaults"] == {"jobs": 2}
    assert data["hub"] == {"url": hub_url}
    assert data["instances"]["inst2"] == {
        "community_name": "Inst2",
        "community_type": "municipality",
        "url": instances["inst2"],
    }
    for url in [hub_url, *instances.values()]:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_taken_port_is_one_clear_error(pg_cluster: LocalCluster) -> None:
    """A second cluster on a port already in use says so, instead of quoting the server log."""
    other = LocalCluster(make_state_dir(), pg_cluster.port)
    try:
        with pytest.raises(ClusterError) as refused:
            other.start()
        assert f"port {pg_cluster.port} on 127.0.0.1 is already in use" in str(refused.value)
        assert "\n" not in str(refused.value)
        assert not other.status().running
    finally:
        other.destroy()


def test_local_destroy_asks_like_every_destructive_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "keep").write_text("data")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[local]\nport = 1\nstate_dir = "{state}"\n\n[hub]\nurl = "postgresql://postgres@127.0.0.1:1/hub"\n'
    )
    declined = run_cli(["local", "destroy"], fleet=fleet, stdin="n\n")
    silent = run_cli(["local", "destroy"], fleet=fleet)
    for done in (declined, silent):
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.endswith("error: not confirmed (pass --yes); nothing was deleted\n"), done.stderr
    assert (state / "keep").read_text() == "data"


def test_destroying_nothing_says_so(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[local]\nport = 1\nstate_dir = "{tmp_path / "none"}"\n\n[hub]\nurl = "postgresql://postgres@127.0.0.1:1/h"\n'
    )
    done = run_cli(["local", "destroy", "--yes"], fleet=fleet)
    assert done.returncode == 0 and "nothing to destroy" in done.stdout and "destroyed" not in done.stdout
