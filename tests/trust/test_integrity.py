"""validate and repair against real PostgreSQL: each refusal leaves the database byte-for-byte untouched."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db import trust
from ophelia_db.errors import ConfigError, IntegrityRefusal
from ophelia_db.fleet.config import Fleet, load_fleet
from ophelia_db.local.cluster import LocalCluster
from ophelia_db.run.chain import Chain, file_checksum
from tests.helpers import (
    OPHELIA_DB,
    FleetDbs,
    assert_consistent,
    chain_at,
    chain_locations,
    clean_env,
    rows,
    run_cli,
    write_fleet,
)
from tests.trust.support import (
    assert_one_error_line,
    execute,
    extra_chain,
    pg_dump,
    trust_fleet,
)

pytestmark = pytest.mark.pg

REVISION_0005 = '''"""A revision the trust tests edit after it was applied."""

from alembic import op

revision = "0105"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE public.trust_notes (id integer PRIMARY KEY, body text)")


def downgrade() -> None:
    op.execute("DROP TABLE public.trust_notes")
'''


@dataclass
class Trusted:
    url: str
    fleet_path: Path
    fleet: Fleet
    locations: str
    revision_file: Path

    def chain(self) -> Chain:
        return chain_at(self.locations)


@pytest.fixture
def trusted(tmp_path: Path, fleet_dbs: FleetDbs, pg_cluster: LocalCluster) -> Trusted:
    """The hub and inst1 at 0105: the shipped chain plus a test revision."""
    hub, urls = fleet_dbs(1)
    path = trust_fleet(tmp_path, pg_cluster, hub, urls)
    locations, revision_file = extra_chain(tmp_path, REVISION_0005)
    fleet = load_fleet(path)
    report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1, chain=chain_at(locations))
    assert report.exit_code == 0, report.as_record()
    return Trusted(urls["inst1"], path, fleet, locations, revision_file)


def _edit(trusted: Trusted) -> tuple[str, str]:
    old = file_checksum(trusted.revision_file)
    trusted.revision_file.write_text(
        trusted.revision_file.read_text().replace("body text", "body text, extra text"), encoding="utf-8"
    )
    return old, file_checksum(trusted.revision_file)


def test_valid_instance_passes(trusted: Trusted) -> None:
    report = trust.validate(trusted.fleet, trusted.fleet.select(all_=True), chain=trusted.chain())
    assert report.exit_code == 0
    assert {row.name: (row.state, row.current) for row in report.instances} == {
        "hub": ("valid", "0105"),
        "inst1": ("valid", "0105"),
    }
    done = run_cli(["validate"], fleet=trusted.fleet_path, locations=trusted.locations)
    assert done.returncode == 0, done.stderr
    assert "2 valid, 0 failed" in done.stdout


def test_line_endings_and_bom_do_not_count(trusted: Trusted) -> None:
    text = trusted.revision_file.read_text()
    trusted.revision_file.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    report = trust.validate(trusted.fleet, trusted.fleet.select(["inst1"]), chain=trusted.chain())
    assert report.exit_code == 0, report.as_record()


def test_edited_file_is_refused_naming_everything_and_nothing_changes(trusted: Trusted) -> None:
    before = pg_dump(trusted.url)
    old, new = _edit(trusted)

    report = trust.validate(trusted.fleet, trusted.fleet.select(["inst1"]), chain=trusted.chain())
    (row,) = report.instances
    assert (report.exit_code, row.state) == (4, "checksum-mismatch")
    (finding,) = row.findings
    assert (finding.revision, finding.recorded_checksum, finding.file_checksum) == ("0105", old, new)
    assert finding.file == str(trusted.revision_file)

    done = run_cli(["validate", "--instance", "inst1"], fleet=trusted.fleet_path, locations=trusted.locations)
    assert done.returncode == 4, done.stderr
    for needle in ("inst1", "0105", "0105_trust.py", old, new):
        assert needle in done.stdout, needle

    upgraded = run_cli(
        ["upgrade", "--instance", "inst1", "--json"], fleet=trusted.fleet_path, locations=trusted.locations
    )
    assert upgraded.returncode == 4, upgraded.stderr
    result = json.loads(upgraded.stdout)["instances"][0]
    assert result["result"] == "refused" and "0105_trust.py" in result["error"]
    # What to do next, for this instance and this revision.
    assert "`ophelia-db repair --instance inst1 --accept-checksum 0105`" in result["error"]
    assert pg_dump(trusted.url) == before


def test_unknown_revision_is_refused_and_nothing_changes(trusted: Trusted) -> None:
    execute(
        trusted.url,
        "UPDATE public.alembic_version SET version_num = '0099';"
        "UPDATE public.schema_version SET current_version = '0099';"
        "INSERT INTO public.schema_migrations (version, name) VALUES ('0099', 'from the future')",
    )
    before = pg_dump(trusted.url)

    report = trust.validate(trusted.fleet, trusted.fleet.select(["inst1"]), chain=trusted.chain())
    assert (report.exit_code, report.instances[0].state) == (4, "ahead")
    assert "0099" in report.instances[0].findings[0].message

    for args in (
        ["validate", "-i", "inst1"],
        ["upgrade", "-i", "inst1"],
        ["repair", "-i", "inst1", "--rebuild-mirror"],
    ):
        done = run_cli([*args], fleet=trusted.fleet_path, locations=trusted.locations)
        assert done.returncode == 4, (args, done.stdout, done.stderr)
    assert pg_dump(trusted.url) == before


def test_mirror_mismatch_is_refused_then_rebuilt_by_an_explicit_logged_repair(trusted: Trusted) -> None:
    execute(trusted.url, "DELETE FROM public.schema_migrations WHERE version = '0003'")
    before = pg_dump(trusted.url)

    report = trust.validate(trusted.fleet, trusted.fleet.select(["inst1"]), chain=trusted.chain())
    assert (report.exit_code, report.instances[0].state) == (4, "mirror-mismatch")
    assert "0003" in report.instances[0].findings[0].message
    upgraded = run_cli(["upgrade", "-i", "inst1"], fleet=trusted.fleet_path, locations=trusted.locations)
    assert upgraded.returncode == 4, upgraded.stderr
    assert "`ophelia-db repair --instance inst1 --rebuild-mirror` rebuilds it" in upgraded.stdout

    # Without --yes the plan is shown and nothing happens (no terminal to confirm on).
    unconfirmed = run_cli(
        ["repair", "-i", "inst1", "--rebuild-mirror"], fleet=trusted.fleet_path, locations=trusted.locations
    )
    assert_one_error_line(unconfirmed, 2)
    assert "add the missing schema_migrations row for 0003" in unconfirmed.stdout
    assert pg_dump(trusted.url) == before

    done = run_cli(
        ["repair", "-i", "inst1", "--rebuild-mirror", "--yes", "--reason", "row lost in a restore"],
        fleet=trusted.fleet_path,
        locations=trusted.locations,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert (
        run_cli(["validate", "-i", "inst1"], fleet=trusted.fleet_path, locations=trusted.locations).returncode
        == 0
    )
    (log,) = rows(
        trusted.url,
        "SELECT performed_by, performed_at, database_user, action, revision, details FROM ophelia_repairs",
    )
    by, at, db_user, action, revision, details = log
    assert by.startswith("ophelia-db/") and at is not None and db_user == "postgres"
    assert (action, revision, details["reason"]) == ("add-history-row", "0003", "row lost in a restore")
    # The log is the tool's own: RLS on, no access for the API roles.
    assert rows(
        trusted.url,
        "SELECT c.relrowsecurity, has_table_privilege('anon', c.oid, 'SELECT'), "
        "has_table_privilege('authenticated', c.oid, 'INSERT') FROM pg_class c "
        "WHERE c.relname = 'ophelia_repairs'",
    ) == [(True, False, False)]


def test_accept_checksum_records_the_edit(trusted: Trusted) -> None:
    old, new = _edit(trusted)
    chain = trusted.chain()
    target = trusted.fleet.get("inst1")
    request = trust.RepairRequest(accept_checksums=("0105",), reason="typo in a comment")

    plan = trust.plan_repair(target, request, chain=chain)
    assert [(s.action, s.revision, s.before, s.after) for s in plan.steps] == [
        ("accept-checksum", "0105", old, new)
    ]
    assert not plan.remaining
    # Answering the confirmation prompt (no --yes) applies the shown plan.
    done = run_cli(
        ["repair", "-i", "inst1", "--accept-checksum", "0105", "--reason", "typo in a comment"],
        fleet=trusted.fleet_path,
        locations=trusted.locations,
        stdin="y\n",
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert old in done.stdout and new in done.stdout and "repaired inst1: 1 change(s)" in done.stdout
    assert rows(trusted.url, "SELECT checksum FROM schema_migrations WHERE version = '0105'") == [(new,)]
    assert trust.validate(trusted.fleet, [target], chain=chain).exit_code == 0
    (details,) = rows(trusted.url, "SELECT details FROM ophelia_repairs WHERE action = 'accept-checksum'")[0]
    assert (details["before"], details["after"], details["reason"]) == (old, new, "typo in a comment")
    # Nothing more to accept: an empty plan.
    assert trust.plan_repair(target, request, chain=chain).steps == ()


def test_repair_refuses_a_plan_the_instance_no_longer_matches(trusted: Trusted) -> None:
    chain = trusted.chain()
    target = trusted.fleet.get("inst1")
    execute(trusted.url, "DELETE FROM public.schema_migrations WHERE version = '0003'")
    request = trust.RepairRequest(rebuild_mirror=True)
    plan = trust.plan_repair(target, request, chain=chain)
    execute(trusted.url, "DELETE FROM public.schema_migrations WHERE version = '0002'")
    before = pg_dump(trusted.url)
    with pytest.raises(IntegrityRefusal, match="changed since the plan was shown"):
        trust.repair(target, plan, request, chain=chain)
    assert pg_dump(trusted.url) == before


def test_repair_bad_input_is_one_line_with_exit_2(trusted: Trusted) -> None:
    common = {"fleet": trusted.fleet_path, "locations": trusted.locations}
    assert_one_error_line(run_cli(["repair", "-i", "inst1"], **common), 2)
    assert_one_error_line(run_cli(["repair", "-i", "inst1", "--accept-checksum", "0077"], **common), 2)
    assert_one_error_line(run_cli(["repair", "-i", "nope", "--rebuild-mirror"], **common), 2)
    assert_one_error_line(run_cli(["validate", "-i", "nope"], **common), 2)
    with pytest.raises(ConfigError, match="no row for revision 0105"):
        execute(trusted.url, "DELETE FROM public.schema_migrations WHERE version = '0105'")
        trust.plan_repair(
            trusted.fleet.get("inst1"),
            trust.RepairRequest(accept_checksums=("0105",)),
            chain=trusted.chain(),
        )


def test_the_repair_log_is_closed_to_the_api_roles_even_under_supabase_defaults(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0
    # Supabase opens everything new in public to the API roles.
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
        execute(url, f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON {kind} TO anon, authenticated")
    execute(url, "DELETE FROM public.schema_migrations WHERE version = '0003'")
    target = fleet.get("inst1")
    request = trust.RepairRequest(rebuild_mirror=True, reason="test")
    trust.repair(target, trust.plan_repair(target, request), request)

    for role in ("anon", "authenticated"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"SET ROLE {role}")
            for probe in (
                "SELECT nextval(pg_get_serial_sequence('public.ophelia_repairs', 'id'))",
                "SELECT count(*) FROM public.ophelia_repairs",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(probe)


INDEX_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.cic_target_id'::regclass"
RUNNING = (
    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()"
)


def _cic_fleet(fleet_dbs: FleetDbs, tmp_path: Path) -> tuple[Path, str, str]:
    hub_url, urls = fleet_dbs(1)
    path = write_fleet(tmp_path, hub_url, urls)
    assert run_cli(["upgrade", "--all"], fleet=path).returncode == 0
    url = urls["inst1"]
    execute(url, "CREATE TABLE public.cic_target (id integer)")
    return path, url, chain_locations("cic")


def _kill_during(url: str, path: Path, locations: str, waiting_query: str) -> None:
    run = subprocess.Popen(
        [*OPHELIA_DB, "upgrade", "--instance", "inst1"],
        env=clean_env({"OPHELIA_FLEET": str(path), "OPHELIA_VERSION_LOCATIONS": locations}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not rows(
        url, "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s", [waiting_query]
    ):
        assert run.poll() is None and time.monotonic() < deadline, "the runner never reached that point"
        time.sleep(0.05)
    run.kill()
    run.wait(timeout=10)
    deadline = time.monotonic() + 10
    while rows(
        url, "SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()", [waiting_query]
    ):
        assert time.monotonic() < deadline, "the dead runner's statement is still running"
        time.sleep(0.05)


def test_a_runner_killed_while_building_an_index_concurrently_needs_a_retry(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    path, url, locations = _cic_fleet(fleet_dbs, tmp_path)
    with psycopg.connect(url) as writer:  # an open transaction on the table: the build waits for it
        writer.execute("INSERT INTO public.cic_target VALUES (1)")
        _kill_during(url, path, locations, "CREATE INDEX CONCURRENTLY%")
        writer.rollback()
    assert rows(
        url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.cic_target_id'::regclass"
    ) == [(False,)]

    cli = partial(run_cli, fleet=path, locations=locations)
    refused = cli(["upgrade", "--instance", "inst1", "--json"])
    assert refused.returncode == 6, refused.stdout + refused.stderr
    error = json.loads(refused.stdout)["instances"][0]["error"]
    for needle in (
        "0105 (0105_cic.py)",
        "non-transactional section",
        "public.cic_target_id",
        "`ophelia-db resolve --instance inst1 0105 --retry`",
    ):
        assert needle in error, error
    status = json.loads(cli(["status", "--json"]).stdout)
    assert {r["name"]: r["state"] for r in status["instances"]}["inst1"] == "needs-attention"

    resolved = run_cli(
        ["resolve", "--instance", "inst1", "0105", "--retry", "--yes"], fleet=path, locations=locations
    )
    assert resolved.returncode == 0, resolved.stderr
    assert "dropped invalid index(es) public.cic_target_id" in resolved.stdout
    again = cli(["upgrade", "--instance", "inst1"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(
        url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.cic_target_id'::regclass"
    ) == [(True,)]
    assert rows(url, "SELECT action FROM public.ophelia_repairs") == [("resolve-retry",)]


def test_a_runner_killed_after_its_non_transactional_section_did_its_work_is_recorded_as_applied(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    path, url, locations = _cic_fleet(fleet_dbs, tmp_path)
    dbname = rows(url, "SELECT current_database()")[0][0]
    execute(url, f"ALTER DATABASE {dbname} SET ophelia.test_sleep = '600'")
    _kill_during(url, path, locations, "SELECT pg_sleep%")
    execute(url, f"ALTER DATABASE {dbname} SET ophelia.test_sleep = '0'")

    cli = partial(run_cli, fleet=path, locations=locations)
    refused = cli(["upgrade", "--instance", "inst1"])
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "relation" not in refused.stdout, "not the false 'already exists ... rolled back'"
    not_confirmed = run_cli(
        ["resolve", "--instance", "inst1", "0105", "--applied"], fleet=path, locations=locations
    )
    assert not_confirmed.returncode == 2 and "not confirmed" in not_confirmed.stderr

    resolved = run_cli(
        ["resolve", "--instance", "inst1", "0105", "--applied", "--yes", "--json"],
        fleet=path,
        locations=locations,
    )
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["decision"] == "applied"
    assert_consistent(url, "0105", chain_at(locations))
    status = cli(["status", "--check", "--instance", "inst1"])
    assert status.returncode == 0, status.stdout
    assert rows(url, "SELECT action, revision FROM public.ophelia_repairs") == [("resolve-applied", "0105")]
