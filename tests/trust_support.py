"""Helpers shared by the trust tests (validate, repair, adopt, drift, lint): real databases only.

The expensive part of these tests is building the reference schemas (the chain
applied revision by revision to a scratch database), so ``references`` builds
them once per session and writes them to the session cluster's reference
cache; fleets written by ``trust_fleet`` carry a ``[local]`` table pointing at
that cluster, so the CLI finds the cache instead of building them again.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ophelia_db import run as runner
from ophelia_db.local.binaries import find_bin_dir
from ophelia_db.local.cluster import LocalCluster
from ophelia_db.run.chain import Chain, ChainSpec
from ophelia_db.run.script import statements
from ophelia_db.trust.reference import References, build_references
from tests.conftest import write_fleet

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
SHIPPED_VERSIONS = ROOT / "alembic" / "versions"
CLI = ROOT / ".venv" / "bin" / "ophelia-db"
CHAIN = Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI))
HEAD = CHAIN.head

_built: dict[int, References] = {}


def reference_cache(cluster: LocalCluster) -> Path:
    return cluster.state_dir / "references"


@pytest.fixture(scope="session")
def references(pg_cluster: LocalCluster) -> References:
    """The shipped chain's reference snapshots, built once per test session (and cached on disk)."""
    if pg_cluster.port not in _built:
        _built[pg_cluster.port] = build_references(
            CHAIN, scratch_url=pg_cluster.url("postgres"), cache_dir=reference_cache(pg_cluster)
        )
    return _built[pg_cluster.port]


def trust_fleet(directory: Path, cluster: LocalCluster, hub: str, instances: dict[str, str]) -> Path:
    """A fleet.toml whose [local] table is the session cluster, so references come from its cache."""
    local = f'\n[local]\nport = {cluster.port}\nstate_dir = "{cluster.state_dir}"\n'
    return write_fleet(directory, hub, instances, extra=local)


def rows(url: str, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def execute(url: str, statement: str, params: Sequence[Any] | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def pg_dump(url: str) -> str:
    """The whole database, schema and rows, as pg_dump prints it: equal dumps, untouched database."""
    done = subprocess.run(
        [str(find_bin_dir() / "pg_dump"), "--no-password", "--dbname", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # pg_dump >= 15.14 wraps its output in \restrict/\unrestrict with a random key.
    lines = done.stdout.splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(("\\restrict", "\\unrestrict")))


def paste_offline_sql(url: str, to: str, chain: Chain = CHAIN) -> None:
    """Build a database as operators did: the chain's offline SQL, without any bookkeeping."""
    text = runner.offline_sql(None, to=to, chain=chain)
    kept = [s.text for s in statements(text) if not s.is_bookkeeping]
    bookkeeping = ("INTO public.alembic_version", "PERFORM public.register_migration")
    assert not any(mark in s for s in kept for mark in bookkeeping)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("\n".join(kept))


def extra_chain(directory: Path, revision_body: str, name: str = "0005_trust.py") -> tuple[str, Path]:
    """The shipped chain plus one revision written by the test; (version_locations, its file)."""
    folder = directory / "chain"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(revision_body, encoding="utf-8")
    return os.pathsep.join([str(SHIPPED_VERSIONS), str(folder)]), path


def chain_at(locations: str) -> Chain:
    return Chain.load(ChainSpec(alembic_ini=ALEMBIC_INI, version_locations=locations))


def cli(
    *args: str, fleet: Path | None = None, locations: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ophelia-db`` as a user would (a fresh process reads the chain anew)."""
    env: Mapping[str, str] = {k: v for k, v in os.environ.items() if not k.startswith("OPHELIA_")}
    env = {**env, **({"OPHELIA_FLEET": str(fleet)} if fleet else {})}
    if locations:
        env["OPHELIA_VERSION_LOCATIONS"] = locations
    return subprocess.run(
        [str(CLI), *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], code: int) -> None:
    """Bad input: the documented code and one ``error:`` line on stderr, never a traceback."""
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
