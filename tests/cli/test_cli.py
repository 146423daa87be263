"""The command line: fleet runs with a broken member, status states and exit codes, `ahead`."""

from __future__ import annotations

import json
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import typer

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.lock import MIGRATION_LOCK_KEY
from tests.helpers import (
    HEAD,
    REVISIONS,
    FleetDbs,
    MakeDatabase,
    alembic_version,
    assert_consistent,
    execute,
    exists,
    invoke,
    registry,
    run_cli,
    snapshot,
    write_fleet,
)

pytestmark = pytest.mark.pg

STATUS_KEYS = {"name", "role", "state", "current", "pending", "migrations_count", "updated_at", "error"}
CLOSED_HUB = "postgresql://postgres@127.0.0.1:1/hub"
RUN_KEYS = {"name", "role", "result", "from", "to", "applied", "duration_ms", "exit_code", "error"}


def _missing_database(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/no_such_database_ophelia"


@pytest.mark.parametrize("breakage", ["missing-database", "unknown-revision"])
def test_upgrade_all_with_one_broken_instance(fleet_dbs: FleetDbs, tmp_path: Path, breakage: str) -> None:
    hub_url, urls = fleet_dbs(5)
    fleet_urls = dict(urls)
    if breakage == "missing-database":
        fleet_urls["inst3"] = _missing_database(urls["inst3"])
        expected = ("unreachable", 8)
    else:
        execute(
            urls["inst3"],
            "CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY);"
            "INSERT INTO public.alembic_version VALUES ('0042')",
        )
        expected = ("refused", 4)
    path = write_fleet(tmp_path, hub_url, fleet_urls)

    proc = run_cli(["upgrade", "--all", "--json", "--fleet", str(path)], cwd=tmp_path)

    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    record = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    assert record["hub_report"] == "ok"
    assert record["target"] == "head"
    by_name = {row["name"]: row for row in record["instances"]}
    assert list(by_name) == ["hub", "inst1", "inst2", "inst3", "inst4", "inst5"]
    for name, row in by_name.items():
        assert set(row) >= RUN_KEYS, row
        if name == "inst3":
            assert (row["result"], row["exit_code"]) == expected, row
            assert "inst3" in row["error"]
            assert row["applied"] == []
        else:
            assert (row["result"], row["exit_code"], row["error"]) == ("ok", 0, None), row
            assert (row["from"], row["to"], row["applied"]) == (None, HEAD, REVISIONS)
            assert row["role"] == ("hub" if name == "hub" else "instance")
    for name in ("inst1", "inst2", "inst4", "inst5"):
        assert_consistent(urls[name], HEAD)
    if breakage == "unknown-revision":
        assert alembic_version(urls["inst3"]) == ["0042"]
        assert not exists(urls["inst3"], "public.schema_migrations")
    else:
        assert alembic_version(urls["inst3"]) == []

    hub_rows = registry(hub_url)
    assert set(hub_rows) == {"hub", "inst1", "inst2", "inst3", "inst4", "inst5"}
    assert hub_rows["inst3"]["last_run_status"] == expected[0]
    assert hub_rows["inst4"]["last_run_status"] == "ok"


def test_status_states_json_shape_and_check(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(3)
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)
    ophelia_db.upgrade(fleet, fleet.select(["inst2"]), to="0002", jobs=1)
    # inst3 stays an empty database.

    proc = run_cli(["status", "--json", "--fleet", str(path)], cwd=tmp_path)

    record = json.loads(proc.stdout)
    assert set(record) == {"head", "instances"}
    assert record["head"] == HEAD
    by_name = {row["name"]: row for row in record["instances"]}
    assert list(by_name) == ["hub", "inst1", "inst2", "inst3"]
    for row in record["instances"]:
        assert set(row) == STATUS_KEYS, row
    assert by_name["hub"]["role"] == "hub"
    assert {by_name[n]["role"] for n in ("inst1", "inst2", "inst3")} == {"instance"}

    inst1 = by_name["inst1"]
    assert (inst1["state"], inst1["current"], inst1["pending"]) == ("up-to-date", HEAD, [])
    assert (inst1["migrations_count"], inst1["error"]) == (len(REVISIONS), None)
    assert datetime.fromisoformat(inst1["updated_at"]).tzinfo is not None

    inst2 = by_name["inst2"]
    assert (inst2["state"], inst2["current"], inst2["pending"]) == ("outdated", "0002", REVISIONS[2:])
    assert inst2["migrations_count"] == 2

    inst3 = by_name["inst3"]
    assert (inst3["state"], inst3["current"], inst3["pending"]) == ("unversioned", None, REVISIONS)
    assert (inst3["migrations_count"], inst3["updated_at"]) == (None, None)

    checked = invoke(["status", "--check", "--json", "--fleet", str(path)])
    assert checked.exit_code == 1, checked.stdout
    assert json.loads(checked.stdout) == record
    only_head = invoke(
        ["status", "--check", "--instance", "inst1", "--instance", "hub", "--fleet", str(path)]
    )
    assert only_head.exit_code == 0, only_head.stdout
    assert "inst1" in only_head.stdout and "up-to-date" in only_head.stdout

    plain = invoke(["status", "--fleet", str(path)])
    assert "outdated" in plain.stdout and "unversioned" in plain.stdout
    assert plain.stderr == ""

    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0
    done = invoke(["status", "--check", "--json", "--fleet", str(path)])
    assert done.exit_code == 0, done.stdout
    assert {row["state"] for row in json.loads(done.stdout)["instances"]} == {"up-to-date"}


def test_status_shows_locked_only_where_the_lock_is_held(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(2)
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["inst1", "inst2"]), to="0002", jobs=1)

    # The same key held in inst1 only: advisory locks are per database, and inst2 is on the same server.
    with psycopg.connect(urls["inst1"], autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        proc = run_cli(["status", "--json", "--fleet", str(path)], cwd=tmp_path)

    states = {row["name"]: row["state"] for row in json.loads(proc.stdout)["instances"]}
    assert states == {"hub": "unversioned", "inst1": "locked", "inst2": "outdated"}


def test_status_loads_none_of_the_code_that_changes_databases(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    """`status` is run before every deployment: it pays for what it reads, not for `upgrade` or for
    a terminal's tables (issue 11)."""
    import subprocess
    import sys

    hub_url, urls = fleet_dbs(2)
    path = write_fleet(tmp_path, hub_url, urls)
    heavy = ("alembic", "sqlalchemy", "ophelia_db.run.upgrade", "ophelia_db.run.downgrade",
             "ophelia_db.run.batch", "ophelia_db.run.fanout", "ophelia_db.instances",
             "ophelia_db.trust", "rich")  # fmt: skip
    probe = (
        "import sys; from ophelia_db.cli import main\n"
        f"sys.argv = ['ophelia-db', 'status', '--json', '--fleet', {str(path)!r}]\n"
        f"try:\n    main()\nfinally:\n    print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    *document, loaded = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert {row["state"] for row in json.loads("\n".join(document))["instances"]} == {"unversioned"}
    assert loaded == "[]"


@pytest.mark.parametrize("where", ["missing-database", "closed-port"])
def test_status_single_unreachable_instance_exits_8(
    make_database: MakeDatabase, tmp_path: Path, where: str
) -> None:
    hub_url = make_database("hub")
    if where == "missing-database":
        ghost = _missing_database(hub_url)
    else:
        ghost = "postgresql://postgres@127.0.0.1:1/ghost?connect_timeout=2"
    path = write_fleet(tmp_path, hub_url, {"ghost": ghost})

    result = invoke(["status", "--instance", "ghost", "--json", "--fleet", str(path)])

    assert result.exit_code == 8, (result.stdout, result.stderr)
    [row] = json.loads(result.stdout)["instances"]
    assert (row["name"], row["state"], row["current"]) == ("ghost", "unreachable", None)
    assert "ghost" in row["error"]
    assert result.stdout.lstrip().startswith("{")

    plain = invoke(["status", "--instance", "ghost", "--fleet", str(path)])
    assert plain.exit_code == 8
    assert "unreachable" in plain.stdout


def test_ahead_is_reported_and_refused(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)
    execute(url, "UPDATE public.alembic_version SET version_num = '9999'")
    before = snapshot(url)

    status = invoke(["status", "--json", "--instance", "inst1", "--fleet", str(path)])
    [row] = json.loads(status.stdout)["instances"]
    assert (row["state"], row["current"]) == ("ahead", "9999"), row
    assert "9999" in row["error"]
    assert status.exit_code == 4

    upgrade = invoke(["upgrade", "--instance", "inst1", "--json", "--fleet", str(path)])
    assert upgrade.exit_code == 4, (upgrade.stdout, upgrade.stderr)
    [result] = json.loads(upgrade.stdout)["instances"]
    assert (result["result"], result["exit_code"], result["applied"]) == ("refused", 4, [])
    assert "9999" in result["error"] and "nothing was changed" in result["error"]
    assert snapshot(url) == before

    plain = invoke(["upgrade", "--instance", "inst1", "--fleet", str(path)])
    assert plain.exit_code == 4
    assert snapshot(url) == before
    assert registry(hub_url)["inst1"]["last_run_status"] == "refused"


def test_dry_run_plans_and_changes_nothing(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(2)
    path = write_fleet(tmp_path, hub_url, urls)

    result = invoke(["upgrade", "--all", "--dry-run", "--json", "--fleet", str(path)])

    assert result.exit_code == 0, (result.stdout, result.stderr)
    record = json.loads(result.stdout)
    assert {(r["name"], r["result"]) for r in record["instances"]} == {
        ("hub", "planned"),
        ("inst1", "planned"),
        ("inst2", "planned"),
    }
    assert all(r["applied"] == REVISIONS for r in record["instances"])
    for url in (hub_url, *urls.values()):
        assert not exists(url, "public.alembic_version")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["upgrade"], "--instance"),
        (["upgrade", "--instance", "inst9"], "unknown instance 'inst9'"),
        (["status", "--instance", "inst9", "--json"], "unknown instance 'inst9'"),
        (["upgrade", "--instance", "inst1", "--to", "0077"], "unknown revision '0077'"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    # Refused before any connection: nothing listens on port 1.
    path = write_fleet(tmp_path, CLOSED_HUB, {"inst1": "postgresql://postgres@127.0.0.1:1/inst1"})

    result = invoke([*args, "--fleet", str(path)])

    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert needle in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_a_command_is_run_by_an_app_holding_it_alone_and_a_typo_by_the_whole_app() -> None:
    """typer builds every command of an app before parsing (≈ 20 ms of a `status`); the script
    builds only the one named (every test runs commands the same way, through ``invoke``)."""
    from ophelia_db.cli.app import app, app_for

    def names(one: typer.Typer) -> list[str]:
        return [c.name or c.callback.__name__ for c in one.registered_commands if c.callback]

    assert names(app_for(["--debug", "--fleet", "f.toml", "status", "--json"])) == ["status"]
    assert [g.name for g in app_for(["--fleet=f.toml", "local", "start"]).registered_groups] == ["local"]
    assert app_for(["stauts"]) is app and app_for(["--help"]) is app and app_for([]) is app
    typo = invoke(["stauts"])
    assert typo.exit_code == 2 and "status" in typo.stderr, typo.stderr


def test_upgrade_exits_without_waiting_for_a_look_at_an_instance_it_left_out(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    """An archived instance whose server accepts connections and never answers: the run looks
    at it (before the registry says it is archived), leaves it out, and the command exits
    without waiting for that look's connect_timeout (120 s; a pool's threads are joined at exit)."""
    import socket
    import subprocess
    import sys
    import threading

    hub_url, urls = fleet_dbs(2)
    path = write_fleet(tmp_path, hub_url, urls)
    assert invoke(["upgrade", "--all", "--fleet", str(path)]).exit_code == 0
    assert invoke(["archive", "inst2", "--fleet", str(path)]).exit_code == 0
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def hold() -> None:
        with suppress(OSError):
            while True:
                accepted.append(silent.accept()[0])  # held open, never answered

    threading.Thread(target=hold, daemon=True).start()
    port = silent.getsockname()[1]
    urls = {**urls, "inst2": f"postgresql://postgres@127.0.0.1:{port}/inst2?sslmode=disable"}
    path = write_fleet(tmp_path, hub_url, urls, defaults='connect_timeout = "120s"')
    command = [sys.executable, "-m", "ophelia_db", "upgrade", "--all", "--fleet", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=60)  # a breaker: the look alone would take 120 s
    finally:
        process.kill()
        silent.close()
        for conn in accepted:
            conn.close()
    assert process.returncode == 0, err
    assert accepted, "the archived instance was not looked at: nothing tested"
    assert "2 instance(s): 2 noop" in out  # the hub and inst1; inst2 left out
