"""The fleet: fleet.toml, its validation, and the selection of targets.

This module owns reading ``fleet.toml`` (through pydantic-settings), the
``.env`` file beside it, turning every bad input into one ``ConfigError``
line, and resolving a selection (``--instance``/``--all``/``--tag``) into
ordered ``Target`` objects. URLs are ``SecretStr`` from the moment they are
read; it never connects to anything.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, ValidationInfo, field_validator

from ophelia_db.durations import parse_duration
from ophelia_db.errors import ConfigError
from ophelia_db.fleet import COMMUNITY_TYPES
from ophelia_db.fleet.file_errors import describe_validation, refuse_duplicates
from ophelia_db.fleet.urls import describe_url, url_has_password, url_problem
from ophelia_db.fleet.urls import parse as parse_url
from ophelia_db.redaction import register_secret
from ophelia_db.settings import environment_settings

SUBDOMAIN = re.compile(r"^[a-z0-9-]{1,20}$")

CommunityType = Literal["municipality", "intercommunality", "university", "association", "region"]
Role = Literal["hub", "instance"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Time boxes in seconds; any of them may be overridden per instance."""

    lock_wait: float = 30.0
    lock_timeout: float = 5.0
    statement_timeout: float = 900.0
    connect_timeout: float = 10.0
    # How often the server checks, during a statement, that the runner is still
    # there (PostgreSQL >= 14): a killed runner's session, transaction and
    # migration lock end within about this long instead of when its statement ends.
    client_connection_check_interval: float = 2.0

    @field_validator("*", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class Defaults(Timeouts):
    # Instances in flight at once: the work waits on the network, so many (see run/fanout.py).
    jobs: int = 32
    # Instances of one database server (host and port) probed or migrated at once: with at
    # most two connections per migrating instance, 32 leave room under PostgreSQL's default
    # max_connections (100) for everyone else (fleet/hosts.py).
    per_host: int = 32

    @field_validator("jobs", "per_host", mode="before")
    @classmethod
    def _whole(cls, value: Any, info: ValidationInfo) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{info.field_name} must be a whole number of at least 1")
        return value


class _Endpoint(_Strict):
    url: str | None = None
    url_env: str | None = None
    lock_wait: str | float | None = None
    lock_timeout: str | float | None = None
    statement_timeout: str | float | None = None
    connect_timeout: str | float | None = None
    client_connection_check_interval: str | float | None = None

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and url_has_password(value):
            raise ValueError(
                "holds a password; secrets never live in fleet.toml: put the URL in an "
                "environment variable (or .env beside fleet.toml) and name it with url_env"
            )
        problem = url_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class HubFile(_Endpoint):
    name: str = "hub"
    community_name: str = "Ophélia hub"
    community_type: CommunityType | None = None


class InstanceFile(_Endpoint):
    community_name: str
    community_type: CommunityType
    tags: list[str] = []


class LocalFile(_Strict):
    """The embedded local cluster the tool starts itself (``ophelia-db local start``)."""

    port: int = 54329
    state_dir: str = ".ophelia"


class FleetFile(BaseModel):
    """The schema of fleet.toml."""

    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Defaults()
    hub: HubFile
    instances: dict[str, InstanceFile] = {}
    local: LocalFile | None = None


_SECTIONS: dict[str, type[BaseModel]] = {
    "defaults": Defaults,
    "hub": HubFile,
    "instances": InstanceFile,
    "local": LocalFile,
}


def _keys_of(section: Sequence[str]) -> list[str]:
    """The keys fleet.toml's ``section`` may hold (``[]``: the top level; ``["instances", name]``)."""
    if not section:
        return list(FleetFile.model_fields)
    model = _SECTIONS.get(section[0])
    depth = 2 if section[0] == "instances" else 1  # [instances.<name>], the others one level
    return list(model.model_fields) if model is not None and len(section) == depth else []


@dataclass(frozen=True)
class Target:
    """One database of the fleet (the hub or an instance), ready to connect to."""

    name: str
    role: Role
    community_name: str
    community_type: str | None
    tags: tuple[str, ...]
    url: SecretStr | None
    url_source: str
    timeouts: Timeouts
    url_problem: str | None = None

    @property
    def display_url(self) -> str:
        return describe_url(self.url.get_secret_value()) if self.url else "(no URL)"

    def dsn(self) -> str:
        """Return the connection URL; raise ``ConfigError`` if it could not be resolved."""
        if self.url is None:
            raise ConfigError(f"{self.name}: {self.url_problem}")
        return self.url.get_secret_value()


@dataclass(frozen=True)
class LocalSettings:
    """fleet.toml's ``[local]`` table, resolved: where the embedded cluster lives and listens."""

    state_dir: Path
    port: int


@dataclass(frozen=True)
class Fleet:
    """A validated fleet: the hub, the instances by name, and run defaults."""

    path: Path
    defaults: Defaults
    hub: Target
    instances: Mapping[str, Target]
    local: LocalSettings | None = None
    members: tuple[Target, ...] = field(init=False)

    def __post_init__(self) -> None:
        ordered = (self.hub, *sorted(self.instances.values(), key=lambda t: t.name))
        object.__setattr__(self, "members", ordered)

    def get(self, name: str) -> Target:
        """Return the member called ``name`` or refuse with the closest known name."""
        for member in self.members:
            if member.name == name:
                return member
        known = [m.name for m in self.members]
        # A name is at most 20 characters: anything far longer is no typo of one.
        close = difflib.get_close_matches(name, known, n=1) if len(name) <= 64 else []
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
        raise ConfigError(f"unknown instance '{name}' in {self.path}{hint}")

    def tagged(self, tag: str) -> list[Target]:
        """The members carrying ``tag``; an unknown tag is refused with the closest one."""
        found = [m for m in self.members if tag in m.tags]
        if not found:
            known = sorted({t for m in self.members for t in m.tags})
            close = difflib.get_close_matches(tag, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (tags: {', '.join(known) or 'none'})"
            raise ConfigError(f"no instance of {self.path} has the tag '{tag}'{hint}")
        return found

    def select(
        self,
        names: Iterable[str] = (),
        *,
        all_: bool = False,
        tags: Iterable[str] = (),
        default_all: bool = False,
    ) -> list[Target]:
        """Resolve a selection to targets, hub first, then instances by name.

        ``--all`` includes the hub and stands alone; ``--instance`` and ``--tag``
        add up (the union). Each selected target's URL must resolve.
        """
        names, tags = list(names), list(tags)
        if all_ and (names or tags):
            raise ConfigError("--all already selects every instance: give it alone, or --instance/--tag")
        if not (names or all_ or tags):
            if not default_all:
                raise ConfigError("select instances with --instance NAME, --all or --tag TAG")
            all_ = True
        chosen: dict[str, Target] = {}
        if all_:
            chosen = {m.name: m for m in self.members}
        for name in names:
            target = self.get(name)
            chosen[target.name] = target
        for tag in tags:
            chosen.update({m.name: m for m in self.tagged(tag)})
        selected = [m for m in self.members if m.name in chosen]
        for target in selected:
            target.dsn()
        return selected


def find_fleet_file(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the fleet file: ``--fleet``, else ``$OPHELIA_FLEET``, else ``./fleet.toml``."""
    from_environment = environment_settings().fleet
    chosen = path or from_environment or "fleet.toml"
    resolved = Path(chosen).expanduser().resolve()
    if not resolved.is_file():
        origin = "--fleet" if path else "$OPHELIA_FLEET" if from_environment else "default"
        what = (
            "is a directory, not a file"
            if resolved.is_dir()
            else "is not a regular file"
            if resolved.exists()
            else "not found"
        )
        raise ConfigError(f"fleet file {resolved} {what} ({origin}); pass --fleet PATH or set OPHELIA_FLEET")
    return resolved


def load_fleet(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Fleet:
    """Read, validate and resolve a fleet file (see docs/design.md §2)."""
    fleet_path = find_fleet_file(path)
    text = _text_of(fleet_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib (3.11) has no lineno attribute: the line is only in the message.
        found = re.search(r"at line (\d+)", str(exc))
        line = found.group(1) if found else max(len(text.splitlines()), 1)
        if "Cannot declare" in str(exc):
            refuse_duplicates(fleet_path, text)
        raise ConfigError(f"{fleet_path}:{line}: invalid TOML: {exc}") from None
    try:
        parsed = FleetFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation(fleet_path, text, exc, COMMUNITY_TYPES, _keys_of)) from None
    env = environment(fleet_path, environ)
    return _build(fleet_path, parsed, env)


def _text_of(path: Path) -> str:
    """A UTF-8 file's text (a byte-order mark is dropped), or one clear refusal."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def _build(path: Path, parsed: FleetFile, env: Mapping[str, str]) -> Fleet:
    defaults = parsed.defaults
    instances: dict[str, Target] = {}
    hub_name = parsed.hub.name
    if not SUBDOMAIN.match(hub_name):
        raise ConfigError(f"{path}: [hub] name '{hub_name}' must match ^[a-z0-9-]{{1,20}}$")
    for name, spec in parsed.instances.items():
        if not SUBDOMAIN.match(name):
            raise ConfigError(
                f"{path}: instance name '{name}' is not a valid subdomain "
                "(lowercase letters, digits and '-', at most 20 characters)"
            )
        if name == hub_name:
            raise ConfigError(f"{path}: duplicate instance '{name}': it is also the hub's name")
        instances[name] = _target(path, name, "instance", spec, defaults, env, tuple(spec.tags))
        instances[name] = replace(
            instances[name], community_name=spec.community_name, community_type=spec.community_type
        )
    hub = _target(path, hub_name, "hub", parsed.hub, defaults, env, ())
    hub = replace(hub, community_name=parsed.hub.community_name, community_type=parsed.hub.community_type)
    local = None
    if parsed.local is not None:
        state_dir = (path.parent / parsed.local.state_dir).resolve()
        local = LocalSettings(state_dir=state_dir, port=parsed.local.port)
    return Fleet(path=path, defaults=defaults, hub=hub, instances=instances, local=local)


def _target(
    path: Path,
    name: str,
    role: Role,
    spec: _Endpoint,
    defaults: Defaults,
    env: Mapping[str, str],
    tags: tuple[str, ...],
) -> Target:
    where = "[hub]" if role == "hub" else f"[instances.{name}]"
    if (spec.url is None) == (spec.url_env is None):
        raise ConfigError(f'{path}: {where} needs exactly one of url_env = "VAR" or url = "..."')
    overrides = {key: getattr(spec, key) for key in Timeouts.model_fields if getattr(spec, key) is not None}
    try:
        timeouts = Timeouts(**{**_timeouts_of(defaults), **overrides})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where} {key}: {message}") from None
    url, problem = None, None
    if spec.url_env is not None:
        source = f"url_env {spec.url_env}"
        value = env.get(spec.url_env, "")
        problem = url_problem(value) if value else None
        if value and problem:
            # Named, never shown: the variable holds a secret.
            problem = f"environment variable {spec.url_env} ({where} in {path}) {problem}"
        elif value:
            # The password is the secret; the rest of the URL stays readable in messages.
            register_secret(parse_url(value).password)
            url = SecretStr(value)
        else:
            problem = (
                f"environment variable {spec.url_env} (url_env of {where} in {path}) is not set; "
                f"export it or add it to {path.parent / '.env'}"
            )
    else:
        source = "url"
        url = SecretStr(spec.url or "")
    return Target(
        name=name,
        role=role,
        community_name="",
        community_type=None,
        tags=tags,
        url=url,
        url_source=source,
        timeouts=timeouts,
        url_problem=problem,
    )


def _timeouts_of(defaults: Defaults) -> dict[str, float]:
    return {key: getattr(defaults, key) for key in Timeouts.model_fields}


def environment(fleet_path: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over the ``.env`` file beside fleet.toml (the process wins)."""
    env: dict[str, str] = {}
    dotenv = fleet_path.parent / ".env" if fleet_path else None
    if dotenv is not None and dotenv.is_file():
        try:
            values = dotenv_values(dotenv, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{dotenv}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        env.update({key: value for key, value in values.items() if value is not None})
    env.update(os.environ if environ is None else environ)
    return env
