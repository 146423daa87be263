"""The migration lock behind a real PgBouncer: a transaction-mode pooler on any port is refused
by its behaviour and leaves no lock behind; a session-mode pooler keeps working."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.urls import transaction_pooler_reason
from ophelia_db.run.chain import ChainSpec
from ophelia_db.run.instance import migrate
from ophelia_db.run.state import read_state
from tests.fleet.conftest import Pgbouncer
from tests.helpers import (
    ALEMBIC_INI,
    HEAD,
    OPHELIA_DB,
    FleetDbs,
    MakeDatabase,
    alembic_version,
    assert_consistent,
    clean_env,
    rows,
    run_cli,
    write_fleet,
)


def through(url: str, port: int) -> str:
    """The same database reached through the pooler listening on ``port``."""
    host = url.rpartition("@")[2].partition("/")[0]
    return url.replace(f"@{host}/", f"@127.0.0.1:{port}/")


def with_hub_at_head(directory: Path, hub: str) -> None:
    assert run_cli(["upgrade", "--instance", "hub"], fleet=write_fleet(directory, hub, {})).returncode == 0


def advisory_locks(url: str) -> int:
    return rows(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0]


def test_a_transaction_pooler_on_another_port_is_refused_and_leaves_no_lock(
    pgbouncer: Pgbouncer, fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    hub, instances = fleet_dbs(1)
    direct = instances["inst1"]
    port = pgbouncer("transaction", pool_size=2)
    with_hub_at_head(tmp_path, hub)
    pooled = through(direct, port)
    assert transaction_pooler_reason(pooled) is None  # its port says nothing: its behaviour does
    fleet = write_fleet(tmp_path, hub, {"inst1": pooled})

    done = run_cli(["upgrade", "--instance", "inst1", "--json"], fleet=fleet)

    assert done.returncode == 2, done.stdout + done.stderr
    error = json.loads(done.stdout)["instances"][0]["error"]
    assert "transaction-mode pooler" in error and "session pooler on port 5432" in error, error
    assert alembic_version(direct) == [] and advisory_locks(direct) == 0
    # Nothing left behind: the direct connection migrates at once.
    direct_fleet = write_fleet(tmp_path, hub, {"inst1": direct})
    assert run_cli(["upgrade", "--instance", "inst1"], fleet=direct_fleet).returncode == 0
    assert_consistent(direct, HEAD)


def test_two_runs_through_a_pool_of_one_never_migrate_at_once(
    pgbouncer: Pgbouncer, fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    hub, instances = fleet_dbs(1)
    direct = instances["inst1"]
    port = pgbouncer("transaction", pool_size=1)
    with_hub_at_head(tmp_path, hub)
    fleet = write_fleet(tmp_path, hub, {"inst1": through(direct, port)})
    env = clean_env({"OPHELIA_FLEET": str(fleet)})

    runs = [
        subprocess.Popen(
            [*OPHELIA_DB, "upgrade", "--instance", "inst1", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [run.communicate(timeout=120) for run in runs]

    codes = [run.returncode for run in runs]
    assert codes == [2, 2], outcomes
    for stdout, _ in outcomes:
        assert "transaction-mode pooler" in json.loads(stdout)["instances"][0]["error"]
    assert alembic_version(direct) == [] and advisory_locks(direct) == 0


def test_a_session_pooler_keeps_working(pgbouncer: Pgbouncer, fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub, instances = fleet_dbs(1)
    direct = instances["inst1"]
    port = pgbouncer("session", pool_size=2)
    with_hub_at_head(tmp_path, hub)
    fleet = write_fleet(tmp_path, hub, {"inst1": through(direct, port)})

    done = run_cli(["upgrade", "--instance", "inst1"], fleet=fleet)

    assert done.returncode == 0, done.stdout + done.stderr
    assert_consistent(direct, HEAD)
    assert advisory_locks(direct) == 0
    assert run_cli(["upgrade", "--instance", "inst1"], fleet=fleet).returncode == 0  # a no-op, locked again


@pytest.mark.parametrize("mode", ["session", "transaction", "statement"])
def test_a_pooler_names_a_backend_of_its_own_so_only_a_direct_session_spares_the_witness(
    pgbouncer: Pgbouncer, make_database: MakeDatabase, mode: str
) -> None:
    # fleet/lock.py spares the witness connection when pg_backend_pid() is the pid the start-up
    # named (BackendKeyData): true of PostgreSQL itself, never of a pooler, which routes cancels.
    url = make_database("keys")
    with psycopg.connect(url, autocommit=True) as direct:
        row = direct.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] == direct.info.backend_pid
    with psycopg.connect(through(url, pgbouncer(mode)), autocommit=True) as pooled:
        row = pooled.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] != pooled.info.backend_pid


def test_a_look_that_found_postgresql_does_not_let_a_pooler_take_the_lock_in_the_first_message(
    pgbouncer: Pgbouncer, fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    # The lock goes in the first batch's message when the look found PostgreSQL itself
    # (fleet/lock.py: first_message_lock). Should the migration's own connection reach a
    # transaction pooler all the same, the opening sees a backend other than the one the
    # start-up named: it releases the lock and the usual way refuses the pooler.
    hub, instances = fleet_dbs(1)
    direct = instances["inst1"]
    port = pgbouncer("transaction", pool_size=2)
    with psycopg.connect(direct, autocommit=True) as conn:
        look = read_state(conn)
    assert look.direct
    fleet = load_fleet(write_fleet(tmp_path, hub, {"inst1": through(direct, port)}))

    result = migrate(fleet.get("inst1"), ChainSpec(alembic_ini=ALEMBIC_INI), HEAD, look=look)

    assert result.result == "refused", result
    assert "transaction-mode pooler" in (result.error or ""), result.error
    assert alembic_version(direct) == [] and advisory_locks(direct) == 0
