"""Bad input is one `error:` line and exit 2, never a traceback; a password pasted raw connects."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.helpers import MakeDatabase, execute, run_cli

HUB = '[hub]\nurl = "postgresql://postgres@127.0.0.1:1/hub"\n'


def refused(done, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and needle in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x00\xff\xfe garbage \x80\x81", "not UTF-8 text"),
        ("[hub]\n".encode("utf-16"), "not UTF-8 text"),
    ],
    ids=["binary", "utf-16"],
)
def test_a_fleet_file_that_is_not_utf8_text(tmp_path: Path, content: bytes, needle: str) -> None:
    (tmp_path / "fleet.toml").write_bytes(content)
    refused(run_cli(["status"], fleet=tmp_path / "fleet.toml"), needle)


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_bytes(b"\xef\xbb\xbf" + HUB.encode())
    done = run_cli(["status", "--json"], fleet=tmp_path / "fleet.toml")
    assert done.returncode == 8, done.stderr  # read, then the hub is unreachable


@pytest.mark.parametrize(
    ("where", "needle"), [("/dev/null", "is not a regular file"), (".", "is a directory")]
)
def test_a_fleet_path_that_is_not_a_file(tmp_path: Path, where: str, needle: str) -> None:
    refused(run_cli(["status"], env={"OPHELIA_FLEET": where}, cwd=tmp_path), needle)


def test_a_dotenv_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('[hub]\nurl_env = "HUB_URL"\n')
    (tmp_path / ".env").write_bytes(b"HUB_URL=\xff\xfe\n")
    refused(run_cli(["status"], fleet=tmp_path / "fleet.toml"), "not UTF-8 text")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://root:hunter2@db.example/app", "holds a password"),
        ("http://db.example/app", "is a http:// URL"),
        ("", "is empty"),
    ],
)
def test_urls_are_checked_when_the_fleet_is_read(tmp_path: Path, url: str, needle: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        f'{HUB}[instances.corte]\ncommunity_name = "C"\ncommunity_type = "municipality"\nurl = "{url}"\n'
    )
    done = run_cli(["status"], fleet=path)
    refused(done, needle)
    assert "corte" in done.stderr and "hunter2" not in done.stderr


def test_a_broken_url_in_the_environment_names_its_variable_not_its_value(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        HUB
        + '[instances.corte]\ncommunity_name = "C"\ncommunity_type = "municipality"\nurl_env = "CORTE_URL"\n'
    )
    done = run_cli(
        ["status", "-i", "corte"], fleet=path, env={"CORTE_URL": "postgresql://alice:s3cr3t@[::1:5432/x"}
    )
    refused(done, "environment variable CORTE_URL")
    assert "s3cr3t" not in done.stdout + done.stderr


def test_a_password_pasted_raw_connects(make_database: MakeDatabase, tmp_path: Path) -> None:
    url = make_database("raw")
    role, password = f"raw_{uuid.uuid4().hex[:8]}", "p@ss:/#%?&w0rd"
    execute(url, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    pasted = url.replace("postgresql://postgres@", f"postgresql://{role}:{password}@")
    path = tmp_path / "fleet.toml"
    path.write_text('[hub]\nurl_env = "HUB_URL"\n')
    done = run_cli(["status", "--json"], fleet=path, env={"HUB_URL": pasted})
    assert done.returncode == 0, done.stdout + done.stderr  # reached; unversioned is not an error
    assert '"state": "unversioned"' in done.stdout and password not in done.stdout + done.stderr


def test_a_table_given_as_a_value_is_named_in_toml_words(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('hub = "postgresql://postgres@127.0.0.1:1/hub"\n')
    done = run_cli(["status"], fleet=tmp_path / "fleet.toml")
    refused(done, "hub: must be a table")
    assert "HubFile" not in done.stderr and "instance of" not in done.stderr
