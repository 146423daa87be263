"""The tool's own settings from the environment: every ``OPHELIA_*`` variable in one place.

Read anew on each call (tests and wrappers change the environment between
calls). An empty variable counts as unset. fleet.toml is not read here: a
fleet's shape never comes from environment variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPHELIA_", extra="ignore")

    # The fleet file when --fleet is not given.
    fleet: Path | None = None
    # Another alembic.ini, and other revision folders (os.pathsep-separated), for tests and forks.
    alembic_ini: Path | None = None
    version_locations: str | None = None
    # The folder of the PostgreSQL server binaries for the embedded cluster.
    pg_bin: Path | None = None
    # The bearer token `serve`'s POST /api/sync-schema-version requires; unset, the endpoint is off.
    serve_token: str | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def environment_settings() -> Environment:
    return Environment()
