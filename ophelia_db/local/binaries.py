"""Where the PostgreSQL server binaries are, and a free port for a server to listen on."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

from ophelia_db.errors import ClusterError
from ophelia_db.settings import environment_settings

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
MISSING_BINARIES = (
    "no PostgreSQL server binaries found (initdb, pg_ctl, postgres); install the server "
    "package, e.g. `apt install postgresql-15`, or set OPHELIA_PG_BIN to their directory"
)


def _holds_server(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_BINARIES)


def find_bin_dir() -> Path:
    """Return the directory holding initdb, pg_ctl and postgres."""
    override = environment_settings().pg_bin
    if override:
        if _holds_server(Path(override)):
            return Path(override)
        raise ClusterError(f"{MISSING_BINARIES} (OPHELIA_PG_BIN={override} holds none)")
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))

    def major(path: Path) -> tuple[int, ...]:
        version = path.parent.name
        return tuple(int(part) for part in version.split(".") if part.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    candidates.append(Path("/usr/local/pgsql/bin"))
    for candidate in candidates:
        if _holds_server(candidate):
            return candidate
    raise ClusterError(MISSING_BINARIES)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
