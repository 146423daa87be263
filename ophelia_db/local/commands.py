"""The fleet's embedded local cluster: which databases live there, and its lifecycle.

This module owns the link between ``fleet.toml``'s ``[local]`` table and
``cluster.LocalCluster``: starting it creates every fleet database whose URL
points at it (so a fresh clone works with no set-up), and the messages the
``ophelia-db local ...`` commands show.
"""

from __future__ import annotations

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import Fleet
from ophelia_db.fleet.urls import parse
from ophelia_db.local.cluster import LocalCluster

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def cluster_of(fleet: Fleet) -> LocalCluster:
    if fleet.local is None:
        raise ConfigError(f"{fleet.path} has no [local] table, so there is no embedded cluster to manage")
    return LocalCluster(fleet.local.state_dir, fleet.local.port)


def local_databases(fleet: Fleet) -> list[str]:
    """Names of the fleet databases that live in the embedded cluster."""
    assert fleet.local is not None
    names = []
    for member in fleet.members:
        if member.url is None:
            continue
        parts = parse(member.url.get_secret_value())
        if (parts.host or "localhost") in _LOOPBACK and parts.port == fleet.local.port and parts.dbname:
            names.append(parts.dbname)
    return names


def start(fleet: Fleet) -> str:
    cluster = cluster_of(fleet)
    started = cluster.start()
    created = cluster.ensure_databases(local_databases(fleet))
    state = "started" if started else "already running"
    made = f"; created databases {', '.join(created)}" if created else ""
    return f"embedded cluster {state} on 127.0.0.1:{cluster.port} ({cluster.status().data_dir}){made}"


def stop(fleet: Fleet) -> str:
    cluster = cluster_of(fleet)
    return "embedded cluster stopped" if cluster.stop() else "embedded cluster was not running"


def describe(fleet: Fleet) -> tuple[str, bool]:
    status = cluster_of(fleet).status()
    if not status.initialized:
        return f"no embedded cluster yet in {status.state_dir}; run `ophelia-db local start`", False
    running = f"running (pid {status.pid})" if status.running else "stopped"
    version = f"PostgreSQL {status.version}, " if status.version else ""
    return (
        f"embedded cluster {running}: {version}127.0.0.1:{status.port}, data {status.data_dir}",
        status.running,
    )


def destroy(fleet: Fleet) -> str:
    cluster = cluster_of(fleet)
    where = fleet.local.state_dir if fleet.local else "?"
    if not cluster.status().initialized:
        return f"no embedded cluster in {where}: nothing to destroy"
    cluster.destroy()
    return f"embedded cluster in {where} destroyed"


def down_hint(fleet: Fleet) -> str | None:
    """A hint when the fleet's embedded cluster holds databases but is not running."""
    if fleet.local is None or not local_databases(fleet):
        return None
    status = cluster_of(fleet).status()
    if status.running:
        return None
    if not status.initialized:
        return "the embedded cluster does not exist yet: run `ophelia-db local start` (or `make demo`)"
    return "the embedded cluster is stopped: run `ophelia-db local start`"
