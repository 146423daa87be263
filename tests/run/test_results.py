"""Result objects: exit codes (docs/design.md §3 table) and JSON records. No database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ophelia_db.errors import ExitCode, combine_exit_codes
from ophelia_db.results import (
    HistoryEntry,
    HistoryReport,
    InstanceResult,
    InstanceStatus,
    RunReport,
    StatusReport,
    SyncReport,
)

STATUS_KEYS = ["name", "role", "state", "current", "pending", "migrations_count", "updated_at", "error"]
RUN_KEYS = ["name", "role", "result", "from", "to", "applied", "duration_ms", "exit_code", "error"]


def test_exit_code_table() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "NOT_AT_HEAD": 1,
        "USAGE": 2,
        "LOCKED": 3,
        "INTEGRITY": 4,
        "REVISION_FAILED": 5,
        "NEEDS_ATTENTION": 6,
        "MIXED": 7,
        "UNREACHABLE": 8,
        "INTERNAL": 70,
        "SIGINT": 130,
        "SIGTERM": 143,
    }


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], 0),
        ([0], 0),
        ([0, 0, 0], 0),
        ([5], 5),
        ([8, 8], 8),
        ([3, 3, 3], 3),
        ([0, 5], 7),
        ([5, 0], 7),
        ([3, 8], 7),
        ([0, 0, 4], 7),
    ],
)
def test_combine_exit_codes(codes: list[int], expected: int) -> None:
    assert combine_exit_codes(codes) == expected


def status(name: str, state: str, role: str = "instance") -> InstanceStatus:
    return InstanceStatus(name=name, role=role, state=state)


@pytest.mark.parametrize(
    ("states", "plain", "checked"),
    [
        ([], 0, 0),
        (["up-to-date", "up-to-date"], 0, 0),
        (["up-to-date", "outdated"], 0, 1),
        (["unversioned"], 0, 1),
        (["outdated", "unversioned"], 0, 1),
        (["up-to-date", "unreachable"], 7, 7),
        (["unreachable", "unreachable"], 8, 8),
        (["outdated", "unreachable"], 8, 7),
        (["checksum-mismatch"], 4, 4),
        (["up-to-date", "mirror-mismatch"], 7, 7),
        (["ahead"], 4, 4),
        (["locked"], 3, 3),
    ],
)
def test_status_exit_code(states: list[str], plain: int, checked: int) -> None:
    report = StatusReport(head="0105", instances=tuple(status(f"i{n}", s) for n, s in enumerate(states)))
    assert report.exit_code() == plain
    assert report.exit_code(check=False) == plain
    assert report.exit_code(check=True) == checked


def test_status_record_keys_and_values() -> None:
    moment = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    report = StatusReport(
        head="0105",
        instances=(
            InstanceStatus(
                name="corte",
                role="instance",
                state="outdated",
                current="0003",
                pending=("0004", "0105"),
                migrations_count=3,
                updated_at=moment,
            ),
            InstanceStatus(name="ajaccio", role="instance", state="unreachable", error="connection refused"),
        ),
    )
    record = report.as_record()
    assert list(record) == ["head", "instances"]
    assert [list(item) for item in record["instances"]] == [STATUS_KEYS, STATUS_KEYS]
    assert record["instances"][0] == {
        "name": "corte",
        "role": "instance",
        "state": "outdated",
        "current": "0003",
        "pending": ["0004", "0105"],
        "migrations_count": 3,
        "updated_at": "2026-11-24T10:00:00+00:00",
        "error": None,
    }
    assert record["instances"][1]["error"] == "connection refused"
    assert record["instances"][1]["pending"] == []
    assert json.loads(json.dumps(record)) == record


def test_updated_at_keeps_its_offset() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    record = InstanceStatus(name="a", role="hub", state="up-to-date", updated_at=moment).as_record()
    assert record["updated_at"] == "2026-01-02T03:04:05+01:00"


def test_registry_status_is_added_only_when_known() -> None:
    record = InstanceStatus(
        name="a", role="instance", state="up-to-date", registry_status="archived"
    ).as_record()
    assert list(record) == [*STATUS_KEYS, "registry_status"]
    assert record["registry_status"] == "archived"


def result(name: str, code: int = 0, outcome: str = "ok", role: str = "instance") -> InstanceResult:
    return InstanceResult(name=name, role=role, result=outcome, exit_code=code)


@pytest.mark.parametrize(
    ("results", "hub_report", "expected"),
    [
        ([result("hub", role="hub"), result("corte")], "ok", 0),
        ([result("corte"), result("lisula", outcome="noop")], "ok", 0),
        ([result("corte")], "pending", 7),
        ([result("corte"), result("lisula")], "failed", 7),
        ([], "ok", 0),
        ([result("corte", 5, "failed")], "ok", 5),
        ([result("corte", 5, "failed")], "failed", 5),
        ([result("corte", 3, "locked"), result("lisula", 3, "locked")], "ok", 3),
        ([result("corte"), result("lisula", 8, "unreachable")], "ok", 7),
        ([result("corte", 4, "refused"), result("lisula", 8, "unreachable")], "pending", 7),
    ],
)
def test_run_exit_code(results: list[InstanceResult], hub_report: str, expected: int) -> None:
    report = RunReport(run_id="r1", target="head", instances=tuple(results), hub_report=hub_report)
    assert report.exit_code == expected


def test_instance_result_succeeded() -> None:
    assert result("corte").succeeded is True
    assert result("corte", 5, "failed").succeeded is False


def test_upgrade_record_keys_and_values() -> None:
    report = RunReport(
        run_id="8f0c",
        target="head",
        instances=(
            InstanceResult(
                name="corte",
                role="instance",
                result="ok",
                from_revision="0003",
                to_revision="0105",
                applied=("0004", "0105"),
                duration_ms=812,
                exit_code=ExitCode.OK,
            ),
            InstanceResult(
                name="lisula",
                role="instance",
                result="failed",
                from_revision="0003",
                to_revision="0003",
                duration_ms=40,
                exit_code=ExitCode.REVISION_FAILED,
                error="0004 failed: relation exists",
            ),
        ),
        hub_report="ok",
    )
    record = report.as_record()
    assert list(record) == ["run_id", "target", "instances", "hub_report"]
    assert [list(item) for item in record["instances"]] == [RUN_KEYS, RUN_KEYS]
    assert record["instances"][0] == {
        "name": "corte",
        "role": "instance",
        "result": "ok",
        "from": "0003",
        "to": "0105",
        "applied": ["0004", "0105"],
        "duration_ms": 812,
        "exit_code": 0,
        "error": None,
    }
    assert record["instances"][1]["exit_code"] == 5
    assert type(record["instances"][1]["exit_code"]) is int  # not an IntEnum in the JSON
    assert json.dumps(record).count('"exit_code": 5') == 1
    assert report.exit_code == 7


def test_run_record_adds_hub_error_and_reverted_only_when_present() -> None:
    report = RunReport(
        run_id="r",
        target="0003",
        instances=(InstanceResult(name="corte", role="instance", result="ok", reverted=("0105", "0004")),),
        hub_report="pending",
        hub_error="hub unreachable",
    )
    record = report.as_record()
    assert list(record) == ["run_id", "target", "instances", "hub_report", "hub_error"]
    assert record["hub_error"] == "hub unreachable"
    assert list(record["instances"][0]) == [*RUN_KEYS, "reverted"]
    assert record["instances"][0]["reverted"] == ["0105", "0004"]


@pytest.mark.parametrize(
    ("states", "hub_report", "expected"),
    [
        (["up-to-date", "outdated"], "ok", 0),
        (["up-to-date", "unreachable"], "ok", 7),
        (["unreachable"], "ok", 8),
        (["up-to-date"], "failed", 8),
        (["up-to-date"], "pending", 7),
    ],
)
def test_sync_exit_code(states: list[str], hub_report: str, expected: int) -> None:
    report = SyncReport(
        instances=tuple(status(f"i{n}", s) for n, s in enumerate(states)), hub_report=hub_report
    )
    assert report.exit_code == expected


def test_history_record() -> None:
    moment = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    report = HistoryReport(
        name="corte",
        current="0004",
        head="0105",
        entries=(
            HistoryEntry("0004", "vault", "applied", moment, "sha256:ab", 12, "ci"),
            HistoryEntry("0105", "registry", "pending"),
        ),
    )
    record = report.as_record()
    assert list(record) == ["name", "current", "head", "migrations"]
    assert record["migrations"] == [
        {
            "version": "0004",
            "name": "vault",
            "state": "applied",
            "applied_at": "2026-11-24T10:00:00+00:00",
            "checksum": "sha256:ab",
            "execution_time_ms": 12,
            "applied_by": "ci",
        },
        {
            "version": "0105",
            "name": "registry",
            "state": "pending",
            "applied_at": None,
            "checksum": None,
            "execution_time_ms": None,
            "applied_by": None,
        },
    ]
