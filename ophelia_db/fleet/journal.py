"""The run journal: every statement that reads or writes ``ophelia_runs``, ``ophelia_run_shards``
and ``ophelia_run_instances`` on the hub, and its local stand-in.

A run writes its journal as it goes, as a sequence of operations: the run's
header, a shard's start, the planned instances, each instance's entry (final
when its result is), the shard's end. Each operation carries its own
timestamp, so it means the same whether it reaches the hub at once or later:
when the hub cannot be reached (or has no journal yet) the operations are
appended to a local file next to the fleet file, which the end of the run or
``sync`` pushes to the hub (``replay``). Errors are redacted before they are
written anywhere.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from ophelia_db._version import __version__
from ophelia_db.errors import ConfigError
from ophelia_db.fleet.connections import Connection
from ophelia_db.fleet.upserts import runs_without_repeats
from ophelia_db.redaction import redact

# Where a run keeps its journal while the hub cannot take it: next to the fleet file.
LOCAL_DIR = ".ophelia-journal"
FINAL_STATES = frozenset({"ok", "noop", "failed", "locked", "refused", "skipped", "unreachable"})
# What `upgrade --resume` leaves alone: the instances the run brought where it was going.
FINISHED_STATES = frozenset({"ok", "noop"})

_SQL: dict[str, str] = {
    "run": """INSERT INTO public.ophelia_runs (run_id, command, target, selection, shard_count,
  resumes, tool_version, started_by, git_sha, ci_job_url, started_at)
VALUES (%(run_id)s, %(command)s, %(target)s, %(selection)s::jsonb, %(shard_count)s, %(resumes)s,
  %(tool_version)s, %(started_by)s, %(git_sha)s, %(ci_job_url)s, %(at)s)
ON CONFLICT (run_id) DO NOTHING""",
    # A shard started again under the same run id (a CI retry) starts afresh.
    "shard": """INSERT INTO public.ophelia_run_shards (run_id, shard, started_by, started_at)
VALUES (%(run_id)s, %(shard)s, %(started_by)s, %(at)s)
ON CONFLICT (run_id, shard) DO UPDATE SET started_by = EXCLUDED.started_by,
  started_at = EXCLUDED.started_at, finished_at = NULL, outcome = NULL, exit_code = NULL""",
    "finish": """UPDATE public.ophelia_run_shards SET finished_at = %(at)s, outcome = %(outcome)s,
  exit_code = %(exit_code)s WHERE run_id = %(run_id)s AND shard = %(shard)s""",
}
# The instances' rows, many in one statement (a run writes one or two per instance): the
# operations' values as a JSON array, read back with these columns.
_MANY: dict[str, str] = {
    # Planned rows never overwrite what a shard already recorded.
    "plan": """INSERT INTO public.ophelia_run_instances (run_id, instance, shard, wave, state, updated_at)
SELECT o.run_id, o.instance, o.shard, o.wave, 'planned', o.at
FROM jsonb_to_recordset(%(rows)s) AS o(run_id text, instance text, shard integer, wave integer,
  at timestamptz)
ON CONFLICT (run_id, instance) DO NOTHING""",
    "entry": """INSERT INTO public.ophelia_run_instances AS i (run_id, instance, shard, wave, state,
  from_revision, to_revision, applied, duration_ms, exit_code, error, updated_at)
SELECT o.run_id, o.instance, o.shard, o.wave, o.state, o.from_revision, o.to_revision,
  coalesce(o.applied, '{}'), o.duration_ms, o.exit_code, o.error, o.at
FROM jsonb_to_recordset(%(rows)s) AS o(run_id text, instance text, shard integer, wave integer,
  state text, from_revision text, to_revision text, applied text[], duration_ms integer,
  exit_code integer, error text, at timestamptz)
ON CONFLICT (run_id, instance) DO UPDATE SET shard = EXCLUDED.shard, wave = EXCLUDED.wave,
  state = EXCLUDED.state, from_revision = EXCLUDED.from_revision,
  to_revision = EXCLUDED.to_revision, applied = EXCLUDED.applied,
  duration_ms = EXCLUDED.duration_ms, exit_code = EXCLUDED.exit_code, error = EXCLUDED.error,
  updated_at = EXCLUDED.updated_at
WHERE i.updated_at <= EXCLUDED.updated_at""",
}
READY_SQL = "SELECT to_regclass('public.ophelia_run_instances') IS NOT NULL"


def has_journal(conn: Connection) -> bool:
    """Whether the database on ``conn`` has the run journal (revision 0005)."""
    row = conn.execute(READY_SQL).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Operation:
    """One write of the journal: which statement, with which values (JSON-safe)."""

    kind: str
    values: Mapping[str, Any]

    def line(self) -> str:
        return json.dumps({"kind": self.kind, "values": dict(self.values)}, sort_keys=True)

    @classmethod
    def parse(cls, line: str) -> Operation:
        data = json.loads(line)
        if data.get("kind") not in (*_SQL, *_MANY) or not isinstance(data.get("values"), dict):
            raise ValueError("not a journal operation")
        return cls(data["kind"], data["values"])


def _now() -> str:
    return datetime.now(UTC).isoformat()


def who() -> str:
    """The tool version and user@host, as the journal and the history record them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"ophelia-db/{__version__} {user}@{socket.gethostname()}"[:200]


@dataclass(frozen=True)
class RunHeader:
    """What a run is: its id, command and target, its selection, who started it and where."""

    run_id: str
    command: str
    target: str
    selection: Mapping[str, Any] = field(default_factory=dict)
    shard_count: int = 1
    resumes: str | None = None
    git_sha: str | None = None
    ci_job_url: str | None = None

    def operation(self) -> Operation:
        values = {
            "run_id": self.run_id,
            "command": self.command,
            "target": self.target,
            "selection": json.dumps(dict(self.selection), sort_keys=True),
            "shard_count": self.shard_count,
            "resumes": self.resumes,
            "tool_version": __version__,
            "started_by": who(),
            "git_sha": self.git_sha,
            "ci_job_url": self.ci_job_url,
            "at": _now(),
        }
        return Operation("run", values)


def shard_started(run_id: str, shard: int) -> Operation:
    return Operation("shard", {"run_id": run_id, "shard": shard, "started_by": who(), "at": _now()})


def planned(run_id: str, instance: str, shard: int, wave: int) -> Operation:
    values = {"run_id": run_id, "instance": instance, "shard": shard, "wave": wave, "at": _now()}
    return Operation("plan", values)


def entry(
    run_id: str,
    instance: str,
    *,
    shard: int,
    wave: int,
    state: str,
    from_revision: str | None = None,
    to_revision: str | None = None,
    applied: Iterable[str] = (),
    duration_ms: int | None = None,
    exit_code: int | None = None,
    error: str | None = None,
) -> Operation:
    values = {
        "run_id": run_id,
        "instance": instance,
        "shard": shard,
        "wave": wave,
        "state": state,
        "from_revision": from_revision,
        "to_revision": to_revision,
        "applied": list(applied),
        "duration_ms": duration_ms,
        "exit_code": exit_code,
        "error": redact(error)[:2000] if error else None,
        "at": _now(),
    }
    return Operation("entry", values)


def shard_finished(run_id: str, shard: int, outcome: str, exit_code: int) -> Operation:
    values = {"run_id": run_id, "shard": shard, "outcome": outcome, "exit_code": exit_code, "at": _now()}
    return Operation("finish", values)


def send(conn: Connection, operations: list[Operation]) -> None:
    """Write ``operations`` on ``conn`` (autocommit), pipelined: one round trip for them all."""
    with conn.pipeline(), conn.cursor() as cursor:
        for sql, params in statements(operations):
            cursor.execute(sql.encode(), params)  # type: ignore[arg-type]


def statements(operations: Sequence[Operation]) -> list[tuple[str, dict[str, Any]]]:
    """The statements writing ``operations`` in their order: a run of instance rows of one kind
    (``runs_without_repeats``) goes as one statement (each costs the hub ≈ 0.1 ms to plan and run)."""
    written: list[tuple[str, dict[str, Any]]] = []
    for kind, run in runs_without_repeats(operations, key=_row_of, kind=lambda operation: operation.kind):
        group = [dict(operation.values) for operation in run]
        if kind in _MANY:
            written.append((_MANY[kind], {"rows": Jsonb(group)}))
        else:
            written.extend((_SQL[kind], values) for values in group)
    return written


def _row_of(operation: Operation) -> tuple[Any, Any]:
    return operation.values.get("run_id"), operation.values.get("instance")


# Run ids: given, from the CI's variables (so that the shards of one CI run share one), or new.

_CI_RUN_IDS = (
    ("GITHUB_RUN_ID", "gh"),
    ("CI_PIPELINE_ID", "gl"),
    ("BUILDKITE_BUILD_ID", "bk"),
    ("CIRCLE_WORKFLOW_ID", "circle"),
)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def check_run_id(run_id: str) -> str:
    if not run_id or len(run_id) > 100 or not all(c.isalnum() or c in "._:-" for c in run_id):
        raise ConfigError(
            f"--run-id {run_id!r}: use 1-100 letters, digits or . _ : - (e.g. --run-id release-42)"
        )
    return run_id


def ci_run_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The run id the CI gives every job of one pipeline run, or ``None`` outside CI."""
    env = os.environ if environ is None else environ
    for variable, prefix in _CI_RUN_IDS:
        if env.get(variable):
            attempt = env.get("GITHUB_RUN_ATTEMPT") if variable == "GITHUB_RUN_ID" else None
            suffix = f"-{attempt}" if attempt else ""
            return check_run_id(f"{prefix}-{env[variable]}{suffix}")
    return None


def ci_context(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(git SHA, CI job URL)`` from the usual CI variables, when they are set."""
    env = os.environ if environ is None else environ
    sha = (
        env.get("GITHUB_SHA")
        or env.get("CI_COMMIT_SHA")
        or env.get("BUILDKITE_COMMIT")
        or env.get("CIRCLE_SHA1")
    )
    url = env.get("CI_JOB_URL") or env.get("BUILDKITE_BUILD_URL") or env.get("CIRCLE_BUILD_URL")
    if not url and env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return sha, url


# The local journal: one file per run, operations appended as they happen.


def local_dir(fleet_path: Path) -> Path:
    return fleet_path.resolve().parent / LOCAL_DIR


class LocalJournal:
    """A run's operations kept in ``<fleet dir>/.ophelia-journal/RUN.jsonl`` until the hub takes them."""

    def __init__(self, fleet_path: Path, run_id: str) -> None:
        self.directory = local_dir(fleet_path)
        self.path = self.directory / f"{run_id}.jsonl"

    def append(self, operations: Iterable[Operation]) -> None:
        lines = "".join(operation.line() + "\n" for operation in operations)
        if not lines:
            return
        self.directory.mkdir(exist_ok=True)
        # The directory ignores itself, wherever the fleet file lives.
        ignore = self.directory / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n", encoding="utf-8")
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())


def local_journals(fleet_path: Path) -> list[Path]:
    directory = local_dir(fleet_path)
    return sorted(directory.glob("*.jsonl")) if directory.is_dir() else []


def read_local(path: Path) -> list[Operation]:
    """A local journal's operations; a torn last line (a run killed mid-write) is left out."""
    operations = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            operations.append(Operation.parse(line))
        except ValueError:
            continue
    return operations


def replay(conn: Connection, path: Path) -> int:
    """Push a local journal to the hub and remove it; how many operations it held."""
    operations = read_local(path)
    with conn.transaction():
        send(conn, operations)
    path.unlink()
    return len(operations)
