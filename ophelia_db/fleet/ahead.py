"""The connections a command opens while it loads: its databases' start-ups overlap the imports.

`status` and `upgrade` begin by connecting to the databases they read: a
start-up of two round trips each (about six with TLS and SCRAM), which waited
for typer, pydantic and the run's modules to load (0.2-0.3 s). The command
line calls ``start`` before it imports them: this module needs only the
standard library and psycopg, reads fleet.toml on its own and opens those
connections in the background (``connections.connect_ahead``). It decides
nothing: the fleet file is validated by ``config`` as ever, ``connect`` takes
a connection opened here only when it is exactly the one it would open (the
same connection string and timeout), and what nobody takes is closed at exit.
A file this reading cannot follow (a URL from ``.env``, a value it does not
parse) only means fewer connections ahead.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ophelia_db.durations import parse_duration
from ophelia_db.fleet.connections import connect_ahead, connect_timeout_of
from ophelia_db.fleet.urls import parse, transaction_pooler_reason, url_has_password, url_problem

# The defaults of fleet/config.py's Defaults, which this module must not import (pydantic).
_CONNECT_TIMEOUT = 10.0
_PER_HOST = 32
# At most as many as a run keeps open for its migrations (run/session.py: KEPT_LIMIT): a fleet
# of thousands must not open thousands of sockets before its first look.
_LIMIT = 256


def start(
    fleet: str | None, instances: Sequence[str] | None, hub: int, environ: Mapping[str, str] = os.environ
) -> None:
    """Open ``hub`` connections to the hub and one to each of ``instances`` (``None``: every one in
    the file), at most ``per_host`` to one server; ``fleet``: the path ``--fleet`` gave."""
    path = Path(fleet or environ.get("OPHELIA_FLEET") or "fleet.toml").expanduser()
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
        defaults = data.get("defaults", {})
        timeout = defaults.get("connect_timeout", _CONNECT_TIMEOUT)
        per_host = defaults.get("per_host", _PER_HOST)
        endpoints = [data["hub"]] * hub + [
            spec for name, spec in data.get("instances", {}).items() if instances is None or name in instances
        ]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, AttributeError, TypeError):
        return  # the fleet file's loading says what is wrong with it
    if not isinstance(per_host, int) or per_host < 1:
        return
    connect_ahead(list(itertools.islice(databases(endpoints, timeout, per_host, environ), _LIMIT)))


def databases(
    endpoints: list[Any], default_timeout: Any, per_host: int, environ: Mapping[str, str]
) -> Iterator[tuple[str, int]]:
    """Each endpoint's ``(dsn, connect_timeout)`` as ``connect`` will open it, in order, leaving
    out what cannot be read here and a server's endpoints past its ``per_host``."""
    per_server: Counter[tuple[object, object]] = Counter()
    for spec in endpoints:
        try:
            dsn = spec.get("url") or environ.get(spec.get("url_env") or "", "")
            timeout = connect_timeout_of(parse_duration(spec.get("connect_timeout", default_timeout)))
            server = parse(dsn).effective_endpoints()[0] if dsn else None
        except Exception:  # anything unreadable is left to the fleet file's loading
            continue
        # Nothing the loading refuses is connected to: a password in fleet.toml, a pooler's port.
        refused = (
            url_problem(dsn) or (spec.get("url") and url_has_password(dsn)) or transaction_pooler_reason(dsn)
        )
        if server is None or refused or per_server[server] >= per_host:
            continue
        per_server[server] += 1
        yield dsn, timeout
