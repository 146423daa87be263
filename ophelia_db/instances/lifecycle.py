"""The instance lifecycle as the hub sees it, and ``doctor``.

This module owns the hub registry's ``status`` column (``archive``,
``suspend``, ``activate``), the ``instances`` listing that puts fleet.toml
and the registry side by side and flags what only one of them knows, and
``doctor``: the checks that look at an instance the way the Ophelia app does,
through the ``anon`` role (get_schema_version(), the public vault keys, no
secret, the hub resolving the subdomain), plus whether it is at head.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ophelia_db.errors import ConfigError, ExitCode, OpheliaError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import Connection, connect, describe_error, sql_identifier
from ophelia_db.instances.vault import APP_PUBLIC_KEYS
from ophelia_db.results import Record
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.state import classify, read_state

Status = Literal["pending", "active", "suspended", "archived"]
API_ROLES = ("anon", "authenticated", "service_role")


def query_as(conn: Connection, role: str, query: str, params: Sequence[Any] | None = None) -> list[Any]:
    """Run one read as an API role (``SET LOCAL ROLE``, as PostgREST does), then roll back.

    ``conn`` must be in autocommit mode, so that the role ends with the block.
    """
    if role not in API_ROLES:
        raise ValueError(f"not an API role: {role}")
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL ROLE {sql_identifier(role)}")  # type: ignore[call-overload]
        return conn.execute(query, params).fetchall()  # type: ignore[call-overload]


def _registry(conn: Connection, hub: Target) -> None:
    row = conn.execute("SELECT to_regclass('public.instance_registry') IS NOT NULL").fetchone()
    if not (row and row[0]):
        raise ConfigError(
            f"the hub '{hub.name}' has no instance_registry table; "
            f"run `ophelia-db upgrade --instance {hub.name}` first"
        )


# --- archive, suspend, activate -----------------------------------------------------------------


@dataclass(frozen=True)
class StatusChange(Record):
    json_extra: ClassVar[tuple[str, ...]] = ("changed",)

    name: str
    previous: str | None
    status: str

    @property
    def changed(self) -> bool:
        return self.previous != self.status


def set_status(fleet: Fleet, name: str, status: Status) -> StatusChange:
    """Set an instance's status in the hub registry (a fleet.toml instance not yet there is added)."""
    if name == fleet.hub.name:
        raise ConfigError(f"'{name}' is the hub; its status cannot change")
    with connect(fleet.hub, autocommit=True) as conn:
        _registry(conn, fleet.hub)
        with conn.transaction():
            row = conn.execute(
                "SELECT status FROM public.instance_registry WHERE subdomain = %s FOR UPDATE", (name,)
            ).fetchone()
            if row is None:
                target = fleet.instances.get(name)
                if target is None:
                    known = [*fleet.instances, *_registered(conn)]
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    raise ConfigError(
                        f"unknown instance '{name}': not in {fleet.path} nor in the hub registry{hint}"
                    )
                conn.execute(
                    "INSERT INTO public.instance_registry "
                    "(subdomain, community_name, community_type, status) VALUES (%s, %s, %s, %s)",
                    (name, target.community_name, target.community_type, status),
                )
                return StatusChange(name, None, status)
            if row[0] != status:
                conn.execute(
                    "UPDATE public.instance_registry SET status = %s WHERE subdomain = %s", (status, name)
                )
            return StatusChange(name, row[0], status)


def _registered(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT subdomain FROM public.instance_registry").fetchall()]


# --- instances ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member(Record):
    """One line of ``ophelia-db instances``: what fleet.toml and the hub registry say about a name."""

    json_extra: ClassVar[tuple[str, ...]] = ("flag",)

    name: str
    role: str
    community_name: str | None
    community_type: str | None
    status: str | None
    schema_version: str | None
    last_run_status: str | None
    in_fleet: bool
    in_registry: bool

    @property
    def flag(self) -> str | None:
        if not self.in_registry:
            return "in fleet.toml, not in the registry"
        if not self.in_fleet:
            return "in the registry, not in fleet.toml"
        return None


@dataclass(frozen=True)
class InstancesReport(Record):
    json_names: ClassVar[dict[str, str]] = {"members": "instances"}

    hub: str
    members: tuple[Member, ...]

    def exit_code(self, check: bool = False) -> int:
        """With ``check``, 1 when fleet.toml and the registry disagree."""
        return ExitCode.NOT_AT_HEAD if check and any(m.flag for m in self.members) else ExitCode.OK


_REGISTRY_ROWS = """SELECT subdomain, community_name, community_type, status, schema_version,
  last_run_status, is_hub FROM public.instance_registry ORDER BY is_hub DESC, subdomain"""


def instances(fleet: Fleet) -> InstancesReport:
    """The fleet as the hub registry sees it, each name flagged if only one side knows it."""
    with connect(fleet.hub, autocommit=True) as conn:
        _registry(conn, fleet.hub)
        rows = {row[0]: row for row in conn.execute(_REGISTRY_ROWS).fetchall()}
    members = []
    for target in fleet.members:
        row = rows.pop(target.name, None)
        members.append(
            Member(
                name=target.name,
                role=target.role,
                community_name=row[1] if row else target.community_name,
                community_type=row[2] if row else target.community_type,
                status=row[3] if row else None,
                schema_version=row[4] if row else None,
                last_run_status=row[5] if row else None,
                in_fleet=True,
                in_registry=row is not None,
            )
        )
    for name, community, kind, status, version, last, is_hub in rows.values():
        role = "hub" if is_hub else "instance"
        members.append(Member(name, role, community, kind, status, version, last, False, True))
    return InstancesReport(fleet.hub.name, tuple(members))


# --- doctor ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check(Record):
    json_names: ClassVar[dict[str, str]] = {"name": "check"}

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DoctorReport(Record):
    json_names: ClassVar[dict[str, str]] = {"name": "instance"}

    name: str
    checks: tuple[Check, ...]
    exit_code: int


_PROBE_KEY = "OPHELIA_DOCTOR_PROBE"


def _check_version(conn: Connection) -> str:
    rows = query_as(conn, "anon", "SELECT current_version, migrations_count FROM public.get_schema_version()")
    version, count = rows[0]
    if version is None:
        raise ValueError("get_schema_version() answers, but no version is recorded")
    return f"{version} ({count} migrations)"


def _check_public_keys(conn: Connection, name: str) -> str:
    rows = query_as(
        conn,
        "anon",
        "SELECT key, value FROM public.instance_config WHERE key = ANY(%s)",
        [list(APP_PUBLIC_KEYS)],
    )
    seen = dict(rows)
    missing = [key for key in APP_PUBLIC_KEYS if key not in seen]
    if missing:
        raise ValueError(f"anon cannot read {', '.join(missing)} (missing, secret or not public)")
    if seen["SUBDOMAIN"] != name:
        raise ValueError(f"SUBDOMAIN says {seen['SUBDOMAIN']!r}, not {name!r}")
    return f"{', '.join(APP_PUBLIC_KEYS)} readable"


def _check_no_secret(conn: Connection) -> str:
    # A secret row is added for the check, in a transaction that is rolled back, so the
    # check means something even on a vault that holds no secret yet.
    seen: dict[str, int] = {}
    with conn.transaction(force_rollback=True):
        conn.execute(
            "INSERT INTO public.instance_config (key, value, is_secret, category) "
            "VALUES (%s, '\"probe\"', true, 'doctor') ON CONFLICT (key) DO NOTHING",
            (_PROBE_KEY,),
        )
        (total,) = conn.execute("SELECT count(*) FROM public.instance_config WHERE is_secret").fetchone() or (
            0,
        )
        for role in ("anon", "authenticated"):
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {sql_identifier(role)}")  # type: ignore[call-overload]
                row = conn.execute("SELECT count(*) FROM public.instance_config WHERE is_secret").fetchone()
                seen[role] = row[0] if row else 0
                conn.execute("RESET ROLE")
    leaking = [role for role, count in seen.items() if count]
    if leaking:
        raise ValueError(f"{' and '.join(leaking)} can read secret rows")
    return f"anon and authenticated read 0 of {total} secret row(s)"


def _check_hub(fleet: Fleet, name: str, vault_url: str | None) -> str:
    with connect(fleet.hub, autocommit=True) as conn:
        rows = query_as(
            conn, "anon", "SELECT supabase_url FROM public.instance_registry WHERE subdomain = %s", [name]
        )
        if not rows:
            found = conn.execute("SELECT status FROM public.instance_registry WHERE subdomain = %s", (name,))
            status = found.fetchone()
            why = f"it is {status[0]}" if status else "it is not registered"
            raise ValueError(f"the hub '{fleet.hub.name}' does not resolve '{name}' for anon: {why}")
    (url,) = rows[0]
    if not url:
        raise ValueError(f"the hub's row for '{name}' has no supabase_url")
    if vault_url and vault_url != url:
        raise ValueError(f"the hub points to {url}, the instance's vault says {vault_url}")
    return f"'{name}' -> {url}"


def _check_head(conn: Connection, chain: Chain) -> str:
    verdict = classify(read_state(conn), chain)
    if verdict.state != "up-to-date":
        raise ValueError(f"{verdict.state}" + (f": {verdict.problem}" if verdict.problem else ""))
    return f"at head {chain.head}"


def doctor(fleet: Fleet, target: Target, *, chain: Chain | None = None) -> DoctorReport:
    """Check what the Ophelia app relies on, one check per line; exit 8 if unreachable, else 1 on failure."""
    chain = chain or chain_for()
    try:
        conn = connect(target, autocommit=True)
    except OpheliaError as error:
        return DoctorReport(target.name, (Check("reachable", False, error.message),), error.exit_code)
    checks = [Check("reachable", True, target.display_url)]
    with conn:
        row = (
            conn.execute(
                "SELECT value #>> '{}' FROM public.instance_config WHERE key = 'SUPABASE_URL'"
            ).fetchone()
            if _has_vault(conn)
            else None
        )
        vault_url = row[0] if row else None
        steps = [
            ("anon calls get_schema_version()", lambda: _check_version(conn)),
            ("anon reads the public config keys", lambda: _check_public_keys(conn, target.name)),
            ("anon cannot read a secret", lambda: _check_no_secret(conn)),
            (f"hub resolves '{target.name}'", lambda: _check_hub(fleet, target.name, vault_url)),
            ("at head", lambda: _check_head(conn, chain)),
        ]
        for label, check in steps:
            try:
                checks.append(Check(label, True, check()))
            except ValueError as exc:
                checks.append(Check(label, False, str(exc)))
            except OpheliaError as error:
                checks.append(Check(label, False, error.message))
            except Exception as exc:
                if getattr(exc, "sqlstate", None) is None:
                    raise
                checks.append(Check(label, False, describe_error(exc)))
    failed = any(not c.ok for c in checks)
    return DoctorReport(target.name, tuple(checks), ExitCode.NOT_AT_HEAD if failed else ExitCode.OK)


def _has_vault(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('public.instance_config') IS NOT NULL").fetchone()
    return bool(row and row[0])
