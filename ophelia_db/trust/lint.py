"""Linting revisions for operations that lock or rewrite busy tables, before they reach the fleet.

This module owns ``lint``: rendering a range of revisions to SQL offline
(Alembic ``--sql``, the way ``ophelia-db sql`` does, without the bookkeeping
statements), running squawk (the ``squawk-cli`` package) on each revision's SQL
when it is installed, and our own rules, which know which tables each
revision creates and whether a statement runs inside a transaction:
``CREATE INDEX CONCURRENTLY`` inside a transaction, an index built without
``CONCURRENTLY`` on an existing table, ``NOT NULL`` added without a default on
an existing table, and a revision that locks existing tables without its own
``lock_timeout``. It reads files only; no database is needed, so it runs in CI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ophelia_db.errors import ConfigError, ExitCode
from ophelia_db.fleet.config import Target
from ophelia_db.results import Record
from ophelia_db.run import driver
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.script import Statement, statements
from ophelia_db.trust.fleet_stats import DEFAULT_LARGE_ROWS, FleetStats, fleet_stats

# squawk rules left out, and why:
# - prefer-text-field, prefer-bigint-over-int, prefer-bigint-over-smallint, prefer-identity:
#   column types are a contract with the app (docs/design.md §4 fixes varchar, integer, serial columns);
# - prefer-robust-stmts: every revision runs in one transaction that rolls back whole, so a
#   failed revision is rerun from the start and IF [NOT] EXISTS would only hide drift;
# - require-lock-timeout, require-statement-timeout: ophelia-db sets both with SET LOCAL in each
#   revision's transaction; our missing-lock-timeout rule covers revisions that lock existing
#   tables (squawk cannot see the runner's settings and also flags brand-new tables).
SQUAWK_EXCLUDED = (
    "prefer-text-field",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-robust-stmts",
    "require-lock-timeout",
    "require-statement-timeout",
)
# squawk rules that stay meaningful on a table created earlier in the same revision.
_SQUAWK_ANY_TABLE = ("ban-concurrent-index-creation-in-transaction",)
FINDINGS_EXIT = ExitCode.NOT_AT_HEAD  # 1: the check failed; nothing ran anywhere

_NAME = r'(?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?'
_CREATE_TABLE = re.compile(
    rf"^CREATE\s+(?:(?:GLOBAL\s+|LOCAL\s+)?(?:TEMP|TEMPORARY)\s+|UNLOGGED\s+)?TABLE\s+"
    rf"(?:IF\s+NOT\s+EXISTS\s+)?({_NAME})",
    re.IGNORECASE,
)
_CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:{_NAME}\s+)?"
    rf"ON\s+(?:ONLY\s+)?({_NAME})",
    re.IGNORECASE,
)
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_NAME})", re.IGNORECASE)
_LOCKING = [
    _ALTER_TABLE,
    re.compile(rf"^(?:DROP\s+TABLE|TRUNCATE(?:\s+TABLE)?)\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_NAME})", re.I),
    re.compile(rf"^LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?({_NAME})", re.I),
    re.compile(
        rf"^CREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+.*?\bON\s+({_NAME})", re.I | re.S
    ),
    re.compile(rf"^(?:CREATE|ALTER|DROP)\s+POLICY\s+.*?\bON\s+({_NAME})", re.I | re.S),
]
_ADD_NOT_NULL = re.compile(
    r"\bADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(.*?)(?=,\s*ADD\b|$)", re.I | re.S
)
_SET_NOT_NULL = re.compile(r"\bALTER\s+(?:COLUMN\s+)?(\S+)\s+SET\s+NOT\s+NULL\b", re.I)
_SET_LOCK_TIMEOUT = re.compile(
    r"^(SET\s+(LOCAL\s+|SESSION\s+)?lock_timeout\b|SELECT\s+set_config\s*\(\s*'lock_timeout')", re.I
)


@dataclass(frozen=True)
class LintFinding(Record):
    """One problem: ``rule`` (ours or squawk's, per ``source``) at a statement of a revision."""

    json_omit_empty: ClassVar[frozenset[str]] = frozenset({"table"})

    revision: str
    file: str
    rule: str
    source: str
    message: str
    statement: str
    line: int
    # The existing table the statement locks or rewrites, when it is one we recognise.
    table: str | None = None


@dataclass(frozen=True)
class LintReport:
    revisions: tuple[str, ...]
    findings: tuple[LintFinding, ...]
    squawk: str
    # With --fleet-stats: the flagged tables sized on each instance.
    fleet: FleetStats | None = None

    @property
    def exit_code(self) -> int:
        return FINDINGS_EXIT if self.findings else ExitCode.OK

    def as_record(self) -> dict[str, Any]:
        return {
            "revisions": list(self.revisions),
            "squawk": self.squawk,
            "findings": [f.as_record() for f in self.findings],
            **({"fleet": self.fleet.as_record()} if self.fleet is not None else {}),
        }


def _silent(**_: Any) -> None:
    """An ``on_version_apply`` hook that writes nothing, so no mirror SQL is rendered."""


def render(chain: Chain, start: str | None, goal: str | None) -> str:
    """Alembic's offline SQL for ``start`` (exclusive) to ``goal``, without mirror statements."""
    if goal is None:
        raise ConfigError("lint goes up the chain; --to base makes no sense here")
    return driver.render_sql(chain.spec, start, goal, hook=_silent)


def lint(
    *,
    start: str | None = None,
    to: str = "head",
    chain: Chain | None = None,
    squawk: bool = True,
    fleet_targets: list[Target] | None = None,
    large_rows: int = DEFAULT_LARGE_ROWS,
) -> LintReport:
    """Lint the revisions after ``start`` (default: all) up to ``to``.

    With ``fleet_targets``, each flagged table is also sized on those instances
    (``fleet_stats``): where the revision is pending and the table is large.
    """
    chain = chain or chain_for()
    goal = chain.resolve(to)
    first = chain.resolve(start) if start is not None else None
    if first is not None and goal is not None and not chain.is_after(goal, first):
        return LintReport(revisions=(), findings=(), squawk="squawk not run: nothing to lint")
    script = render(chain, first, goal)
    by_revision: dict[str, list[Statement]] = {}
    for statement in statements(script):
        if statement.revision and not statement.is_bookkeeping:
            by_revision.setdefault(statement.revision, []).append(statement)
    findings: list[LintFinding] = []
    for revision, found in by_revision.items():
        findings.extend(_our_rules(chain, revision, found))
    binary = squawk_binary() if squawk else None
    note = "squawk not used (--no-squawk)" if not squawk else "squawk not installed: our rules only"
    if binary:
        extra, note = _run_squawk(binary, chain, by_revision)
        findings.extend(extra)
    order = {rev.id: index for index, rev in enumerate(chain.revisions)}
    findings.sort(key=lambda f: (order.get(f.revision, -1), f.line, f.source, f.rule))
    stats = None
    if fleet_targets is not None:
        stats = fleet_stats(fleet_targets, findings, chain, large_rows=large_rows)
    return LintReport(revisions=tuple(by_revision), findings=tuple(findings), squawk=note, fleet=stats)


def _table(name: str) -> str:
    parts = [part.strip('"') for part in re.split(r"\.(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", name)]
    return ".".join(parts) if len(parts) == 2 else f"public.{parts[0]}"


def _excerpt(statement: Statement, limit: int = 200) -> str:
    text = statement.normalised
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _our_rules(chain: Chain, revision: str, found: list[Statement]) -> list[LintFinding]:
    rev = chain.get(revision)
    created: set[str] = set()
    has_timeout = rev.lock_timeout is not None
    flagged_timeout = False
    out: list[LintFinding] = []

    def finding(rule: str, statement: Statement, message: str) -> None:
        out.append(
            LintFinding(
                revision,
                rev.path.name,
                rule,
                "ophelia-db",
                message,
                _excerpt(statement),
                statement.line,
                _touched_table(statement.normalised),
            )
        )

    for statement in found:
        text = statement.normalised
        if _SET_LOCK_TIMEOUT.match(text):
            has_timeout = True
        table_match = _CREATE_TABLE.match(text)
        if table_match:
            created.add(_table(table_match.group(1)))
            continue
        if statement.non_transactional and statement.in_transaction:
            finding(
                "concurrently-in-transaction",
                statement,
                "this statement cannot run inside a transaction and every revision runs in one: wrap it "
                "in `with op.get_context().autocommit_block():`",
            )
        index = _CREATE_INDEX.match(text)
        if index and not index.group(1) and _table(index.group(2)) not in created:
            finding(
                "blocking-index-build",
                statement,
                f"builds an index on existing table {_table(index.group(2))} without CONCURRENTLY: writes "
                "to the table wait for the whole build; use CREATE INDEX CONCURRENTLY inside "
                "`op.get_context().autocommit_block()`",
            )
        altered = _ALTER_TABLE.match(text)
        if altered and _table(altered.group(1)) not in created:
            _not_null_rules(finding, statement, _table(altered.group(1)), text)
        locked = _locked_table(text)
        if locked and not has_timeout and not flagged_timeout and locked not in created:
            flagged_timeout = True
            finding(
                "missing-lock-timeout",
                statement,
                f"locks existing table {locked} but the revision sets no lock_timeout of its "
                "own: pasted by hand (`ophelia-db sql`) it can wait behind a long query while every query "
                'queues behind it; set `lock_timeout = "2s"` in the revision file or '
                "SET LOCAL lock_timeout in its SQL",
            )
    return out


def _touched_table(text: str) -> str | None:
    """The table a flagged statement works on: the one it locks, or the one it alters or indexes."""
    index = _CREATE_INDEX.match(text)
    if index:
        return _table(index.group(2))
    return _locked_table(text)


def _locked_table(text: str) -> str | None:
    """The table a statement locks against writers (or worse), if it is one we recognise."""
    index = _CREATE_INDEX.match(text)
    if index:
        return None if index.group(1) else _table(index.group(2))
    match = next((m for m in (p.match(text) for p in _LOCKING) if m), None)
    return _table(match.group(1)) if match else None


def _not_null_rules(finding: Any, statement: Statement, table: str, text: str) -> None:
    for added in _ADD_NOT_NULL.findall(text):
        upper = added.upper()
        if re.match(r"(CONSTRAINT|PRIMARY|UNIQUE|CHECK|FOREIGN|EXCLUDE)\b", upper):
            continue
        if re.search(r"\bNOT\s+NULL\b", upper) and not re.search(r"\bDEFAULT\b|\bGENERATED\b", upper):
            column = added.split()[0] if added.split() else "?"
            finding(
                "not-null-without-default",
                statement,
                f"adds column {column} NOT NULL without a default to existing table {table}: it fails "
                "as soon as the table has a row; add a non-volatile DEFAULT, or add it nullable, "
                "backfill, then set NOT NULL",
            )
    for column in _SET_NOT_NULL.findall(text):
        finding(
            "not-null-without-default",
            statement,
            f"sets {column} NOT NULL on existing table {table}: the whole table is scanned under an ACCESS "
            "EXCLUSIVE lock; add a CHECK (... IS NOT NULL) NOT VALID constraint, VALIDATE it, "
            "then SET NOT NULL",
        )


def squawk_binary() -> str | None:
    """The squawk executable beside this Python (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    return shutil.which("squawk")


def _run_squawk(
    binary: str, chain: Chain, by_revision: dict[str, list[Statement]]
) -> tuple[list[LintFinding], str]:
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"squawk could not run ({exc}): our rules only"
    with tempfile.TemporaryDirectory(prefix="ophelia-lint-") as directory:
        files: dict[str, tuple[str, list[tuple[int, int, Statement]]]] = {}
        for revision, found in by_revision.items():
            lines: list[str] = []
            spans: list[tuple[int, int, Statement]] = []
            if found and found[0].in_transaction:
                lines.append("BEGIN;")
            for statement in found:
                first = len(lines)
                lines.extend(statement.text.splitlines() or [""])
                spans.append((first, len(lines) - 1, statement))
            path = Path(directory) / f"{revision}.sql"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            files[str(path)] = (revision, spans)
        command = [binary, "--reporter", "json", f"--exclude={','.join(SQUAWK_EXCLUDED)}", *files]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            violations = json.loads(done.stdout or "[]")
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return [], f"{version or 'squawk'} failed ({exc}): our rules only"
    findings = []
    for item in violations:
        if item.get("file") not in files:
            continue
        revision, spans = files[item["file"]]
        line = int(item.get("line", 0))
        found = [s for first, last, s in spans if first <= line <= last]
        if not found:
            continue
        statement = found[0]
        rule = str(item.get("rule_name", "squawk"))
        if rule not in _SQUAWK_ANY_TABLE and _targets_new_table(statement, by_revision[revision]):
            continue
        help_text = f" ({item['help']})" if item.get("help") else ""
        findings.append(
            LintFinding(
                revision,
                chain.get(revision).path.name,
                rule,
                "squawk",
                f"{item.get('message', '')}{help_text}",
                _excerpt(statement),
                statement.line,
                _touched_table(statement.normalised),
            )
        )
    return findings, version or "squawk"


def _targets_new_table(statement: Statement, found: list[Statement]) -> bool:
    """Whether ``statement`` works on a table its own revision created before it."""
    text = statement.normalised
    index = _CREATE_INDEX.match(text)
    table = _table(index.group(2)) if index else _locked_table(text)
    if table is None:
        return False
    for earlier in found:
        if earlier is statement:
            return False
        created = _CREATE_TABLE.match(earlier.normalised)
        if created and _table(created.group(1)) == table:
            return True
    return False
