"""The embedded local PostgreSQL cluster that ophelia-db starts by itself.

This module owns the throwaway development cluster behind the repository's
default fleet.toml: finding the server binaries, ``initdb`` with our
configuration, starting and stopping it safely from concurrent processes,
creating its databases, and its connection URLs. Its state lives in one
directory (normally the git-ignored ``.ophelia/``): a lock file, the server log
and, unless the ``postgres`` OS user cannot reach it, the data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from ophelia_db.errors import ClusterError
from ophelia_db.fleet.connections import APPLICATION_NAME
from ophelia_db.local.binaries import find_bin_dir

START_TIMEOUT_S = 30
_LOCATION_FILE = "cluster.json"
_LOG_FILE = "postgres.log"
_LOCK_FILE = "cluster.lock"
_CONF_FILE = "ophelia.conf"
# --no-sync: the cluster is disposable, so waiting for the disk buys nothing.
_INITDB_OPTIONS = (
    *("-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"),
    *("--encoding=UTF8", "--no-sync"),
)


@dataclass(frozen=True)
class ClusterStatus:
    """What a look at the state directory tells about the cluster."""

    state_dir: Path
    data_dir: Path
    host: str
    port: int
    initialized: bool
    running: bool
    pid: int | None
    version: str | None


def _server_user() -> pwd.struct_passwd | None:
    """The OS user the server runs as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "PostgreSQL refuses to run as root and there is no `postgres` OS user to run it as; "
            "create one (e.g. `useradd --system postgres`) or run as an ordinary user"
        ) from None


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in [path, *path.parents]:
        if not directory.exists():
            continue
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class LocalCluster:
    """One local PostgreSQL cluster whose state lives in ``state_dir``."""

    def __init__(self, state_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.host = host
        self.log_path = self.state_dir / _LOG_FILE
        self._bin_dir: Path | None = None
        self._locate()

    def _locate(self) -> None:
        self.base_dir = self._locate_base()
        self.data_dir = self.base_dir / "pgdata"

    def _locate_base(self) -> Path:
        """Where the data directory lives: the state dir, or a fallback postgres can reach."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            return Path(json.loads((self.state_dir / _LOCATION_FILE).read_text())["base_dir"])
        try:
            user = _server_user()
        except ClusterError:
            return self.state_dir  # start() will say what is missing.
        if user is None or _can_traverse(self.state_dir, user):
            return self.state_dir
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"ophelia-db-{digest}"

    def url(self, dbname: str, user: str = "postgres") -> str:
        """Return a libpq URL for ``dbname`` on this cluster."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{quote(user, safe='')}@{host}:{self.port}/{quote(dbname, safe='')}"

    def _postmaster(self) -> tuple[int, int | None, str] | None:
        """Return (pid, port, status) from postmaster.pid when that process is alive."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        with contextlib.suppress(OSError):
            # A stale pid file may name a reused pid, or a zombie nobody reaped.
            proc_stat = Path(f"/proc/{pid}/stat").read_text()
            if "(postgres)" not in proc_stat or proc_stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        state = lines[7].strip() if len(lines) > 7 else ""
        return pid, port, state

    def status(self) -> ClusterStatus:
        """Describe the cluster without starting anything."""
        postmaster = self._postmaster()
        try:
            version: str | None = (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            version = None
        return ClusterStatus(
            state_dir=self.state_dir,
            data_dir=self.data_dir,
            host=self.host,
            port=(postmaster[1] or self.port) if postmaster else self.port,
            initialized=version is not None,
            running=postmaster is not None,
            pid=postmaster[0] if postmaster else None,
            version=version,
        )

    def _ready(self) -> bool:
        postmaster = self._postmaster()
        return postmaster is not None and postmaster[2] == "ready"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _run(self, args: list[str], timeout: float) -> int:
        """Run a server binary as the server user, its output appended to the log."""
        user = _server_user()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # The log is opened here rather than by the server so that it may live in a
        # directory the postgres user cannot reach; the server inherits the descriptor.
        with open(self.log_path, "ab") as log:
            try:
                return subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd="/",
                    env=env,
                    timeout=timeout,
                    user=user.pw_uid if user else None,
                    group=user.pw_gid if user else None,
                    extra_groups=[] if user else None,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                return -1

    def _failure(self, what: str) -> ClusterError:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        detail = "\n".join(f"  {line}" for line in tail)
        return ClusterError(f"{what}; server log {self.log_path}:\n{detail}")

    def _prepare_dir(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = _server_user()
        owners = {os.geteuid(), user.pw_uid if user else os.geteuid()}
        # The fallback lives in world-writable /var/tmp: never adopt someone else's path.
        if directory.is_symlink() or directory.lstat().st_uid not in owners:
            raise ClusterError(f"{directory} exists and is not ours; remove it and retry")
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)

    def _bin(self, name: str) -> str:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return str(self._bin_dir / name)

    def _pg_ctl(self, action: str, *options: str) -> int:
        wait = ("-w", "-t", str(START_TIMEOUT_S))
        args = [self._bin("pg_ctl"), action, "-D", str(self.data_dir), *wait, *options]
        return self._run(args, timeout=START_TIMEOUT_S + 15)

    def _initdb(self) -> None:
        if self.base_dir != self.state_dir:
            self._prepare_dir(self.base_dir)
            (self.state_dir / _LOCATION_FILE).write_text(json.dumps({"base_dir": str(self.base_dir)}) + "\n")
        initdb = [self._bin("initdb"), "-D", str(self.data_dir), *_INITDB_OPTIONS]
        for locale in ("C.UTF-8", "C"):
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
            self._prepare_dir(self.data_dir)
            code = self._run([*initdb, f"--locale={locale}"], timeout=180)
            if code == 0:
                break
        else:
            raise self._failure(f"initdb failed for {self.data_dir}")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude = '{_CONF_FILE}'\n")
        hba = (
            "# Written by ophelia-db: the superuser is trusted on loopback, everyone else\n"
            "# needs a password, so tests can create roles and see authentication fail.\n"
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all postgres ::1/128 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        (self.data_dir / "pg_hba.conf").write_text(hba)

    def _write_config(self) -> None:
        """(Re)write our settings so that the port given to the constructor wins."""
        text = (
            "# Written by ophelia-db on every start; edits here are lost.\n"
            f"listen_addresses = '{self.host}'\n"
            f"port = {self.port}\n"
            # No Unix socket: nothing then depends on /var/run/postgresql or on the
            # 107-byte socket path limit a deep checkout would exceed.
            "unix_socket_directories = ''\n"
            "max_connections = 300\n"
            "password_encryption = 'scram-sha-256'\n"
            # A throwaway development cluster: losing it in a power cut is acceptable,
            # and skipping disk flushes makes migrations and tests several times faster.
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
        )
        path = self.data_dir / _CONF_FILE
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        path.write_text(text)
        user = _server_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> bool:
        """Initialise if needed and start; False when it was already running."""
        if self._ready():
            return False
        with self._locked():
            if self._ready():
                return False
            if self._postmaster() is not None:
                # Someone started it outside our lock (or it is recovering): wait for it.
                deadline = time.monotonic() + START_TIMEOUT_S
                while not self._ready():
                    if time.monotonic() > deadline or self._postmaster() is None:
                        raise self._failure("the running server never became ready")
                    time.sleep(0.1)
                return False
            if not (self.data_dir / "PG_VERSION").exists():
                # The state dir may only exist now, so where postgres can live is known only now.
                self._locate()
                self._initdb()
            self._write_config()
            self._refuse_taken_port()
            code = self._pg_ctl("start")
            if code != 0:
                raise self._failure(f"PostgreSQL did not start on {self.host}:{self.port}")
            return True

    def _refuse_taken_port(self) -> None:
        """Say plainly that the port is taken, rather than quoting the server's log."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError:
                raise ClusterError(
                    f"port {self.port} on {self.host} is already in use (another clone's embedded "
                    "cluster, or another server); stop it, or choose another port in fleet.toml's "
                    "[local] table and in the URLs that use it"
                ) from None

    def stop(self) -> bool:
        """Stop the server (fast shutdown); False when it was not running."""
        with self._locked():
            if self._postmaster() is None:
                return False
            code = self._pg_ctl("stop", "-m", "fast")
            if code != 0 and self._postmaster() is not None:
                raise self._failure("PostgreSQL did not stop")
            return True

    def destroy(self) -> None:
        """Stop the server and delete its data (the log is kept)."""
        self.stop()
        with self._locked():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.base_dir != self.state_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                (self.state_dir / _LOCATION_FILE).unlink(missing_ok=True)

    def ensure_databases(self, names: Iterable[str]) -> list[str]:
        """Create the databases that do not exist yet; return the names created."""
        wanted = list(dict.fromkeys(names))
        created: list[str] = []
        try:
            with psycopg.connect(
                self.url("postgres"),
                autocommit=True,
                connect_timeout=10,
                application_name=APPLICATION_NAME,
                prepare_threshold=None,
            ) as conn:
                rows = conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (wanted,)
                ).fetchall()
                existing = {row[0] for row in rows}
                for name in wanted:
                    if name in existing:
                        continue
                    statement = sql.SQL("CREATE DATABASE {} OWNER postgres").format(sql.Identifier(name))
                    try:
                        conn.execute(statement)
                    except psycopg.errors.DuplicateDatabase:
                        continue  # Another process created it between our look and now.
                    created.append(name)
        except psycopg.OperationalError as exc:
            where = self.url("postgres")
            raise ClusterError(f"cannot reach the local cluster at {where}: {exc}") from exc
        return created
