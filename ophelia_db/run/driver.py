"""Every call into Alembic: the one place a ``Config`` is built and handed to ``alembic/env.py``.

ophelia-db drives Alembic in-process with the cookbook's "sharing a
connection" recipe: the connection (or, offline, the output buffer) and the
mirror hook travel to ``env.py`` in ``config.attributes``. ``EnvAttributes``
is the typed form of those attributes on both sides, so that no key is a
string spelled in two places. Alembic is imported inside the functions: it
costs a fifth of a second, and ``status`` or a no-op ``upgrade`` never need it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ophelia_db.errors import ConfigError
from ophelia_db.settings import environment_settings

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

VersionHook = Callable[..., None]
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ChainSpec:
    """Where a chain lives; small and picklable so worker processes can rebuild it."""

    alembic_ini: Path
    version_locations: str | None = None

    @classmethod
    def default(cls) -> ChainSpec:
        """The project's chain, or the one ``$OPHELIA_ALEMBIC_INI``/``$OPHELIA_VERSION_LOCATIONS`` name."""
        settings = environment_settings()
        ini = settings.alembic_ini or PROJECT_ROOT / "alembic.ini"
        return cls(alembic_ini=ini.resolve(), version_locations=settings.version_locations)


@dataclass(frozen=True)
class EnvAttributes:
    """What ``alembic/env.py`` reads from ``config.attributes``; ``None`` means not given."""

    # An open SQLAlchemy connection to migrate on (online runs).
    connection: Any = None
    # Alembic's ``on_version_apply`` callback: the mirror hook.
    on_version_apply: VersionHook | None = None
    # Where offline SQL goes instead of stdout.
    output_buffer: TextIO | None = None
    # The fleet instance being migrated, for messages.
    instance: str | None = None

    def install(self, config: Config) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                config.attributes[item.name] = value

    @classmethod
    def of(cls, config: Config) -> EnvAttributes:
        return cls(**{item.name: config.attributes.get(item.name) for item in fields(cls)})


def config_for(spec: ChainSpec, attributes: EnvAttributes | None = None) -> Config:
    """A fresh Alembic ``Config`` for the chain of ``spec``, carrying ``attributes``."""
    from alembic.config import Config  # on use: see the module docstring

    if not spec.alembic_ini.is_file():
        raise ConfigError(f"alembic.ini not found at {spec.alembic_ini}; set OPHELIA_ALEMBIC_INI")
    config = Config(str(spec.alembic_ini))
    if spec.version_locations:
        config.set_main_option("version_locations", spec.version_locations)
    (attributes or EnvAttributes()).install(config)
    return config


def script_directory(spec: ChainSpec) -> ScriptDirectory:
    from alembic.script import ScriptDirectory  # on use: see the module docstring

    return ScriptDirectory.from_config(config_for(spec))


def migrate(
    spec: ChainSpec,
    goal: str | None,
    *,
    connection: Any,
    hook: VersionHook | None,
    instance: str,
    downgrade: bool = False,
) -> None:
    """Run ``upgrade`` (or ``downgrade``) to ``goal`` (``None`` is base) on an open connection."""
    from alembic import command  # on use: see the module docstring

    config = config_for(spec, EnvAttributes(connection=connection, on_version_apply=hook, instance=instance))
    (command.downgrade if downgrade else command.upgrade)(config, goal or "base")


def render_sql(spec: ChainSpec, start: str | None, goal: str, *, hook: VersionHook) -> str:
    """The offline SQL of the revisions after ``start`` (``None``: from base) up to ``goal``."""
    from alembic import command  # on use: see the module docstring

    buffer = io.StringIO()
    command.upgrade(
        config_for(spec, EnvAttributes(output_buffer=buffer, on_version_apply=hook)),
        f"{start}:{goal}" if start else goal,
        sql=True,
    )
    return buffer.getvalue()


class _StatementCapture:
    """An output buffer that keeps each of Alembic's writes apart: one write is one statement."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def render_upgrade_statements(spec: ChainSpec, start: str | None, goal: str) -> list[str]:
    """Alembic's offline output for ``start`` → ``goal``, one item per statement or comment.

    Rendered without the mirror hook: the caller adds its own version and mirror rows.
    """
    from alembic import command  # on use: see the module docstring

    capture = _StatementCapture()
    attributes = EnvAttributes(output_buffer=capture, on_version_apply=_no_mirror)  # type: ignore[arg-type]
    command.upgrade(config_for(spec, attributes), f"{start}:{goal}" if start else goal, sql=True)
    return [text.strip() for text in capture.writes if text.strip()]


def _no_mirror(**_: Any) -> None:
    """An ``on_version_apply`` hook that writes nothing (``env.py`` would add the offline one)."""


def render_downgrade_sql(spec: ChainSpec, start: str, goal: str | None, *, hook: VersionHook) -> str:
    """The offline SQL that takes a database at ``start`` down to ``goal`` (``None``: base)."""
    from alembic import command  # on use: see the module docstring

    buffer = io.StringIO()
    command.downgrade(
        config_for(spec, EnvAttributes(output_buffer=buffer, on_version_apply=hook)),
        f"{start}:{goal or 'base'}",
        sql=True,
    )
    return buffer.getvalue()
