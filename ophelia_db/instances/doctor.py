"""`doctor`: an instance checked the way the app will use it, through the ``anon`` role.

The app reads its version, public vault keys and hub row through PostgREST
as ``anon``; ``doctor`` does the same reads (``SET LOCAL ROLE``, as PostgREST
does) and says, check by check, what the app will see: the version at head,
the public keys present, no secret readable, the hub resolving the
subdomain to the instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet import hub
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import Connection, connect, describe_error, sql_identifier, sqlstate_of
from ophelia_db.instances.seed import APP_PUBLIC_KEYS
from ophelia_db.results import Record
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.state import classify, read_state

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


class _Failed(ValueError):
    """A failed check whose fix is not its step's usual one."""

    def __init__(self, message: str, *, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def _check_hub(fleet: Fleet, name: str, vault_url: str | None) -> str:
    with connect(fleet.hub, autocommit=True) as conn:
        rows = query_as(conn, "anon", hub.SUPABASE_URL_SQL, [name])
        if not rows:
            found = hub.find(conn, name)
            why = f"it is {found[0]}" if found else "it is not registered"
            raise ValueError(f"the hub '{fleet.hub.name}' does not resolve '{name}' for anon: {why}")
    (url,) = rows[0]
    if not url:
        raise _Failed(
            f"the hub's row for '{name}' has no supabase_url",
            fix=f"ophelia-db provision --from instances/{name}.json --supabase-url URL --apply",
        )
    if vault_url and vault_url != url:
        raise ValueError(f"the hub points to {url}, the instance's vault says {vault_url}")
    return f"'{name}' -> {url}"


def _check_head(conn: Connection, chain: Chain, name: str) -> str:
    verdict = classify(read_state(conn), chain, name=name)
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
        name = target.name
        upgrade = f"ophelia-db upgrade --instance {name}"
        provision = f"ophelia-db provision --from instances/{name}.json --apply"
        # Each check, and the command that fixes it when it fails.
        steps = [
            ("anon calls get_schema_version()", lambda: _check_version(conn), upgrade),
            ("anon reads the public config keys", lambda: _check_public_keys(conn, name), provision),
            (
                "anon cannot read a secret",
                lambda: _check_no_secret(conn),
                f"ophelia-db drift --instance {name}",
            ),
            (f"hub resolves '{name}'", lambda: _check_hub(fleet, name, vault_url), provision),
            ("at head", lambda: _check_head(conn, chain, name), upgrade),
        ]
        for label, check, fix in steps:
            try:
                checks.append(Check(label, True, check()))
            except ValueError as exc:
                checks.append(Check(label, False, f"{exc}; fix: {getattr(exc, 'fix', fix)}"))
            except OpheliaError as error:
                checks.append(Check(label, False, f"{error.message}; fix: {fix}"))
            except Exception as exc:
                if sqlstate_of(exc) is None:
                    raise
                checks.append(Check(label, False, f"{describe_error(exc)}; fix: {fix}"))
    failed = any(not c.ok for c in checks)
    return DoctorReport(target.name, tuple(checks), ExitCode.NOT_AT_HEAD if failed else ExitCode.OK)


def _has_vault(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('public.instance_config') IS NOT NULL").fetchone()
    return bool(row and row[0])
