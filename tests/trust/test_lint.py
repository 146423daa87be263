"""lint (no database needed), the SQL splitter behind it, and `sql`'s non-transactional sections."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ophelia_db.run.script import mark_non_transactional, statements
from ophelia_db.trust.lint import LintReport, lint, squawk_binary
from tests.helpers import FleetDbs, execute, run_cli, write_fleet
from tests.trust.support import ALEMBIC_INI, ROOT, SHIPPED_VERSIONS, chain_at

LINT_CHAIN = os.pathsep.join([str(SHIPPED_VERSIONS), str(ROOT / "tests" / "chains" / "lint")])
SQUAWK = squawk_binary() is not None


def rules(report: LintReport, source: str | None = None) -> set[tuple[str, str]]:
    return {(f.revision, f.rule) for f in report.findings if source in (None, f.source)}


def test_squawk_cli_is_installed_with_the_project() -> None:
    assert SQUAWK, "squawk-cli is a dependency (pyproject.toml); `pip install -e .` installs it"


@pytest.mark.parametrize("use_squawk", [True, False], ids=["squawk", "own-rules"])
def test_the_shipped_chain_lints_clean(use_squawk: bool) -> None:
    report = lint(chain=chain_at(str(SHIPPED_VERSIONS)), squawk=use_squawk)
    assert report.findings == (), [f.as_record() for f in report.findings]
    assert report.revisions == ("0001", "0002", "0003", "0004", "0005") and report.exit_code == 0
    assert ALEMBIC_INI.is_file()


def test_safe_revision_passes_new_tables_autocommit_blocks_and_defaults() -> None:
    report = lint(start="0005", to="0105", chain=chain_at(LINT_CHAIN))
    assert report.findings == (), [f.as_record() for f in report.findings]
    assert report.revisions == ("0105",)


def test_blocking_index_build_and_friends_are_flagged() -> None:
    report = lint(start="0105", chain=chain_at(LINT_CHAIN))
    assert report.exit_code == 1
    assert rules(report, "ophelia-db") == {
        ("0106", "blocking-index-build"),
        ("0106", "concurrently-in-transaction"),
        ("0106", "not-null-without-default"),
        ("0106", "missing-lock-timeout"),
    }
    if SQUAWK:
        assert {
            ("0106", "require-concurrent-index-creation"),
            ("0106", "ban-concurrent-index-creation-in-transaction"),
            ("0106", "adding-required-field"),
        } <= rules(report, "squawk")
    blocking = next(f for f in report.findings if f.rule == "blocking-index-build")
    assert blocking.file == "0106_blocking.py"
    assert "public.instance_config" in blocking.message and "CONCURRENTLY" in blocking.message
    assert blocking.statement.startswith("CREATE INDEX instance_config_category")


def test_lint_command_exit_codes_and_json() -> None:
    clean = run_cli(["lint", "--from", "0005", "--to", "0105"], locations=LINT_CHAIN)
    assert clean.returncode == 0, (clean.stdout, clean.stderr)
    assert "0 finding(s)" in clean.stdout

    flagged = run_cli(["lint", "--from", "0105", "--json"], locations=LINT_CHAIN)
    assert flagged.returncode == 1, flagged.stderr
    record = json.loads(flagged.stdout)
    assert record["revisions"] == ["0106"]
    assert {"blocking-index-build", "missing-lock-timeout"} <= {f["rule"] for f in record["findings"]}

    unknown = run_cli(["lint", "--from", "0042"], locations=LINT_CHAIN)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown revision '0042'")
    assert "Traceback" not in unknown.stderr


def test_sql_puts_non_transactional_statements_in_a_marked_section(tmp_path: Path) -> None:
    fleet = write_fleet(
        tmp_path, "postgresql://postgres@127.0.0.1:1/hub", {"inst1": "postgresql://postgres@127.0.0.1:1/i"}
    )
    done = run_cli(
        ["sql", "--instance", "inst1", "--from", "0005", "--to", "0105"], fleet=fleet, locations=LINT_CHAIN
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    header = text.index("NON-TRANSACTIONAL SECTION of revision 0105")
    index = text.index("CREATE INDEX CONCURRENTLY instance_config_lint_flag")
    footer = text.index("end of the non-transactional section of revision 0105")
    assert text.rindex("COMMIT;", 0, header) < header < index < footer < text.index("BEGIN;", footer)
    assert text.startswith("-- This script has 1 non-transactional section(s) (revision 0105)")
    assert "PERFORM public.register_migration('0105'" in text  # the paste is still recorded
    # The section marks change comments only: the statements are the same, in the same order.
    assert [s.text for s in statements(text)] == [s.text for s in statements(text.split("\n\n", 1)[1])]


def test_splitter_respects_quotes_dollar_quotes_and_comments() -> None:
    script = (
        "BEGIN;\n-- Running upgrade 0001 -> 0002\n"
        "SELECT 'a;b', \"odd;name\", E'it\\'s;' /* c; */ FROM t; -- x;\n"
        "DO $body$ BEGIN PERFORM 1; END $body$;\n;\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\nCOMMIT;\n"
        "VACUUM t;\n"
    )
    found = statements(script)
    assert [s.normalised.split()[0].rstrip(";") for s in found] == [
        "BEGIN",
        "SELECT",
        "DO",
        "CREATE",
        "COMMIT",
        "VACUUM",
    ]
    assert found[1].normalised.endswith("/* c; */ FROM t;") and found[2].normalised.endswith("END $body$;")
    assert [s.revision for s in found] == ["0002"] * 6
    assert [s.in_transaction for s in found] == [False, True, True, True, True, False]
    assert found[-1].non_transactional and not found[1].non_transactional
    marked = mark_non_transactional(script)
    assert "NON-TRANSACTIONAL SECTION of revision 0002" in marked
    assert mark_non_transactional("BEGIN;\nSELECT 1;\nCOMMIT;\n") == "BEGIN;\nSELECT 1;\nCOMMIT;\n"
    inside = mark_non_transactional("BEGIN;\nCREATE INDEX CONCURRENTLY i ON t (a);\nCOMMIT;\n")
    assert "WARNING: the next statement cannot run inside a transaction" in inside


@pytest.mark.pg
def test_fleet_stats_name_the_large_table_on_exactly_the_instances_that_hold_it(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    hub, urls = fleet_dbs(3)
    fleet = write_fleet(tmp_path, hub, urls)
    assert run_cli(["upgrade", "--all", "--to", "0105"], fleet=fleet, locations=LINT_CHAIN).returncode == 0
    # inst2 holds a large instance_config; inst1 a few rows; inst3 already ran 0106 (recorded 5000 ms).
    execute(urls["inst2"], "INSERT INTO public.instance_config (key, value, category) "
            "SELECT 'K' || g, '\"v\"', 'general' FROM generate_series(1, 3000) g")  # fmt: skip
    execute(
        urls["inst1"],
        "INSERT INTO public.instance_config (key, value, category) VALUES ('A', '\"v\"', 'general')",
    )
    for url in urls.values():
        execute(url, "ANALYZE public.instance_config")
    execute(urls["inst3"], "INSERT INTO public.instance_config (key, value, category) "
            "SELECT 'K' || g, '\"v\"', 'general' FROM generate_series(1, 1000) g")  # fmt: skip
    execute(urls["inst3"], "ANALYZE public.instance_config")
    stamp = "UPDATE public.alembic_version SET version_num = '0106'"
    execute(urls["inst3"], stamp)
    history = "INSERT INTO public.schema_migrations (version, name, checksum, execution_time_ms) "
    execute(urls["inst3"], history + "VALUES ('0106', 'blocking', 'x', 5000)")

    done = run_cli(
        ["lint", "--from", "0105", "--fleet-stats", "--large-rows", "2000", "--instance", "inst1",
         "--instance", "inst2", "--instance", "inst3", "--json"],
        fleet=fleet, locations=LINT_CHAIN,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    risks = {r["table"]: r for r in json.loads(done.stdout)["fleet"]["risks"]}
    config = risks["public.instance_config"]
    assert config["large"] == ["inst2"] and "blocking-index-build" in config["rules"]
    by_name = {row["instance"]: row for row in config["instances"]}
    assert by_name["inst2"]["pending"] and by_name["inst2"]["rows"] == 3000
    assert not by_name["inst3"]["pending"] and by_name["inst3"]["recorded_ms"] == 5000
    # 5 ms a row on inst3, so about 15 s for inst2's 3000 rows.
    assert by_name["inst2"]["expected_ms"] == 15000 and by_name["inst1"]["expected_ms"] == 5

    text = run_cli(["lint", "--from", "0105", "--fleet-stats", "--large-rows", "2000"], fleet=fleet,
                   locations=LINT_CHAIN).stdout  # fmt: skip
    assert "on public.instance_config: 1 instance(s) with > 2,000 rows: inst2" in text
