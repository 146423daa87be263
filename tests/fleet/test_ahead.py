"""Connections opened while the command loads (fleet/ahead.py), seen from a real server's side.

Each database is reached through a counting proxy (``bench/latency_proxy.py``) or a real
listener that never answers: what a command opens is counted where it arrives.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench.latency_proxy import LatencyProxy
from tests.helpers import HEAD, clean_env, run_cli, silent_server, write_fleet

pytestmark = pytest.mark.pg


@contextmanager
def _counted(url: str) -> Iterator[tuple[LatencyProxy, str]]:
    direct = urlsplit(url)
    with LatencyProxy(direct.hostname or "127.0.0.1", direct.port or 5432) as proxy:
        yield proxy, urlunsplit(direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}"))


def _until(done: Callable[[], bool], what: str, within: float = 30) -> None:
    """Wait for ``done`` (a synchronisation, not a measure: the bound only ends a hung test)."""
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        threading.Event().wait(0.01)


def test_status_connects_before_typer_and_pydantic_load_and_takes_those_connections(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(2)
    with _counted(hub) as (hub_proxy, hub_url), _counted(instances["inst1"]) as (proxy, inst1_url):
        path = write_fleet(tmp_path, hub_url, {"inst1": inst1_url, "inst2": instances["inst2"]})
        assert run_cli(["upgrade", "--all"], fleet=path).returncode == 0
        hub_proxy.reset()
        proxy.reset()
        # The command's entry point, held after `start` until the test has seen the connections arrive.
        script = (
            "import sys\n"
            "from ophelia_db.fleet import ahead\n"
            f"ahead.start({str(path)!r}, None, 2)\n"
            "sys.stdin.readline()\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('typer', 'pydantic', 'rich')]\n"
            "print(sorted(loaded), flush=True)\n"
            "sys.argv = ['ophelia-db', '--fleet', sys.argv[1], 'status']\n"
            "from ophelia_db.cli.app import main\n"
            "main()\n"
        )
        command = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            env=clean_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _until(lambda: (proxy.connections, hub_proxy.connections) == (1, 2), "the connections ahead")
            out, err = command.communicate("go\n", timeout=60)
        finally:
            command.kill()
    loaded, *lines = out.splitlines()
    assert loaded == "[]", loaded  # nothing but the standard library and psycopg had loaded
    assert command.returncode == 0, err
    assert f"inst1 instance up-to-date current={HEAD}" in lines
    # status took the connections opened ahead (the hub's probe and its registry read), not one more.
    assert (proxy.connections, hub_proxy.connections) == (1, 2)


def test_the_command_line_opens_each_database_once(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(1)
    with _counted(hub) as (hub_proxy, hub_url), _counted(instances["inst1"]) as (proxy, inst1_url):
        path = write_fleet(tmp_path, hub_url, {"inst1": inst1_url})
        upgrade = run_cli(["--fleet", str(path), "upgrade", "--all"])
        assert upgrade.returncode == 0, upgrade.stderr
        # The hub's look and its reports' connection, the instance's look kept for its migration.
        assert (hub_proxy.connections, proxy.connections) == (2, 1)
        hub_proxy.reset()
        proxy.reset()
        status = run_cli(["status", "--fleet", str(path), "-i", "inst1"])
        assert status.returncode == 0, status.stderr
        assert (hub_proxy.connections, proxy.connections) == (1, 1)  # the registry's, the probe's


def test_a_database_that_does_not_answer_is_waited_for_once(tmp_path, fleet_dbs):
    # Its connection ahead times out; the probe takes that failure instead of waiting again.
    hub, _ = fleet_dbs(0)
    with silent_server() as (port, accepted):
        path = write_fleet(
            tmp_path,
            hub,
            {"hung": f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"},
            defaults="connect_timeout = 1",
        )
        result = run_cli(["status", "--instance", "hung"], fleet=path)
    assert "hung" in result.stdout and "unreachable" in result.stdout, result.stdout + result.stderr
    assert "timeout" in result.stdout + result.stderr
    assert len(accepted) == 1


def test_the_command_line_connects_before_it_validates_and_closes_what_nobody_took(tmp_path, fleet_dbs):
    # `jobs = 0` is refused by the fleet file's validation, after the imports: the connections
    # opened ahead by then are closed at exit, unused.
    hub, instances = fleet_dbs(1)
    with _counted(instances["inst1"]) as (proxy, inst1_url):
        path = write_fleet(tmp_path, hub, {"inst1": inst1_url}, defaults="jobs = 0")
        result = run_cli(["--fleet", str(path), "status"])
        assert result.returncode == 2 and "jobs" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        _until(lambda: proxy.counts.open_now == 0, "the connection's end")
        assert proxy.connections == 1


def test_what_opens_ahead_is_what_the_fleet_file_resolves_and_allows():
    from ophelia_db.fleet.ahead import databases

    endpoints = [
        {"url": "postgresql://app@a:5432/one"},
        {"url": "postgresql://app@a:5432/two", "connect_timeout": "2500ms"},
        {"url": "postgresql://app@a:5432/three"},  # past per_host = 2 on server a
        {"url_env": "B_URL"},  # a password from the environment, as it must come
        {"url_env": "UNSET_URL"},  # left to the loading, which names the variable
        {"url": "postgresql://app:secret@c/db"},  # refused by the loading: a password in the file
        {"url": "postgresql://app@d:6543/postgres"},  # a transaction pooler: refused
        {"url": "postgresql://app@e/db", "connect_timeout": "soon"},  # not a duration
    ]
    found = list(databases(endpoints, 10, 2, {"B_URL": "postgresql://app:pw@b/db"}))
    assert found == [
        ("postgresql://app@a:5432/one", 10),
        ("postgresql://app@a:5432/two", 2),
        ("postgresql://app:pw@b/db", 10),
    ]


def test_a_connection_whose_turn_has_not_come_is_opened_at_once(tmp_path, fleet_dbs):
    # One thread ahead, stuck on a database that does not answer: the next one's connect() does
    # not queue behind it (nor behind the second silent one), it connects itself.
    from ophelia_db.fleet.config import load_fleet
    from ophelia_db.fleet.connections import connect, connect_ahead

    hub, instances = fleet_dbs(1)
    with silent_server() as (port, accepted):
        silent = f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
        connect_ahead([(silent, 5), (silent + "&application_name=x", 5), (instances["inst1"], 10)], threads=1)
        _until(lambda: len(accepted) == 1, "the first silent connection")
        fleet = load_fleet(write_fleet(tmp_path, hub, instances))
        with connect(fleet.get("inst1"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # The one thread is still waiting on the first silent database.
        assert len(accepted) == 1
