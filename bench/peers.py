"""The peers ophelia-db is measured against, each run as a command of its own.

A peer's figure includes its start-up, as ophelia-db's does, so this script
imports only what the peers need: the standard library and psycopg (Alembic
only for the plain-Alembic peers, inside them). Importing the benchmark's own
machinery here (the embedded cluster, pydantic-settings behind it) would add
≈ 80 ms to every peer and flatter every ratio against it; with the forkserver,
plain Alembic's workers would pay it again each.

Usage: python bench/peers.py KIND --urls FILE [--sql FILE], KIND one of
select1, batch, psql, plain4, plain16.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PLAIN_ENV = ROOT / "bench" / "plain_alembic"
VERSIONS = ROOT / "alembic" / "versions"
PARALLEL = 16


def plain_config(url: str | None = None, buffer: io.StringIO | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(PLAIN_ENV))
    # Another chain (bench/online_bench.py) comes through the environment, os.pathsep-separated.
    config.set_main_option("version_locations", os.environ.get("BENCH_VERSION_LOCATIONS") or str(VERSIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = url
    config.attributes["output_buffer"] = buffer
    return config


def plain_upgrade(url: str) -> None:
    """One database, plain Alembic in-process (runs in a pool worker)."""
    from alembic import command

    command.upgrade(plain_config(url.replace("postgresql://", "postgresql+psycopg://", 1)), "head")


def plain_pool(urls: Sequence[str], workers: int) -> None:
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver")) as pool:
        list(pool.map(plain_upgrade, urls, chunksize=1))


def offline_sql() -> str:
    """The chain's offline SQL, rendered by Alembic."""
    from alembic import command

    buffer = io.StringIO()
    command.upgrade(plain_config(buffer=buffer), "head", sql=True)
    return buffer.getvalue()


def threaded(urls: Sequence[str], action: Callable[[str], object]) -> None:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(action, urls))


def one_batch(sql: str) -> Callable[[str], None]:
    def send(url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[call-overload]

    return send


def with_psql(path: Path) -> Callable[[str], None]:
    # psql -1 gives the file one transaction: the per-revision BEGIN/COMMIT lines go.
    single = path.with_suffix(".single.sql")
    lines = path.read_text().splitlines(keepends=True)
    single.write_text("".join(line for line in lines if line.strip() not in ("BEGIN;", "COMMIT;")))

    def send(url: str) -> None:
        subprocess.run(
            ["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-f", str(single), url],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    return send


def select_one(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()


def run_peer(kind: str, urls: list[str], sql_file: Path | None) -> None:
    if kind == "select1":
        threaded(urls, select_one)
    elif kind in ("plain4", "plain16"):
        plain_pool(urls, int(kind.removeprefix("plain")))
    elif kind == "psql" and sql_file is not None:
        threaded(urls, with_psql(sql_file))
    elif kind == "batch" and sql_file is not None:
        threaded(urls, one_batch(sql_file.read_text()))
    else:
        raise SystemExit(f"unknown peer {kind!r} (or --sql missing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["select1", "batch", "psql", "plain4", "plain16"])
    parser.add_argument("--urls", type=Path, required=True, help="one URL per line")
    parser.add_argument("--sql", type=Path, help="the offline SQL (batch, psql)")
    args = parser.parse_args()
    run_peer(args.kind, args.urls.read_text().split(), args.sql)


if __name__ == "__main__":
    main()
