"""Selections and flags mean one thing: --all stands alone, a misspelt canary is refused like a
misspelt tag, upgrade never goes down, a dry run says it reported nothing."""

from __future__ import annotations

import io
from pathlib import Path

from tests.helpers import FleetDbs, invoke, run_cli, write_fleet

CLOSED = "postgresql://postgres@127.0.0.1:1/{}"


def closed_fleet(directory: Path) -> Path:
    instances = {"corte": CLOSED.format("corte"), "lisula": CLOSED.format("lisula")}
    return write_fleet(directory, CLOSED.format("hub"), instances, tags={"corte": ["canary"]})


def test_all_stands_alone_for_every_selecting_command(tmp_path: Path) -> None:
    fleet = closed_fleet(tmp_path)
    for command in (["upgrade"], ["status"], ["sync"], ["validate"], ["drift"]):
        for extra in (["-i", "corte"], ["--tag", "canary"]):
            done = invoke([*command, "--all", *extra, "--fleet", str(fleet)])
            assert done.exit_code == 2, (command, extra, done.stdout)
            assert "--all already selects every instance" in done.stderr, done.stderr


def test_a_misspelt_canary_is_refused_with_the_closest_tag(tmp_path: Path) -> None:
    done = invoke(["upgrade", "--all", "--canary", "canry", "--fleet", str(closed_fleet(tmp_path))])
    assert done.exit_code == 2
    assert done.stderr == (
        f"error: no instance of {tmp_path / 'fleet.toml'} has the tag 'canry'; did you mean 'canary'?\n"
    )


def test_sync_selects_like_the_others(tmp_path: Path) -> None:
    fleet = closed_fleet(tmp_path)
    nothing = invoke(["sync", "--fleet", str(fleet)])
    assert (nothing.exit_code, nothing.stderr) == (
        2,
        "error: select instances with --instance NAME, --all or --tag TAG\n",
    )
    assert invoke(["sync", "--tag", "canary", "--fleet", str(fleet)]).exit_code == 8  # selected, unreachable


def test_upgrade_never_goes_down_and_a_dry_run_reports_nothing(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub, instances = fleet_dbs(1)
    fleet = write_fleet(tmp_path, hub, instances)
    assert run_cli(["upgrade", "--all"], fleet=fleet).returncode == 0

    down = run_cli(["upgrade", "--instance", "inst1", "--to", "0002"], fleet=fleet)
    assert down.returncode == 2, down.stdout + down.stderr
    assert (
        "past 0002: upgrade never goes down; use `ophelia-db downgrade --instance inst1 --to 0002`"
        in down.stdout
    )

    dry = run_cli(["upgrade", "--all", "--dry-run"], fleet=fleet)
    assert dry.returncode == 0 and dry.stdout.endswith("hub report not sent (dry run)\n"), dry.stdout


def test_a_huge_argument_is_not_echoed_whole(tmp_path: Path) -> None:
    done = invoke(["status", "-i", "x" * 100_000, "--fleet", str(closed_fleet(tmp_path))])
    assert done.exit_code == 2
    assert len(done.stderr) < 1200 and "more characters)" in done.stderr


def test_long_values_are_cut_in_a_terminal_table_only() -> None:
    from ophelia_db.cli.render.instances import TERMINAL_CELL, entry_row
    from ophelia_db.instances.vault import ConfigEntry

    entry = ConfigEntry("BIG", "x" * 1_000_000, "general", None, False, False, 1, None)
    assert len(entry_row(entry, TERMINAL_CELL)[1]) < 200
    assert len(entry_row(entry)[1]) > 1_000_000


def test_a_selection_with_nothing_to_do_says_so(tmp_path: Path) -> None:
    from ophelia_db.cli.render.run import render_run
    from ophelia_db.results import RunReport

    out = io.StringIO()
    render_run(RunReport(run_id="r", target="head", instances=()), stream=out, err=io.StringIO())
    assert out.getvalue() == "0 instance(s): nothing to do; hub report ok\n"
