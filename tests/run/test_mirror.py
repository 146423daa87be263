"""The version mirror: integrity refusals, `history`, and what the app's roles may do."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from tests.helpers import (
    CHAIN,
    HEAD,
    REVISIONS,
    FleetDbs,
    assert_consistent,
    execute,
    failing_chain,
    invoke,
    rows,
    snapshot,
    write_fleet,
)

pytestmark = pytest.mark.pg


@pytest.mark.parametrize(
    ("tamper", "state", "needle"),
    [
        (
            "UPDATE public.schema_migrations SET checksum = 'sha256:' || repeat('0', 64) "
            "WHERE version = '0002'",
            "checksum-mismatch",
            "0002",
        ),
        ("DELETE FROM public.schema_migrations WHERE version = '0003'", "mirror-mismatch", "0003"),
        ("UPDATE public.schema_version SET current_version = '0002'", "mirror-mismatch", "0002"),
    ],
    ids=["checksum", "missing-row", "current-version"],
)
def test_integrity_refusals_change_nothing(
    fleet_dbs: FleetDbs, tmp_path: Path, tamper: str, state: str, needle: str
) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to="0003", jobs=1)
    execute(url, tamper)
    before = snapshot(url)

    status = ophelia_db.status(fleet, fleet.select(["inst1"])).instances[0]
    assert status.state == state, status
    assert needle in (status.error or "")

    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    result = report.instances[0]
    assert (result.result, result.exit_code, report.exit_code) == ("refused", 4, 4), result
    assert "nothing was changed" in (result.error or "")
    assert snapshot(url) == before

    cli = invoke(["upgrade", "--instance", "inst1", "--json", "--fleet", str(path)])
    assert cli.exit_code == 4, (cli.stdout, cli.stderr)
    assert json.loads(cli.stdout)["instances"][0]["result"] == "refused"
    assert snapshot(url) == before


def test_history_lists_applied_and_pending(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to="0002", jobs=1)

    result = invoke(["history", "--instance", "inst1", "--json", "--fleet", str(path)])

    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["name"], record["current"], record["head"]) == ("inst1", "0002", HEAD)
    entries = record["migrations"]
    assert [(e["version"], e["state"]) for e in entries] == [
        ("0001", "applied"),
        ("0002", "applied"),
        ("0003", "pending"),
        ("0004", "pending"),
        ("0005", "pending"),
    ]
    for entry in entries[:2]:
        assert entry["checksum"] == CHAIN.get(entry["version"]).checksum
        assert entry["applied_by"].startswith("ophelia-db/")
        assert entry["applied_at"] is not None
    assert entries[0]["name"] == CHAIN.get("0001").name

    plain = invoke(["history", "--instance", "inst1", "--fleet", str(path)])
    assert plain.exit_code == 0
    assert "0003 pending" in plain.stdout and "0001 applied" in plain.stdout
    # The plain lines carry what the README promises: checksum, duration, who applied it.
    (first,) = [line for line in plain.stdout.splitlines() if line.startswith("0001 applied")]
    assert "ms sha256:" in first and " ophelia-db/" in first, first


def test_api_roles_read_but_never_write_the_mirror(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    ophelia_db.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE anon")
        assert conn.execute(
            "SELECT current_version, instance_id, migrations_count FROM public.get_schema_version()"
        ).fetchone() == (HEAD, "inst1", len(REVISIONS))
        assert conn.execute("SELECT count(*) FROM public.schema_migrations").fetchone() == (len(REVISIONS),)
        assert conn.execute(
            "SELECT public.get_pending_migrations(ARRAY['0004', '0100', '0099', '0100'])"
        ).fetchall() == [("0100",), ("0099",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.schema_migrations (version, name) VALUES ('x', 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT public.register_migration('0099', 'sneaky')")
        conn.execute("RESET ROLE")
    assert_consistent(url, HEAD)
    assert [r[0] for r in rows(url, "SELECT version FROM public.schema_migrations")] == REVISIONS


def test_an_upgrade_writes_only_the_new_history_rows(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0
    # Count the INSERT statements the next run sends to the history (rows or not).
    execute(url, "CREATE TABLE public.history_inserts (n integer)")
    execute(
        url,
        "CREATE FUNCTION public.count_history_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO public.history_inserts VALUES (1); RETURN NULL; END $$",
    )
    execute(
        url,
        "CREATE TRIGGER count_history_insert AFTER INSERT ON public.schema_migrations "
        "FOR EACH STATEMENT EXECUTE FUNCTION public.count_history_insert()",
    )

    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to="0105", chain=failing_chain(), jobs=1)

    assert report.exit_code == 0, report.as_record()
    # One for 0105: the four rows already there are not sent again (the cost must not grow
    # with the length of the chain).
    assert rows(url, "SELECT count(*) FROM public.history_inserts") == [(1,)]


def test_a_batch_sees_which_revision_creates_the_mirror_from_its_statements() -> None:
    from ophelia_db.run.mirror import creates_mirror

    both = "CREATE TABLE public.schema_migrations (id int);\nCREATE TABLE public.schema_version (id int)"
    assert creates_mirror([both])
    assert creates_mirror(
        [
            "create table if not exists public.schema_migrations (id int)",
            "CREATE TABLE public.schema_version (id int)",
        ]
    )
    # One table only, or the statements are not code: the rows stay guarded.
    assert not creates_mirror(["CREATE TABLE public.schema_migrations (id int)"])
    assert not creates_mirror(
        [f"CREATE FUNCTION public.f() RETURNS void LANGUAGE sql AS $body$ {both} $body$"]
    )
    assert not creates_mirror([f"-- {both}", f"COMMENT ON SCHEMA public IS '{both}'"])
    assert not creates_mirror(
        ['CREATE TABLE "public"."schema_migrations" (id int); CREATE TABLE public.schema_version (id int)']
    )


def test_a_message_from_before_the_mirror_records_every_revision_without_guards(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    # 0001 was applied by a run of its own (its message had no mirror to write); the next message
    # creates the mirror in 0002, backfills 0001 and records the rest with plain statements.
    hub_url, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    for goal in ("0001", "head"):
        report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to=goal, jobs=1)
        assert [r.result for r in report.instances] == ["ok"], report.instances
    assert_consistent(urls["inst1"], HEAD)
    recorded = rows(
        urls["inst1"],
        "SELECT version, execution_time_ms IS NOT NULL FROM public.schema_migrations ORDER BY id",
    )
    # 0001's duration was measured in another session: unknown, as before.
    assert recorded == [("0001", False)] + [(version, True) for version in REVISIONS[1:]]
