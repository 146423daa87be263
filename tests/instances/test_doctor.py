"""`ophelia-db doctor`: an instance checked the way the Ophelia app sees it, one line per check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from tests.helpers import write_fleet
from tests.instances.support import (
    HeadDatabase,
    invoke,
    provisioned,
    rows,
)

pytestmark = pytest.mark.pg
# The head_template/head_database fixtures.
CHECKS = [
    "reachable",
    "anon calls get_schema_version()",
    "anon reads the public config keys",
    "anon cannot read a secret",
    "hub resolves 'corte'",
    "at head",
]


def lines(output: str) -> list[tuple[str, str]]:
    """(verdict, check name) of each output line."""
    return [(line[:4].strip(), line[6:].split(":")[0]) for line in output.splitlines()]


def test_doctor_passes_on_a_provisioned_instance(head_database: HeadDatabase, tmp_path: Path) -> None:
    hub, instance = head_database("hub"), head_database("corte")
    fleet, _ = provisioned(tmp_path, hub, instance)

    result = invoke(["doctor", "--instance", "corte", "--fleet", str(fleet)])

    assert result.exit_code == 0, result.stdout + result.stderr
    assert lines(result.stdout) == [("ok", name) for name in CHECKS]
    assert "anon and authenticated read 0 of 1 secret row(s)" in result.stdout
    assert "'corte' -> https://corte.supabase.example" in result.stdout
    # The probe secret was rolled back.
    assert rows(instance, "SELECT count(*) FROM public.instance_config WHERE is_secret") == [(0,)]
    record = json.loads(invoke(["doctor", "-i", "corte", "--json", "--fleet", str(fleet)]).stdout)
    assert record["exit_code"] == 0 and [c["check"] for c in record["checks"]] == CHECKS


def test_doctor_names_each_failure_on_its_own_line(head_database: HeadDatabase, tmp_path: Path) -> None:
    hub, instance = head_database("hub"), head_database("corte")
    fleet, _ = provisioned(tmp_path, hub, instance)
    rows(instance, "CREATE POLICY leak ON public.instance_config FOR SELECT TO anon USING (is_secret)")
    rows(instance, "UPDATE public.instance_config SET is_public = false WHERE key = 'BOT_NAME'")
    rows(hub, "UPDATE public.instance_registry SET status = 'suspended' WHERE subdomain = 'corte'")
    loaded = load_fleet(fleet)
    assert ophelia_db.downgrade(loaded, loaded.get("corte"), to="0003").exit_code == 0

    result = invoke(["doctor", "--instance", "corte", "--fleet", str(fleet)])

    assert result.exit_code == 1
    assert lines(result.stdout) == [
        ("ok", "reachable"),
        ("ok", "anon calls get_schema_version()"),
        ("FAIL", "anon reads the public config keys"),
        ("FAIL", "anon cannot read a secret"),
        ("FAIL", "hub resolves 'corte'"),
        ("FAIL", "at head"),
    ]
    out = result.stdout
    assert "anon cannot read BOT_NAME" in out and "anon can read secret rows" in out
    assert "does not resolve 'corte' for anon: it is suspended" in out and "at head: outdated" in out
    for line in out.splitlines():
        if line.startswith("FAIL"):  # every failure says what to run
            assert "; fix: ophelia-db " in line and line.rstrip().endswith(("corte", "--apply")), line

    rows(hub, "UPDATE public.instance_registry SET status = 'active', supabase_url = 'https://other.example' "
              "WHERE subdomain = 'corte'")  # fmt: skip
    moved = invoke(["doctor", "--instance", "corte", "--fleet", str(fleet)])
    assert (
        "the hub points to https://other.example, the instance's vault says https://corte.supabase.example"
        in (moved.stdout)
    )

    # The usual fix (provision again) would not give the hub a URL it was never told.
    rows(hub, "UPDATE public.instance_registry SET supabase_url = NULL WHERE subdomain = 'corte'")
    unknown = invoke(["doctor", "--instance", "corte", "--fleet", str(fleet)])
    assert (
        "FAIL  hub resolves 'corte': the hub's row for 'corte' has no supabase_url; "
        "fix: ophelia-db provision --from instances/corte.json --supabase-url URL --apply\n"
    ) in unknown.stdout


def test_doctor_on_an_unreachable_instance_exits_8(tmp_path: Path) -> None:
    fleet = write_fleet(
        tmp_path,
        "postgresql://postgres@127.0.0.1:1/hub?connect_timeout=1",
        {"corte": "postgresql://postgres@127.0.0.1:1/corte?connect_timeout=1"},
    )
    result = invoke(["doctor", "--instance", "corte", "--fleet", str(fleet)])
    assert result.exit_code == 8
    assert [verdict for verdict, _ in lines(result.stdout)] == ["FAIL"]
    assert result.stdout.startswith("FAIL  reachable: corte: cannot connect")
