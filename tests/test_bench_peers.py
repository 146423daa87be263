"""The benchmark's peers: lean commands, so that the ratios against them are honest.

Every figure of ``bench/fleet_bench.py`` is a whole command, start-up included.
A peer that imported the benchmark's own machinery (the embedded cluster, and
pydantic-settings behind it) paid ≈ 80 ms ophelia-db's ratios then hid.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from tests.helpers import HEAD

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers.py"
# What a peer has no use for: ophelia-db itself, and the libraries it starts with.
NOT_FOR_PEERS = ("ophelia_db", "pydantic", "pydantic_settings", "typer", "alembic", "sqlalchemy")


def test_the_peers_script_imports_nothing_of_ophelia_db_nor_its_start_up_libraries():
    probe = (
        f"import runpy, sys; sys.argv = [{str(PEERS)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(PEERS)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({NOT_FOR_PEERS!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_batch_peer_brings_empty_databases_to_head_and_select1_reads_them(tmp_path, make_database):
    from bench.peers import offline_sql  # Alembic renders it: only this test needs it

    urls = [make_database("peer") for _ in range(3)]
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(urls))
    sql = tmp_path / "chain.sql"
    sql.write_text(offline_sql())
    for kind in ("batch", "select1"):
        done = subprocess.run(
            [sys.executable, str(PEERS), kind, "--urls", str(listing), "--sql", str(sql)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    for url in urls:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (HEAD,)
