"""The lifecycle in the hub registry: archive, suspend, activate; what `upgrade --all`, `status` and
`instances` make of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ophelia_db
from tests.helpers import MakeDatabase, write_fleet
from tests.instances.support import (
    HeadDatabase,
    invoke,
    registry_row,
    rows,
)

pytestmark = pytest.mark.pg
# The head_template/head_database fixtures.


def migrated(url: str) -> bool:
    return rows(url, "SELECT to_regclass('public.alembic_version') IS NOT NULL") == [(True,)]


def test_archived_and_suspended_instances_are_skipped_and_shown(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    hub = head_database("hub")
    urls = {"inst1": make_database("inst1"), "inst2": make_database("inst2"), "inst3": head_database("inst3")}
    fleet = write_fleet(tmp_path, hub, urls)
    base = ["--fleet", str(fleet)]

    archived = invoke(["archive", "inst1", *base])
    assert (archived.exit_code, archived.stdout) == (0, "inst1: not registered -> archived\n")
    suspended = json.loads(invoke(["suspend", "inst2", "--json", *base]).stdout)
    assert suspended == {"name": "inst2", "previous": None, "status": "suspended", "changed": True}
    assert invoke(["suspend", "inst2", *base]).stdout == "inst2: already suspended\n"
    assert registry_row(hub, "inst1")["community_name"] == "Inst1"  # type: ignore[index]

    run = invoke(["upgrade", "--all", *base])
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "skipped (archived or suspended in the hub): inst1, inst2" in run.stderr
    assert not migrated(urls["inst1"]) and not migrated(urls["inst2"])

    status = invoke(["status", "--json", *base])
    assert status.exit_code == 0, status.stderr
    states = {row["name"]: row for row in json.loads(status.stdout)["instances"]}
    assert (states["inst1"]["state"], states["inst1"]["registry_status"]) == ("unversioned", "archived")
    assert states["inst2"]["registry_status"] == "suspended"
    assert states["inst3"]["state"] == "up-to-date" and "registry_status" not in states["inst3"]
    plain = invoke(["status", *base]).stdout
    assert (
        "inst1 instance unversioned [archived]" in plain and "inst2 instance unversioned [suspended]" in plain
    )
    # Left behind on purpose, so `status --check` does not fail on them.
    assert invoke(["status", "--check", *base]).exit_code == 0

    activated = invoke(["activate", "inst1", *base])
    assert activated.stdout == "inst1: archived -> active\n"
    again = invoke(["upgrade", "--all", *base])
    assert again.exit_code == 0, again.stdout + again.stderr
    assert migrated(urls["inst1"]) and not migrated(urls["inst2"])
    assert "skipped (archived or suspended in the hub): inst2" in again.stderr
    assert invoke(["activate", "inst2", *base]).stdout == "inst2: suspended -> active\n"
    assert invoke(["status", "--check", *base]).exit_code == 1

    unknown = invoke(["archive", "inst9", *base])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: unknown instance 'inst9'")
    assert "did you mean 'inst" in unknown.stderr
    hub_itself = invoke(["suspend", "hub", *base])
    assert hub_itself.exit_code == 2 and "is the hub" in hub_itself.stderr


def test_instances_lists_the_hub_view_and_flags_differences(
    head_database: HeadDatabase, tmp_path: Path
) -> None:
    hub = head_database("hub")
    urls = {
        "corte": "postgresql://postgres@127.0.0.1:1/corte",
        "lisula": "postgresql://postgres@127.0.0.1:1/lisula",
    }
    fleet = write_fleet(tmp_path, hub, urls)
    rows(
        hub,
        "INSERT INTO public.instance_registry (subdomain, community_name, community_type, status, is_hub, "
        "schema_version) VALUES ('hub', 'Ophélia hub', NULL, 'active', true, '0005'), "
        "('corte', 'Ville de Corte', 'municipality', 'suspended', false, '0004'), "
        "('ghost', 'Ghost town', 'association', 'archived', false, '0003')",
    )
    base = ["--fleet", str(fleet)]

    listed = invoke(["instances", *base])
    assert listed.exit_code == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "hub  hub  Ophélia hub  -  active  0005",
        "corte  instance  Ville de Corte  municipality  suspended  0004",
        "lisula  instance  Lisula  municipality  -  -  in fleet.toml, not in the registry",
        "ghost  instance  Ghost town  association  archived  0003  in the registry, not in fleet.toml",
    ]
    record = json.loads(invoke(["instances", "--json", *base]).stdout)
    flags = {row["name"]: (row["in_fleet"], row["in_registry"], row["flag"]) for row in record["instances"]}
    assert flags["lisula"][:2] == (True, False) and flags["ghost"][:2] == (False, True)
    assert flags["corte"] == (True, True, None)

    assert invoke(["instances", "--check", *base]).exit_code == 1
    rows(hub, "DELETE FROM public.instance_registry WHERE subdomain = 'ghost'")
    invoke(["activate", "lisula", *base])
    assert invoke(["instances", "--check", *base]).exit_code == 0

    (tmp_path / "down").mkdir()
    down = write_fleet(tmp_path / "down", "postgresql://postgres@127.0.0.1:1/hub?connect_timeout=1", urls)
    unreachable = invoke(["instances", "--fleet", str(down)])
    assert unreachable.exit_code == 8 and unreachable.stderr.startswith("error: hub: cannot connect")


def test_the_library_upgrade_skips_archived_instances_as_the_cli_does(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    hub = head_database("hub")
    urls = {"inst1": make_database("inst1"), "inst2": make_database("inst2")}
    path = write_fleet(tmp_path, hub, urls)
    assert invoke(["archive", "inst1", "--fleet", str(path)]).exit_code == 0

    fleet = ophelia_db.load_fleet(path)
    report = ophelia_db.upgrade(fleet, fleet.select(all_=True))

    assert report.exit_code == 0
    assert report.inactive == ("inst1",)
    assert [r.name for r in report.instances] == ["hub", "inst2"]
    assert not migrated(urls["inst1"]) and migrated(urls["inst2"])
    # Named explicitly, an archived instance is migrated (the CLI's --instance).
    named = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), skip_inactive=False)
    assert [r.result for r in named.instances] == ["ok"] and migrated(urls["inst1"])


def test_global_options_come_before_the_subcommand(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    path = write_fleet(tmp_path, head_database("hub"), {"inst1": head_database("inst1")})
    before = invoke(["--fleet", str(path), "status", "--json"])
    after = invoke(["status", "--json", "--fleet", str(path)])
    assert before.exit_code == after.exit_code == 0, before.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert invoke(["--fleet", str(tmp_path / "missing.toml"), "status"]).exit_code == 2
