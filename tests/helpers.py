"""What tests of every area share: the one CLI runner, the one fleet writer, quick SQL.

The CLI runs as a user runs it, in a fresh process (``python -m ophelia_db``
with this interpreter, so no virtualenv path is assumed), or in-process
through typer's runner when a test wants stdout and stderr apart cheaply.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from typer.testing import CliRunner, Result

from ophelia_db.cli.app import app_for
from ophelia_db.run.chain import Chain, ChainSpec

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
SHIPPED_VERSIONS = ROOT / "alembic" / "versions"
CHAINS = ROOT / "tests" / "chains"
CHAIN = Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI))
HEAD = CHAIN.head
REVISIONS = [rev.id for rev in CHAIN.revisions]
# The command line as a user types it, with this interpreter's installation.
OPHELIA_DB = [sys.executable, "-m", "ophelia_db"]


def chain_locations(*extra: str | Path) -> str:
    """``OPHELIA_VERSION_LOCATIONS`` for the shipped chain plus test chains (by folder name or path)."""
    folders = [CHAINS / e if isinstance(e, str) else Path(e) for e in extra]
    return os.pathsep.join(str(folder) for folder in [SHIPPED_VERSIONS, *folders])


def chain_at(locations: str) -> Chain:
    return Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI, version_locations=locations))


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without the developer's own ``OPHELIA_*``/``TEST_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPHELIA_", "TEST_"))}
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    fleet: Path | None = None,
    locations: str | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``ophelia-db args`` in a fresh process (which reads the chain anew)."""
    extra = dict(env or {})
    if fleet is not None:
        extra["OPHELIA_FLEET"] = str(fleet)
    if locations is not None:
        extra["OPHELIA_VERSION_LOCATIONS"] = locations
    return subprocess.run(
        [*OPHELIA_DB, *args],
        cwd=cwd,
        env=clean_env(extra),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def invoke(args: Sequence[str], *, env: Mapping[str, str] | None = None, input: str | None = None) -> Result:
    """Run the typer app in-process as the script does (``app_for``), stdout and stderr captured apart."""
    runner = CliRunner(env=dict(env or {}))
    return runner.invoke(app_for(list(args)), list(args), input=input, catch_exceptions=False)


def write_fleet(
    directory: Path,
    hub_url: str,
    instances: Mapping[str, str],
    *,
    extra: str = "",
    defaults: str = "",
    tags: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write ``directory/fleet.toml`` in the docs/design.md §2 format and return its path."""

    def key(name: str) -> str:
        return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)

    # JSON string literals are valid TOML basic strings.
    parts = [f"[defaults]\n{defaults}\n", f"[hub]\nurl = {json.dumps(hub_url)}\n"]
    for name, url in instances.items():
        tagged = f"tags = {json.dumps(list((tags or {}).get(name, [])))}\n" if tags else ""
        parts.append(
            f"[instances.{key(name)}]\n"
            f"community_name = {json.dumps(name.title(), ensure_ascii=False)}\n"
            'community_type = "municipality"\n'
            f"url = {json.dumps(url)}\n{tagged}"
        )
    path = Path(directory) / "fleet.toml"
    path.write_text("\n".join(parts) + extra, encoding="utf-8")
    return path


def make_state_dir() -> Path:
    """Return a new /tmp directory the server user can use (pytest's tmp dirs are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ophelia-test-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


def rows(url: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def scalar(url: str, query: str, params: Sequence[Any] | None = None) -> Any:
    found = rows(url, query, params)
    return found[0][0] if found else None


def execute(url: str, statement: str, params: Sequence[Any] | None = None) -> None:
    rows(url, statement, params)


# --- peeking at databases


def exists(url: str, relation: str) -> bool:
    return bool(scalar(url, "SELECT to_regclass(%s) IS NOT NULL", [relation]))


def alembic_version(url: str) -> list[str]:
    if not exists(url, "public.alembic_version"):
        return []
    return [r[0] for r in rows(url, "SELECT version_num FROM public.alembic_version")]


def migrations(url: str) -> list[str]:
    if not exists(url, "public.schema_migrations"):
        return []
    return [r[0] for r in rows(url, "SELECT version FROM public.schema_migrations ORDER BY id")]


def current_version(url: str) -> str | None:
    if not exists(url, "public.schema_version"):
        return None
    found = rows(url, "SELECT current_version FROM public.schema_version WHERE id = 1")
    return found[0][0] if found else None


def snapshot(url: str) -> dict[str, Any]:
    """Everything versioning-related in a database, to compare before/after a refusal."""
    dump: dict[str, Any] = {"alembic_version": alembic_version(url)}
    if exists(url, "public.schema_migrations"):
        dump["schema_migrations"] = rows(url, "SELECT * FROM public.schema_migrations ORDER BY id")
        dump["schema_version"] = rows(url, "SELECT * FROM public.schema_version")
    return dump


def registry(hub_url: str) -> dict[str, dict[str, Any]]:
    """The hub's instance_registry rows by subdomain, as dicts."""
    with psycopg.connect(hub_url, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM public.instance_registry ORDER BY subdomain")
        names = [column.name for column in cur.description or ()]
        return {row[names.index("subdomain")]: dict(zip(names, row, strict=True)) for row in cur}


def assert_consistent(url: str, revision: str, chain: Chain = CHAIN) -> None:
    """alembic_version, schema_version and schema_migrations all say ``revision``."""
    assert alembic_version(url) == [revision]
    assert current_version(url) == revision
    assert migrations(url) == chain.applied_through(revision)


def failing_chain() -> Chain:
    """The project chain plus tests/chains/failing: 0105 works, 0106 fails half-way."""
    return Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI, version_locations=chain_locations("failing")))


MakeDatabase = Callable[..., str]
FleetDbs = Callable[[int], tuple[str, dict[str, str]]]


@contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP port that accepts connections and never answers (a server hung at start-up): its
    port, and the connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
