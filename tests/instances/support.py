"""Helpers shared by the provisioning, vault, RLS, lifecycle and doctor tests.

Their fixtures (databases at head) are in ``tests/provisioning_fixtures.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ophelia_db.fleet.config import load_fleet
from ophelia_db.instances import answers as provision
from ophelia_db.instances.apply import apply
from tests.helpers import invoke, rows, run_cli, scalar  # noqa: F401  (shared with the area's tests)

HeadDatabase = Callable[..., str]

FLEET_HEADER = """\
# Our fleet: comments and order must survive provisioning.
[defaults]
connect_timeout = "5s"  # short, for tests

[hub]
url = "{hub}"
"""


def answers_data(subdomain: str = "corte", **overrides: Any) -> dict[str, Any]:
    """A valid answers document (what instances/<name>.json holds)."""
    data: dict[str, Any] = {
        "community_type": "municipality",
        "community_name": "Ville de Corte",
        "city": "Corte",
        "subdomain": subdomain,
        "code": "2B096",
        "contact_email": "mairie@corte.example",
        "map_center": [42.3061, 9.1500],
        "database_url_env": f"TEST_{subdomain.upper().replace('-', '_')}_URL",
        "supabase_url": f"https://{subdomain}.supabase.example",
        "supabase_anon_key_env": "TEST_ANON_KEY",
    }
    data.update(overrides)
    return data


ANON_KEY = "anon-key-value-0123456789"


def fleet_with_hub(directory: Path, hub_url: str, extra: str = "") -> Path:
    path = directory / "fleet.toml"
    path.write_text(FLEET_HEADER.format(hub=hub_url) + extra, encoding="utf-8")
    return path


def provisioned(
    directory: Path, hub_url: str, instance_url: str, subdomain: str = "corte", **overrides: Any
) -> tuple[Path, dict[str, str]]:
    """A fleet whose hub is ``hub_url``, with ``subdomain`` provisioned (library path) on ``instance_url``."""
    path = fleet_with_hub(directory, hub_url)
    data = answers_data(subdomain, **overrides)
    env = {data["database_url_env"]: instance_url, "TEST_ANON_KEY": ANON_KEY}
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    report = apply(load_fleet(path), provision.build_answers(data), env=env)
    assert report.exit_code == 0, report.as_record()
    return path, env


def registry_row(hub_url: str, subdomain: str) -> dict[str, Any] | None:
    with psycopg.connect(hub_url, autocommit=True) as conn:
        cursor = conn.execute("SELECT * FROM public.instance_registry WHERE subdomain = %s", (subdomain,))
        row = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    return dict(zip(names, row, strict=True)) if row else None


def vault_rows(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute("SELECT * FROM public.instance_config ORDER BY key")
        names = [column.name for column in cursor.description or ()]
        return {row[1]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
