"""Reference schemas: what each revision of the chain leaves behind, built on a scratch database.

This module owns building one catalog snapshot per revision (plus ``base``,
the empty database) by applying the chain revision by revision, through the
real ``alembic/env.py``, to a throwaway database: on the fleet's embedded
local cluster (started if needed) or on the server of an explicit
``--scratch-url``, where a database ``ophelia_scratch_<random>`` is created
and dropped afterwards. Snapshots are cached as JSON under the fleet's state
directory, keyed by the revision ids and checksums up to each revision, so a
chain that has not changed is never applied twice. ``adopt`` and ``drift``
compare live schemas with these references; nothing here touches a fleet
database.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet.catalog import CATALOG_FORMAT, Snapshot, snapshot
from ophelia_db.fleet.config import Fleet, Target, Timeouts
from ophelia_db.fleet.connections import connect, engine_for, sql_identifier, sqlstate_of
from ophelia_db.fleet.urls import parse
from ophelia_db.local.commands import cluster_of
from ophelia_db.redaction import register_secret
from ophelia_db.run import driver
from ophelia_db.run.chain import Chain

BASE = "base"
_SCRATCH_PREFIX = "ophelia_scratch_"


@dataclass(frozen=True)
class References:
    """Reference snapshots by revision id (``"base"`` for the empty database), in chain order."""

    snapshots: Mapping[str, Snapshot]
    order: tuple[str, ...]

    def of(self, revision: str | None) -> Snapshot:
        return self.snapshots[revision or BASE]


def build_references(
    chain: Chain,
    *,
    fleet: Fleet | None = None,
    scratch_url: str | None = None,
    cache_dir: Path | None = None,
) -> References:
    """Return the reference snapshot of every revision, from the cache or a scratch database."""
    order = (BASE, *(rev.id for rev in chain.revisions))
    keys = _cache_keys(chain)
    if cache_dir is None and fleet is not None and fleet.local is not None:
        cache_dir = fleet.local.state_dir / "references"
    cached = _load_cache(cache_dir, keys) if cache_dir else {}
    if len(cached) == len(order):
        return References(snapshots=cached, order=order)
    server = _scratch_server(fleet, scratch_url)
    built = _build(chain, server)
    if cache_dir:
        _save_cache(cache_dir, keys, built)
    return References(snapshots=built, order=order)


def _cache_keys(chain: Chain) -> dict[str, str]:
    keys = {BASE: hashlib.sha256(f"format {CATALOG_FORMAT}|base".encode()).hexdigest()}
    prefix = f"format {CATALOG_FORMAT}"
    for rev in chain.revisions:
        prefix += f"|{rev.id}:{rev.checksum}"
        keys[rev.id] = hashlib.sha256(prefix.encode()).hexdigest()
    return keys


def _cache_file(cache_dir: Path, revision: str, key: str) -> Path:
    return cache_dir / f"{revision}-{key[:24]}.json"


def _load_cache(cache_dir: Path, keys: dict[str, str]) -> dict[str, Snapshot]:
    found: dict[str, Snapshot] = {}
    for revision, key in keys.items():
        path = _cache_file(cache_dir, revision, key)
        try:
            loaded = Snapshot.from_record(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError):
            continue
        if loaded is not None:
            found[revision] = loaded
    return found


def _save_cache(cache_dir: Path, keys: dict[str, str], built: Mapping[str, Snapshot]) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for revision, shot in built.items():
            path = _cache_file(cache_dir, revision, keys[revision])
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(shot.as_record()), encoding="utf-8")
            partial.replace(path)
    except OSError:
        # A cache that cannot be written only costs time on the next run.
        return


def _scratch_target(url: str, source: str, timeouts: Timeouts) -> Target:
    return Target(
        name="scratch",
        role="instance",
        community_name="scratch",
        community_type=None,
        tags=(),
        url=SecretStr(url),
        url_source=source,
        timeouts=timeouts,
    )


def _scratch_server(fleet: Fleet | None, scratch_url: str | None) -> Target:
    """The server a scratch database is created on, as a target for its maintenance database."""
    if scratch_url:
        register_secret(parse(scratch_url).password)
        return _scratch_target(scratch_url, "--scratch-url", Timeouts())
    if fleet is None or fleet.local is None:
        raise ConfigError(
            "building reference schemas needs a scratch PostgreSQL server: pass --scratch-url URL "
            "(a server where a temporary database may be created) or add a [local] table to fleet.toml"
        )
    cluster = cluster_of(fleet)
    cluster.start()
    return _scratch_target(cluster.url("postgres"), "the embedded local cluster", Timeouts())


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead (URL or key=value conninfo)."""
    if "://" in url:
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    return f"{url} dbname={dbname}"


def _build(chain: Chain, server: Target) -> dict[str, Snapshot]:
    name = f"{_SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    with connect(server, autocommit=True) as admin:
        try:
            admin.execute(f"CREATE DATABASE {sql_identifier(name)}")
        except Exception as exc:
            if sqlstate_of(exc) is None:
                raise
            raise ConfigError(
                f"cannot create a scratch database on {server.display_url} ({server.url_source}): "
                f"{str(exc).strip().splitlines()[0]}; the role needs CREATEDB"
            ) from None
    scratch = _scratch_target(with_dbname(server.dsn(), name), server.url_source, server.timeouts)
    try:
        return _apply_and_snapshot(chain, scratch)
    finally:
        with connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {sql_identifier(name)} WITH (FORCE)")


def _apply_and_snapshot(chain: Chain, scratch: Target) -> dict[str, Snapshot]:
    built: dict[str, Snapshot] = {}
    with connect(scratch, autocommit=True) as conn:
        built[BASE] = snapshot(conn)
    engine = engine_for(scratch)
    try:
        with engine.connect() as alembic_conn:
            for rev in chain.revisions:
                try:
                    driver.migrate(chain.spec, rev.id, connection=alembic_conn, hook=None, instance="scratch")
                except OpheliaError:
                    raise
                except Exception as exc:
                    raise ConfigError(
                        f"revision {rev.id} ({rev.path.name}) failed on the scratch database while "
                        f"building reference schemas: {str(exc).strip().splitlines()[0]}"
                    ) from None
                with connect(scratch, autocommit=True) as conn:
                    built[rev.id] = snapshot(conn)
    finally:
        engine.dispose()
    return built
