"""The live half of provisioning, ``provision --apply``: from an empty database to a fleet member.

This module owns ``apply``, the resumable, idempotent sequence that takes
an instance database (empty or half done) to a registered, up-to-date member
of the fleet: reachability, the hub row ``pending`` then ``active``, the
migrations through ``ophelia_db.upgrade``, the vault seed (the same statements
as the vault SQL file), the version read back through ``anon``, and the
entry added to fleet.toml without losing a comment. Each step checks before
it writes, so a second run changes nothing. It never prints or exits.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import tomlkit
from pydantic import SecretStr

from ophelia_db.errors import ConfigError, ExitCode, IntegrityRefusal, OpheliaError
from ophelia_db.fleet import hub
from ophelia_db.fleet.config import Fleet, Target, Timeouts, environment, load_fleet
from ophelia_db.fleet.connections import connect, describe_error, sqlstate_of
from ophelia_db.fleet.urls import parse as parse_url
from ophelia_db.instances import seed
from ophelia_db.instances import sql as sqlgen
from ophelia_db.instances.answers import Answers, resolve_secrets
from ophelia_db.instances.doctor import query_as
from ophelia_db.redaction import register_secret
from ophelia_db.results import Record
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.state import REFUSED_STATES, classify
from ophelia_db.run.status import probe_all
from ophelia_db.run.upgrade import upgrade

# --- fleet.toml -----------------------------------------------------------------------------------


def add_to_fleet(path: Path, answers: Answers, *, replace: bool = False) -> bool:
    """Add (or align) ``[instances.<subdomain>]`` in fleet.toml, keeping comments and order.

    An existing entry keeps its connection keys unless it already uses
    ``url_env``; the result is validated like any fleet file before it replaces
    the old one. Returns whether the file changed.
    """
    text = path.read_text(encoding="utf-8")
    document = tomlkit.parse(text)
    if "instances" not in document:
        document.add("instances", tomlkit.table(is_super_table=True))
    instances: Any = document["instances"]
    wanted = {"community_name": answers.community_name, "community_type": answers.community_type}
    entry = instances.get(answers.subdomain)
    if entry is None:
        entry = tomlkit.table()
        for key, value in wanted.items():
            entry.add(key, value)
        entry.add("url_env", answers.database_url_env)
        instances.append(answers.subdomain, entry)
    else:
        for key, value in wanted.items():
            if entry.get(key) != value:
                entry[key] = value
        if replace and "url" in entry:
            del entry["url"]
        if "url" not in entry and entry.get("url_env") != answers.database_url_env:
            entry["url_env"] = answers.database_url_env
    new = tomlkit.dumps(document)
    if new == text:
        return False
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".toml")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(new)
        shutil.copymode(path, temporary)
        load_fleet(temporary, environ={})
        os.replace(temporary, path)
    except ConfigError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"{path} would not be valid after adding {answers.subdomain}: {exc}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def instance_target(fleet: Fleet, answers: Answers, env: Mapping[str, str]) -> Target:
    """The new instance as a fleet member, its URL read from ``database_url_env``."""
    variable = answers.database_url_env
    url = env.get(variable) or None
    if url:
        register_secret(parse_url(url).password)
    known = fleet.instances.get(answers.subdomain)
    timeouts = (
        known.timeouts
        if known
        else Timeouts(**{k: getattr(fleet.defaults, k) for k in Timeouts.model_fields})
    )
    return Target(
        name=answers.subdomain,
        role="instance",
        community_name=answers.community_name,
        community_type=answers.community_type,
        tags=known.tags if known else (),
        url=SecretStr(url) if url else None,
        url_source=f"url_env {variable}",
        timeouts=timeouts,
        url_problem=None
        if url
        else f"environment variable {variable} (database_url_env) is not set; export it or add it to "
        f"{fleet.path.parent / '.env'}",
    )


# --- apply ----------------------------------------------------------------------------------------

StepState = Literal["ok", "done", "failed", "not run"]
STEPS = (
    "project reachable",
    "hub reachable",
    "registry row pending",
    "migrations applied",
    "vault written",
    "registry row active",
    "schema version verified",
    "added to fleet.toml",
)


@dataclass(frozen=True)
class Step(Record):
    """One item of the provisioning checklist: ``ok`` (already so), ``done`` (changed now)."""

    json_names: ClassVar[dict[str, str]] = {"name": "step"}

    name: str
    state: StepState
    detail: str = ""

    @property
    def ticked(self) -> bool:
        return self.state in ("ok", "done")


@dataclass(frozen=True)
class ApplyReport:
    subdomain: str
    steps: tuple[Step, ...]
    exit_code: int

    @property
    def changed(self) -> bool:
        return any(step.state == "done" for step in self.steps)

    def as_record(self) -> dict[str, Any]:
        return {
            "subdomain": self.subdomain,
            "steps": [s.as_record() for s in self.steps],
            "changed": self.changed,
            "exit_code": int(self.exit_code),
        }


def checklist(subdomain: str) -> ApplyReport:
    """The checklist before anything ran."""
    return ApplyReport(subdomain, tuple(Step(name, "not run") for name in STEPS), ExitCode.OK)


class _StepFailed(OpheliaError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


class _Apply:
    """The steps of ``apply``; each is safe to run again, so an interrupted run is resumed by re-running."""

    def __init__(
        self, fleet: Fleet, answers: Answers, env: Mapping[str, str], chain: Chain, replace: bool = False
    ) -> None:
        self.fleet, self.answers, self.chain, self.replace = fleet, answers, chain, replace
        self.secrets = resolve_secrets(answers, env)
        self.target = instance_target(fleet, answers, env)
        self.hub = fleet.hub
        self.name = answers.subdomain

    def reachable(self) -> tuple[StepState, str]:
        if self.name == self.hub.name:
            raise ConfigError(
                f"'{self.name}' is the hub's name in {self.fleet.path}; choose another subdomain"
            )
        if self.secrets.unset:
            raise ConfigError(
                f"environment variable(s) {', '.join(self.secrets.unset)} named by the answers are not set; "
                f"export them or add them to {self.fleet.path.parent / '.env'}"
            )
        self._refuse_other_database()
        with connect(self.target, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]).split()[0] if row else "?"
        return "ok", f"{self.target.display_url} (PostgreSQL {version})"

    def _refuse_other_database(self) -> None:
        """An instance already in fleet.toml is provisioned again only on the same database."""
        known = self.fleet.instances.get(self.name)
        if known is None or self.replace:
            return
        same_source = known.url_source == self.target.url_source
        same_url = known.url is None or known.url == self.target.url
        if not (same_source and same_url):
            raise ConfigError(
                f"'{self.name}' is already in {self.fleet.path} with other connection details "
                f"({known.url_source}, {known.display_url}); provisioning it here would migrate and seed "
                f"another database. Pass --replace to make {self.answers.database_url_env} its connection in "
                "fleet.toml, the hub and the files; nothing was changed"
            )

    def hub_reachable(self) -> tuple[StepState, str]:
        with connect(self.hub, autocommit=True) as conn:
            hub.require_registry(conn, self.hub)
            found = hub.find(conn, self.name)
        if found and found[1]:
            raise ConfigError(f"'{self.name}' is registered as a hub in the registry")
        if found and found[0] in ("archived", "suspended"):
            raise ConfigError(
                f"'{self.name}' is {found[0]} in the hub registry; "
                f"run `ophelia-db activate {self.name}` first if it is meant to come back"
            )
        known = f"registered, {found[0]}" if found else "not registered yet"
        return "ok", f"{self.hub.display_url} ({known})"

    def pending(self) -> tuple[StepState, str]:
        with connect(self.hub, autocommit=True) as conn:
            inserted = hub.insert(conn, self.target, "pending")
        return ("done", "registered as pending") if inserted else ("ok", "already registered")

    def migrate(self) -> tuple[StepState, str]:
        state = probe_all([self.target])[self.name]
        if isinstance(state, OpheliaError):
            raise state
        verdict = classify(state, self.chain, name=self.name)
        if verdict.state == "up-to-date":
            return "ok", f"already at head {self.chain.head}"
        if verdict.state in REFUSED_STATES:
            raise IntegrityRefusal(f"{self.name}: {verdict.problem}; nothing was changed")
        report = upgrade(self.fleet, [self.target], jobs=1, chain=self.chain)
        result = report.instances[0]
        if not result.succeeded:
            raise _StepFailed(result.error or f"{self.name}: upgrade {result.result}", result.exit_code)
        moved = f"{result.from_revision or 'empty'} -> {result.to_revision}"
        return "done", f"{moved} ({len(result.applied)} revision(s))"

    def write_vault(self) -> tuple[StepState, str]:
        statements = sqlgen.vault_statements(seed.seed_rows(self.answers, self.secrets.api_keys))
        with connect(self.target) as conn:
            written = sum(max(conn.execute(statement).rowcount, 0) for statement in statements)  # type: ignore[call-overload]
            conn.commit()
        if not written:
            return "ok", f"unchanged ({len(statements)} keys)"
        return "done", f"{written} of {len(statements)} keys written"

    def activate(self) -> tuple[StepState, str]:
        statement = hub.registry_upsert(sqlgen.registry_identity(self.answers), self.secrets.anon_key)
        with connect(self.hub, autocommit=True) as conn:
            changed = conn.execute(statement).rowcount  # type: ignore[call-overload]
            row = hub.find(conn, self.name)
        if not row or row[0] != "active":
            raise ConfigError(
                f"'{self.name}' is {row[0] if row else 'missing'} in the hub registry, not active"
            )
        # The app finds an instance through the hub's supabase_url and signs in with the anon
        # key: without either it cannot reach the instance, though every step here succeeded.
        missing = [
            *([] if self.answers.supabase_url else ["no Supabase URL given (supabase_url, --supabase-url)"]),
            *([] if self.secrets.anon_key else ["no anon key given (supabase_anon_key_env)"]),
        ]
        note = f"; not usable by the app yet: {' and '.join(missing)}" if missing else ""
        return ("done" if changed else "ok"), f"active{note}"

    def verify(self) -> tuple[StepState, str]:
        with connect(self.target, autocommit=True) as conn:
            rows = query_as(conn, "anon", "SELECT current_version FROM public.get_schema_version()")
        version = rows[0][0] if rows else None
        if version != self.chain.head:
            raise _StepFailed(
                f"anon reads version {version}, head is {self.chain.head}", ExitCode.NOT_AT_HEAD
            )
        return "ok", f"anon reads {version} (head)"

    def add_to_fleet(self) -> tuple[StepState, str]:
        if add_to_fleet(self.fleet.path, self.answers, replace=self.replace):
            return "done", f"[instances.{self.name}] written to {self.fleet.path}"
        return "ok", f"already in {self.fleet.path}"

    def actions(self) -> list[Callable[[], tuple[StepState, str]]]:
        return [
            self.reachable,
            self.hub_reachable,
            self.pending,
            self.migrate,
            self.write_vault,
            self.activate,
            self.verify,
            self.add_to_fleet,
        ]


def apply(
    fleet: Fleet,
    answers: Answers,
    *,
    env: Mapping[str, str] | None = None,
    chain: Chain | None = None,
    on_step: Callable[[Step], None] | None = None,
    replace: bool = False,
) -> ApplyReport:
    """Bring the instance to a registered, up-to-date member of the fleet; stop at the first failure.

    An instance already in fleet.toml with other connection details is refused
    unless ``replace``, which makes the answers' connection the one of record.

    Order: instance reachable, hub reachable, hub row ``pending``, migrations to
    head (through ``ophelia_db.upgrade``), vault rows, hub row ``active``, version
    read back through ``anon``, fleet.toml. Every step checks before it writes,
    so a second run changes nothing and an interrupted one is resumed by
    running it again.
    """
    chain = chain or chain_for()
    run = _Apply(fleet, answers, environment(fleet.path) if env is None else env, chain, replace)
    steps: list[Step] = []
    code: int = ExitCode.OK
    for name, action in zip(STEPS, run.actions(), strict=True):
        if code != ExitCode.OK:
            step = Step(name, "not run")
        else:
            try:
                state, detail = action()
                step = Step(name, state, detail)
            except OpheliaError as error:
                step, code = Step(name, "failed", error.message), error.exit_code
            except Exception as exc:
                if sqlstate_of(exc) is None:
                    raise
                step, code = Step(name, "failed", describe_error(exc)), ExitCode.USAGE
        steps.append(step)
        if on_step:
            on_step(step)
    return ApplyReport(answers.subdomain, tuple(steps), code)
