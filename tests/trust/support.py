"""Helpers shared by the trust tests (validate, repair, adopt, drift, lint): real databases only.

Fleets written by ``trust_fleet`` carry a ``[local]`` table pointing at the
session cluster, so the CLI finds the reference cache the ``references``
fixture (``conftest.py``) filled instead of building the references again.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

import ophelia_db
from ophelia_db.local.binaries import find_bin_dir
from ophelia_db.local.cluster import LocalCluster
from ophelia_db.run.chain import Chain
from ophelia_db.run.script import statements
from tests.helpers import (  # noqa: F401
    ALEMBIC_INI,
    CHAIN,
    HEAD,
    ROOT,
    SHIPPED_VERSIONS,
    chain_at,
    execute,
    rows,
    write_fleet,
)


def reference_cache(cluster: LocalCluster) -> Path:
    return cluster.state_dir / "references"


def trust_fleet(directory: Path, cluster: LocalCluster, hub: str, instances: dict[str, str]) -> Path:
    """A fleet.toml whose [local] table is the session cluster, so references come from its cache."""
    local = f'\n[local]\nport = {cluster.port}\nstate_dir = "{cluster.state_dir}"\n'
    return write_fleet(directory, hub, instances, extra=local)


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
    text = ophelia_db.offline_sql(None, to=to, chain=chain)
    kept = [s.text for s in statements(text) if not s.is_bookkeeping]
    bookkeeping = ("INTO public.alembic_version", "PERFORM public.register_migration")
    assert not any(mark in s for s in kept for mark in bookkeeping)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("\n".join(kept))


def extra_chain(directory: Path, revision_body: str, name: str = "0105_trust.py") -> tuple[str, Path]:
    """The shipped chain plus one revision written by the test; (version_locations, its file)."""
    folder = directory / "chain"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(revision_body, encoding="utf-8")
    return os.pathsep.join([str(SHIPPED_VERSIONS), str(folder)]), path


def assert_one_error_line(done: subprocess.CompletedProcess[str], code: int) -> None:
    """Bad input: the documented code and one ``error:`` line on stderr, never a traceback."""
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
