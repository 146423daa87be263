"""One rule for every command over several instances (docs/design.md §3): one instance → its
code; all succeeded → 0; all failed the same way → that code; else 7."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ophelia_db.errors import combine_exit_codes
from tests.helpers import MakeDatabase, run_cli, write_fleet

CLOSED = "postgresql://postgres@127.0.0.1:1/{}?connect_timeout=2"


@pytest.mark.parametrize(
    ("codes", "findings", "expected"),
    [
        ([], False, 0),
        ([0, 0], False, 0),
        ([8], False, 8),
        ([8, 8, 8], False, 8),
        ([0, 8], False, 7),
        ([4, 8], False, 7),
        ([0, 1], True, 1),
        ([0, 1, 8], True, 7),
    ],
)
def test_the_rule(codes: list[int], findings: bool, expected: int) -> None:
    assert combine_exit_codes(codes, findings=findings) == expected


def test_a_fleet_that_cannot_be_reached_at_all_exits_8(tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path, CLOSED.format("hub"), {"a": CLOSED.format("a"), "b": CLOSED.format("b")})
    done = run_cli(["upgrade", "--all", "--json"], fleet=fleet)
    assert done.returncode == 8, done.stdout + done.stderr
    results = {row["name"]: row["result"] for row in json.loads(done.stdout)["instances"]}
    assert results == {"hub": "unreachable", "a": "skipped", "b": "skipped"}
    for command in (["status"], ["validate"], ["sync", "--all"]):
        assert run_cli(command, fleet=fleet).returncode == 8, command


def test_status_and_validate_agree_on_one_dropped_database(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    hub, inst = make_database("hub"), make_database("inst")
    fleet = write_fleet(tmp_path, hub, {"inst": inst, "gone": CLOSED.format("gone")})
    assert run_cli(["upgrade", "--instance", "hub", "--instance", "inst"], fleet=fleet).returncode == 0
    codes = {name: run_cli([name], fleet=fleet).returncode for name in ("status", "validate")}
    assert codes == {"status": 7, "validate": 7}

    # sync says why it could not read an instance, as status does, not only that it could not.
    synced = run_cli(["sync", "--all"], fleet=fleet)
    assert synced.returncode == 7, synced.stdout + synced.stderr
    gone = next(line for line in synced.stdout.splitlines() if line.startswith("gone "))
    assert gone.startswith("gone unreachable current=- error=gone: cannot connect to "), gone
    assert "Connection refused" in gone, gone
