"""Plain Alembic on one fleet instance (`alembic -x instance=NAME ...`) and the offline SQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.local.binaries import find_bin_dir
from tests.helpers import (
    ALEMBIC_INI,
    CHAIN,
    HEAD,
    REVISIONS,
    FleetDbs,
    MakeDatabase,
    alembic_version,
    assert_consistent,
    clean_env,
    invoke,
    registry,
    rows,
    run_cli,
    write_fleet,
)

pytestmark = pytest.mark.pg


def alembic(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def psql() -> str:
    candidate = find_bin_dir() / "psql"
    return str(candidate) if candidate.exists() else shutil.which("psql") or "psql"


def test_plain_alembic_upgrade_current_downgrade(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    x = ["-x", "instance=inst1", "-x", f"fleet={path}"]

    up = alembic(*x, "upgrade", "head", cwd=tmp_path)

    assert up.returncode == 0, up.stderr
    assert_consistent(url, HEAD)
    assert rows(url, "SELECT current_version, instance_id FROM public.schema_version") == [(HEAD, "inst1")]
    assert all(
        by.startswith("ophelia-db/") for (by,) in rows(url, "SELECT applied_by FROM public.schema_migrations")
    )
    assert rows(url, "SELECT version, checksum FROM public.schema_migrations ORDER BY id") == [
        (rev.id, rev.checksum) for rev in CHAIN.revisions
    ]
    row = registry(hub_url)["inst1"]
    assert (row["schema_version"], row["last_run_status"]) == (HEAD, "ok")
    assert row["migrations_count"] == len(REVISIONS)
    assert row["community_name"] == "Inst1"

    current = alembic(*x, "current", cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert f"{HEAD} (head)" in current.stdout

    down = alembic(*x, "downgrade", "0003", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert_consistent(url, "0003")
    assert registry(hub_url)["inst1"]["schema_version"] == "0003"
    assert registry(hub_url)["inst1"]["migrations_count"] == 3

    # The fleet file may also come from $OPHELIA_FLEET; ophelia-db agrees with what Alembic did.
    again = alembic("-x", "instance=inst1", "upgrade", "head", cwd=tmp_path, env={"OPHELIA_FLEET": str(path)})
    assert again.returncode == 0, again.stderr
    assert_consistent(url, HEAD)
    status = ophelia_db.status(fleet, fleet.select(["inst1"])).instances[0]
    assert (status.state, status.migrations_count) == ("up-to-date", len(REVISIONS))


@pytest.mark.parametrize(
    ("x", "needle"),
    [(["-x", "instance=nope"], "unknown instance 'nope'"), ([], "-x instance=NAME")],
)
def test_plain_alembic_bad_instance_one_line(tmp_path: Path, x: list[str], needle: str) -> None:
    # Refused before connecting anywhere: nothing listens on port 1.
    closed = "postgresql://postgres@127.0.0.1:1/{}"
    path = write_fleet(tmp_path, closed.format("hub"), {"inst1": closed.format("inst1")})

    proc = alembic(*x, "-x", f"fleet={path}", "upgrade", "head", cwd=tmp_path)

    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    # Alembic's own CommandError handler prints "FAILED: ..." (on stdout in Alembic 1.x).
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    assert lines[0].startswith("FAILED:") and needle in lines[0], lines


def test_offline_sql_applied_with_psql(
    fleet_dbs: FleetDbs, make_database: MakeDatabase, tmp_path: Path
) -> None:
    hub_url, urls = fleet_dbs(1)
    path = write_fleet(tmp_path, hub_url, urls)

    proc = run_cli(["sql", "--instance", "inst1", "--fleet", str(path)], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "register_migration(" in text
    for rev in CHAIN.revisions:
        assert rev.checksum in text, rev.id
    assert alembic_version(urls["inst1"]) == [], "sql only prints; it changes nothing"

    script = tmp_path / "inst1.sql"
    script.write_text(text)
    target = make_database("pasted")
    applied = subprocess.run(
        [psql(), target, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    assert alembic_version(target) == [HEAD]
    assert rows(target, "SELECT version, name, checksum FROM public.schema_migrations ORDER BY id") == [
        (rev.id, rev.name, rev.checksum) for rev in CHAIN.revisions
    ]
    assert rows(target, "SELECT current_version FROM public.schema_version") == [(HEAD,)]

    # ophelia-db sees the hand-applied database as consistent and at head.
    (tmp_path / "pasted").mkdir()
    pasted = write_fleet(tmp_path / "pasted", hub_url, {"pasted": target})
    status = invoke(["status", "--instance", "pasted", "--json", "--fleet", str(pasted)])
    [row] = json.loads(status.stdout)["instances"]
    assert (row["state"], row["current"], row["migrations_count"]) == ("up-to-date", HEAD, len(REVISIONS))


def test_offline_sql_from_a_revision(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    path = write_fleet(tmp_path, hub_url, urls)

    result = invoke(["sql", "--instance", "inst1", "--from", "0002", "--fleet", str(path)])

    assert result.exit_code == 0, result.stderr
    assert "register_migration('0003'" in result.stdout
    assert "CREATE TABLE public.schema_migrations" not in result.stdout
    assert "instance_registry" in result.stdout
