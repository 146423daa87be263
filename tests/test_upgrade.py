"""Upgrading through the library: a fresh instance to head, the round trip, a failing revision.

Also home of the small helpers the other test modules share (SQL peeks, the
test chains, running the CLI in a subprocess or in-process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from ophelia_db import run as runner
from ophelia_db.cli.app import app
from ophelia_db.fleet.config import load_fleet
from ophelia_db.run.chain import Chain, ChainSpec, file_checksum
from tests.conftest import FleetDbs, write_fleet

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
ALEMBIC_INI = ROOT / "alembic.ini"
FAILING_LOCATIONS = os.pathsep.join([str(ROOT / "alembic" / "versions"), str(ROOT / "tests/chains/failing")])
CHAIN = Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI))
HEAD = CHAIN.head
REVISIONS = [rev.id for rev in CHAIN.revisions]
CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")


def failing_chain() -> Chain:
    """The project chain plus tests/chains/failing: 0005 works, 0006 fails half-way."""
    return Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI, version_locations=FAILING_LOCATIONS))


# --- peeking at databases -----------------------------------------------------------------


def rows(url: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def execute(url: str, statement: str, params: Sequence[Any] | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def scalar(url: str, query: str, params: Sequence[Any] | None = None) -> Any:
    return rows(url, query, params)[0][0]


def exists(url: str, relation: str) -> bool:
    return bool(scalar(url, "SELECT to_regclass(%s) IS NOT NULL", [relation]))


def alembic_version(url: str) -> list[str]:
    if not exists(url, "public.alembic_version"):
        return []
    return [r[0] for r in rows(url, "SELECT version_num FROM public.alembic_version")]


def migrations(url: str) -> list[str]:
    if not exists(url, "public.schema_migrations"):
        return []
    return [r[0] for r in rows(url, "SELECT version FROM public.schema_migrations ORDER BY id")]


def current_version(url: str) -> str | None:
    if not exists(url, "public.schema_version"):
        return None
    found = rows(url, "SELECT current_version FROM public.schema_version WHERE id = 1")
    return found[0][0] if found else None


def snapshot(url: str) -> dict[str, Any]:
    """Everything versioning-related in a database, to compare before/after a refusal."""
    dump: dict[str, Any] = {"alembic_version": alembic_version(url)}
    if exists(url, "public.schema_migrations"):
        dump["schema_migrations"] = rows(url, "SELECT * FROM public.schema_migrations ORDER BY id")
        dump["schema_version"] = rows(url, "SELECT * FROM public.schema_version")
    return dump


def registry(hub_url: str) -> dict[str, dict[str, Any]]:
    """The hub's instance_registry rows by subdomain, as dicts."""
    with psycopg.connect(hub_url, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM public.instance_registry ORDER BY subdomain")
        names = [column.name for column in cur.description or ()]
        return {row[names.index("subdomain")]: dict(zip(names, row, strict=True)) for row in cur}


def assert_consistent(url: str, revision: str, chain: Chain = CHAIN) -> None:
    """alembic_version, schema_version and schema_migrations all say ``revision``."""
    assert alembic_version(url) == [revision]
    assert current_version(url) == revision
    assert migrations(url) == chain.applied_through(revision)


# --- running the command line -------------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPHELIA_")}
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ophelia-db`` script as a user would."""
    return subprocess.run(
        [str(BIN / "ophelia-db"), *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def invoke(args: Sequence[str], env: Mapping[str, str] | None = None) -> Any:
    """Run the typer app in-process (stdout and stderr captured separately)."""
    result = CliRunner(env=dict(env or {})).invoke(app, list(args), catch_exceptions=False)
    return result


# --- the tests ----------------------------------------------------------------------------


def test_chain_under_test_is_0001_to_0004() -> None:
    assert REVISIONS == ["0001", "0002", "0003", "0004"], (
        "tests/chains/failing builds on 0004 and these tests expect 4 revisions; update them with the chain"
    )
    assert failing_chain().head == "0006"


def test_fresh_instance_to_head_writes_the_mirror(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))

    report = runner.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)

    assert report.exit_code == 0, report.as_record()
    assert report.hub_report == "ok"
    result = {r.name: r for r in report.instances}["inst1"]
    assert (result.result, result.from_revision, result.to_revision) == ("ok", None, HEAD)
    assert list(result.applied) == REVISIONS
    assert alembic_version(url) == [HEAD]

    history = rows(
        url,
        "SELECT version, name, checksum, execution_time_ms, applied_by, applied_at "
        "FROM public.schema_migrations ORDER BY id",
    )
    assert [h[0] for h in history] == REVISIONS
    for version, name, checksum, ms, by, applied_at in history:
        revision = CHAIN.get(version)
        assert name == revision.name and name, version
        assert CHECKSUM.match(checksum), checksum
        assert checksum == file_checksum(revision.path)
        assert ms is not None and ms >= 0, f"{version}: execution_time_ms {ms!r}"
        assert by.startswith("ophelia-db/"), by
        assert applied_at is not None

    assert rows(url, "SELECT current_version, instance_id FROM public.schema_version") == [(HEAD, "inst1")]
    version, updated_at, instance_id, count = rows(url, "SELECT * FROM public.get_schema_version()")[0]
    assert (version, instance_id, count) == (HEAD, "inst1", len(REVISIONS))
    assert updated_at is not None
    assert rows(url, "SELECT * FROM public.get_pending_migrations(ARRAY['0001','0099'])") == [("0099",)]

    # A second run changes nothing.
    before = snapshot(url)
    again = runner.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert [(r.result, r.exit_code) for r in again.instances] == [("noop", 0)]
    assert snapshot(url) == before


def test_two_step_upgrade_times_only_this_runs_revisions(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    runner.upgrade(fleet, fleet.select(["hub"]), jobs=1)

    first = runner.upgrade(fleet, fleet.select(["inst1"]), to="0002", jobs=1)
    assert first.exit_code == 0, first.as_record()
    assert_consistent(url, "0002")
    early = rows(url, "SELECT version, applied_at, execution_time_ms FROM public.schema_migrations")

    second = runner.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert second.exit_code == 0, second.as_record()
    assert list(second.instances[0].applied) == ["0003", "0004"]
    assert_consistent(url, HEAD)
    late = rows(
        url, "SELECT version, applied_at, execution_time_ms FROM public.schema_migrations ORDER BY id"
    )
    assert late[:2] == sorted(early), "rows of the earlier run must be kept as they were"
    assert all(ms is not None for _, _, ms in late[2:])


def test_downgrade_upgrade_round_trip(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    runner.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)
    assert_consistent(url, HEAD)

    down = runner.downgrade(fleet, fleet.get("inst1"), to="0003")
    assert down.exit_code == 0, down.as_record()
    assert list(down.instances[0].reverted) == ["0004"]
    assert_consistent(url, "0003")
    assert not exists(url, "public.instance_registry")
    assert exists(url, "public.instance_config")
    assert registry(hub_url)["inst1"]["schema_version"] == "0003"

    up = runner.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert up.exit_code == 0, up.as_record()
    assert list(up.instances[0].applied) == ["0004"]
    assert_consistent(url, HEAD)
    assert exists(url, "public.instance_registry")

    to_base = runner.downgrade(fleet, fleet.get("inst1"), to="base")
    assert to_base.exit_code == 0, to_base.as_record()
    assert list(to_base.instances[0].reverted) == list(reversed(REVISIONS))
    assert alembic_version(url) == []
    for relation in ("schema_migrations", "schema_version", "instance_config", "instance_registry"):
        assert not exists(url, f"public.{relation}"), relation

    back = runner.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert back.exit_code == 0, back.as_record()
    assert_consistent(url, HEAD)
    assert rows(url, "SELECT instance_id FROM public.schema_version") == [("inst1",)]


def test_downgrade_below_current_is_refused(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    runner.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    runner.upgrade(fleet, fleet.select(["inst1"]), to="0002", jobs=1)
    before = snapshot(urls["inst1"])

    report = runner.downgrade(fleet, fleet.get("inst1"), to="0003")

    result = report.instances[0]
    assert (result.result, result.exit_code) == ("refused", 4), result
    assert "0003" in (result.error or "")
    assert snapshot(urls["inst1"]) == before


def test_failure_in_the_middle_rolls_back_that_revision_only(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    runner.upgrade(fleet, fleet.select(["hub"]), jobs=1)  # the hub stays on the project chain
    chain = failing_chain()

    report = runner.upgrade(fleet, fleet.select(["inst1"]), chain=chain, jobs=1)

    assert report.exit_code == 5, report.as_record()
    result = report.instances[0]
    assert (result.result, result.exit_code) == ("failed", 5)
    assert list(result.applied) == [*REVISIONS, "0005"]
    assert result.to_revision == "0005"
    error = result.error or ""
    for needle in ("inst1", "0006", "0006_broken.py", "rolled back", "stays at 0005"):
        assert needle in error, f"{needle!r} missing from: {error}"
    assert "ophelia-db upgrade --instance inst1" in error, f"no next step in: {error}"
    assert "THIS IS NOT VALID SQL" in error or "syntax error" in error, error
    assert "\n" not in error and "Traceback" not in error

    assert_consistent(url, "0005", chain)
    assert rows(url, "SELECT checksum FROM public.schema_migrations WHERE version = '0005'") == [
        (file_checksum(chain.get("0005").path),)
    ]
    assert exists(url, "public.instance_notes")
    assert not exists(url, "public.half_done"), "0006's CREATE TABLE must be rolled back"
    assert not rows(
        url,
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'instance_notes' AND column_name = 'tag'",
    )

    hub_row = registry(hub_url)["inst1"]
    assert (hub_row["last_run_status"], hub_row["schema_version"]) == ("failed", "0005")
    assert hub_row["migrations_count"] == 5
    assert "0006" in hub_row["last_error"]

    # Where it stands now, seen with both chains.
    status = runner.status(fleet, fleet.select(["inst1"]), chain=chain).instances[0]
    assert (status.state, status.current, list(status.pending)) == ("outdated", "0005", ["0006"])
    assert runner.status(fleet, fleet.select(["inst1"])).instances[0].state == "ahead"

    # Running again fails the same way and still leaves 0005.
    again = runner.upgrade(fleet, fleet.select(["inst1"]), chain=chain, jobs=1)
    assert (again.instances[0].result, again.instances[0].applied) == ("failed", ())
    assert_consistent(url, "0005", chain)


def test_failing_revision_cli_exit_5(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    runner.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    env = {"OPHELIA_VERSION_LOCATIONS": FAILING_LOCATIONS, "OPHELIA_ALEMBIC_INI": str(ALEMBIC_INI)}

    proc = run_cli(["upgrade", "--instance", "inst1", "--fleet", str(path)], cwd=tmp_path, env=env)

    assert proc.returncode == 5, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr
    assert "0006_broken.py" in out and "rolled back" in out, out
    assert_consistent(url, "0005", failing_chain())

    as_json = invoke(["upgrade", "--instance", "inst1", "--fleet", str(path), "--json"], env=env)
    assert as_json.exit_code == 5, as_json.stderr
    record = json.loads(as_json.stdout)
    [row] = record["instances"]
    assert (row["name"], row["result"], row["exit_code"], row["from"], row["to"]) == (
        "inst1",
        "failed",
        5,
        "0005",
        "0005",
    )
    assert "0006" in row["error"]
