"""Secrets never leak: passwords (raw or percent-encoded) and keys stay out of every output.

A real login role with an awkward password owns two fresh databases; their URLs
reach ophelia-db through ``url_env`` (one from the process environment, one
from a ``.env`` file beside fleet.toml that also holds a JWT-looking key).
Every command's stdout, stderr and JSON, the hub registry and the library's
exception messages are searched for the secrets.
"""

from __future__ import annotations

import contextlib
import json
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

import ophelia_db
from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.connections import connect
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import HEAD, MakeDatabase, assert_consistent, invoke, rows, run_cli, write_fleet

pytestmark = pytest.mark.pg

PASSWORD = "p@ss:/#%?&w0rd"
WRONG_PASSWORD = "n0t-the-p@ss:/#%?&"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ."
    "c2VjcmV0LXNpZ25hdHVyZS1kby1ub3QtbGVhaw"
)
LITERAL_PASSWORD = "lit3ral-hunter2"


def forms(secret: str) -> set[str]:
    """A secret as it may appear: raw and percent-encoded (both ways urllib does it)."""
    return {secret, quote(secret, safe=""), quote(secret)}


FORBIDDEN = forms(PASSWORD) | forms(WRONG_PASSWORD) | {JWT, LITERAL_PASSWORD}


def assert_clean(*texts: object, where: str = "") -> None:
    for text in texts:
        blob = text if isinstance(text, str) else repr(text)
        for secret in FORBIDDEN:
            assert secret not in blob, f"{where}: secret {secret!r} leaked in: {blob[:2000]}"


@dataclass
class SecretFleet:
    path: Path
    hub_url: str
    db_urls: dict[str, str]  # trusted postgres URLs, for looking at the databases
    env: dict[str, str]  # process environment holding the secret URL
    wrong_env: dict[str, str]


@pytest.fixture
def secret_fleet(
    pg_cluster: LocalCluster, make_database: MakeDatabase, tmp_path: Path
) -> Iterator[SecretFleet]:
    role = f"ophelia_secret_{uuid.uuid4().hex[:8]}"
    databases = [f"sec_env_{uuid.uuid4().hex[:8]}", f"sec_dotenv_{uuid.uuid4().hex[:8]}"]
    admin = pg_cluster.url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD))
        )
        # The Supabase stand-in roles are cluster-wide; make sure they exist, as a
        # non-superuser cannot create them.
        for api_role in ("anon", "authenticated", "service_role"):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [api_role]).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateObject):
                    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(api_role)))
        for name in databases:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role))
            )
    try:
        host = f"{pg_cluster.host}:{pg_cluster.port}"

        def url(password: str, dbname: str) -> str:
            return f"postgresql://{role}:{quote(password, safe='')}@{host}/{dbname}"

        hub_url = make_database("sechub")
        (tmp_path / ".env").write_text(
            f"SUPABASE_SERVICE_ROLE_KEY={JWT}\nDOTENV_INST_URL='{url(PASSWORD, databases[1])}'\n"
        )
        extra = (
            '[instances.secret]\ncommunity_name = "Secret"\ncommunity_type = "municipality"\n'
            'url_env = "SECRET_INST_URL"\n\n'
            '[instances.dotenv]\ncommunity_name = "Dotenv"\ncommunity_type = "association"\n'
            'url_env = "DOTENV_INST_URL"\n'
        )
        path = write_fleet(tmp_path, hub_url, {}, extra=extra, defaults='connect_timeout = "5s"')
        yield SecretFleet(
            path=path,
            hub_url=hub_url,
            db_urls={
                "secret": pg_cluster.url(databases[0]),
                "dotenv": pg_cluster.url(databases[1]),
            },
            env={"SECRET_INST_URL": url(PASSWORD, databases[0])},
            wrong_env={"SECRET_INST_URL": url(WRONG_PASSWORD, databases[0])},
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in databases:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def registry_text(hub_url: str) -> str:
    return "\n".join(r[0] for r in rows(hub_url, "SELECT r::text FROM public.instance_registry r"))


def test_secret_urls_never_leak(secret_fleet: SecretFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet_arg = ["--fleet", str(secret_fleet.path)]
    cwd = secret_fleet.path.parent
    env = secret_fleet.env

    # upgrade --all --json (subprocess, the real script) migrates both through the role.
    up = run_cli(["upgrade", "--all", "--json", *fleet_arg], cwd=cwd, env=env)
    assert up.returncode == 0, (up.stdout, up.stderr)
    assert_clean(up.stdout, up.stderr, where="upgrade --json")
    record = json.loads(up.stdout)
    assert {r["name"]: r["result"] for r in record["instances"]} == {
        "hub": "ok",
        "dotenv": "ok",
        "secret": "ok",
    }
    for url in secret_fleet.db_urls.values():
        assert_consistent(url, HEAD)
        assert rows(url, "SELECT DISTINCT applied_by FROM public.schema_migrations")[0][0].startswith(
            "ophelia-db/"
        )

    outputs = {
        "upgrade": run_cli(["upgrade", "--all", *fleet_arg], cwd=cwd, env=env),
        "status": run_cli(["status", *fleet_arg], cwd=cwd, env=env),
        "status --json": run_cli(["status", "--json", *fleet_arg], cwd=cwd, env=env),
        "sync --all": run_cli(["sync", "--all", *fleet_arg], cwd=cwd, env=env),
        "history": run_cli(["history", "--instance", "secret", *fleet_arg], cwd=cwd, env=env),
    }
    for name, proc in outputs.items():
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
        assert_clean(proc.stdout, proc.stderr, where=name)
    assert json.loads(outputs["status --json"].stdout)["instances"][2]["state"] == "up-to-date"

    # The same commands in-process, with the URL in os.environ.
    monkeypatch.setenv("SECRET_INST_URL", env["SECRET_INST_URL"])
    for args in (
        ["sync", "--all", "--json"],
        ["history", "--instance", "dotenv", "--json"],
        ["history", "--instance", "secret"],
        ["upgrade", "--instance", "secret", "--json"],
        ["downgrade", "--instance", "secret", "--to", "0004", "--json"],
    ):
        result = invoke([*args, *fleet_arg])
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        assert_clean(result.stdout, result.stderr, where=" ".join(args))

    hub_rows = registry_text(secret_fleet.hub_url)
    assert "secret" in hub_rows and "dotenv" in hub_rows
    assert_clean(hub_rows, where="instance_registry")

    # The library's own objects: the fleet, its targets, results.
    fleet = load_fleet(secret_fleet.path)
    assert_clean(repr(fleet), str(fleet.get("secret").display_url), where="Fleet repr")
    assert ":***@" in fleet.get("secret").display_url
    report = ophelia_db.status(fleet, fleet.select(all_=True))
    assert_clean(report.as_record(), repr(report), where="status report")


def test_wrong_password_is_unreachable_and_redacted(secret_fleet: SecretFleet) -> None:
    fleet_arg = ["--fleet", str(secret_fleet.path)]
    cwd = secret_fleet.path.parent
    wrong = secret_fleet.wrong_env

    status = run_cli(["status", "--instance", "secret", *fleet_arg], cwd=cwd, env=wrong)
    assert status.returncode == 8, (status.stdout, status.stderr)
    assert "unreachable" in status.stdout
    assert "password authentication failed" in status.stdout + status.stderr
    assert_clean(status.stdout, status.stderr, where="status (wrong password)")

    # The hub must be at head to take reports: migrate it alone first.
    hub_up = invoke(["upgrade", "--instance", "hub", *fleet_arg], env=wrong)
    assert hub_up.exit_code == 0, hub_up.stdout

    up = run_cli(["upgrade", "--instance", "secret", "--json", *fleet_arg], cwd=cwd, env=wrong)
    assert up.returncode == 8, (up.stdout, up.stderr)
    [row] = json.loads(up.stdout)["instances"]
    assert (row["result"], row["exit_code"]) == ("unreachable", 8)
    assert "secret" in row["error"]
    assert_clean(up.stdout, up.stderr, where="upgrade --json (wrong password)")
    assert rows(secret_fleet.db_urls["secret"], "SELECT to_regclass('public.alembic_version')") == [(None,)]

    # One instance unreachable among several is a mixed result (7); alone it is 8.
    for args, code in (
        (["status", "--json", "--instance", "secret"], 8),
        (["sync", "--all"], 7),
        (["sync", "--instance", "secret", "--json"], 8),
        (["history", "--instance", "secret"], 8),
        (["history", "--instance", "secret", "--json"], 8),
        (["upgrade", "--instance", "secret"], 8),
        (["upgrade", "--instance", "secret", "--instance", "dotenv", "--json"], 7),
    ):
        result = invoke([*args, *fleet_arg], env=wrong)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert_clean(result.stdout, result.stderr, where=" ".join(args) + " (wrong password)")

    hub_rows = registry_text(secret_fleet.hub_url)
    assert "password authentication failed" in hub_rows
    assert_clean(hub_rows, where="instance_registry (wrong password)")

    fleet = load_fleet(secret_fleet.path, environ=wrong)
    with pytest.raises(OpheliaError) as caught:
        connect(fleet.get("secret"))
    assert caught.value.exit_code == 8
    assert_clean(
        str(caught.value),
        repr(caught.value),
        "".join(traceback.format_exception(caught.value)),
        where="connect() error",
    )
    result = ophelia_db.upgrade(fleet, fleet.select(["secret"]), jobs=1).instances[0]
    assert result.result == "unreachable"
    assert_clean(result.error, repr(result), where="InstanceResult")


def test_password_written_in_fleet_toml_is_refused(make_database: MakeDatabase, tmp_path: Path) -> None:
    hub_url = make_database("lithub")
    literal = f"postgresql://someone:{LITERAL_PASSWORD}@127.0.0.1:1/x"
    path = write_fleet(tmp_path, hub_url, {"leaky": literal})

    proc = run_cli(["upgrade", "--all", "--fleet", str(path)], cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "url_env" in proc.stderr and "Traceback" not in proc.stderr
    assert_clean(proc.stdout, proc.stderr, where="upgrade --all")
    for args in (["status", "--json"], ["sync", "--all"], ["history", "--instance", "leaky", "--json"]):
        result = invoke([*args, "--fleet", str(path)])
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert "url_env" in result.stderr
        assert_clean(result.stdout, result.stderr, where=" ".join(args))

    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    assert "url_env" in str(caught.value)
    assert_clean(str(caught.value), repr(caught.value), where="ConfigError")
    assert rows(hub_url, "SELECT to_regclass('public.alembic_version')") == [(None,)]
