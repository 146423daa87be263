"""The instance vault: seeded keys per community type, and `ophelia-db config list|get|set|unset`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ophelia_db.errors import ConfigError
from ophelia_db.instances import answers as provision
from ophelia_db.instances import seed, vault
from tests.helpers import write_fleet
from tests.instances.support import (
    HeadDatabase,
    answers_data,
    invoke,
    rows,
    vault_rows,
)

pytestmark = pytest.mark.pg
# The head_template/head_database fixtures.
SECRET = "sk-vault-S3cret-value-0042"


@pytest.mark.parametrize(
    ("kind", "body", "decision"),
    [
        ("municipality", "conseil municipal", "délibération"),
        ("intercommunality", "conseil communautaire", "délibération"),
        ("university", "conseil d'administration", "délibération"),
        ("association", "assemblée générale", "résolution"),
        ("region", "assemblée régionale", "délibération"),
    ],
)
def test_seed_rows_carry_identity_branding_map_and_wording(kind: str, body: str, decision: str) -> None:
    code = {"municipality": "2B096", "university": "0200860D"}.get(kind)
    answers = provision.build_answers(answers_data(community_type=kind, code=code))
    seeds = {row.key: row for row in seed.seed_rows(answers, {"MISTRAL_API_KEY": SECRET})}

    assert seeds["GOVERNING_BODY"].value == body and seeds["DECISION_TERM"].value == decision
    assert seeds["BOT_NAME"].value == "Ophélia"
    expected = {
        "COMMUNITY_NAME": "Ville de Corte",
        "COMMUNITY_TYPE": kind,
        "CITY": "Corte",
        "SUBDOMAIN": "corte",
        "CONTACT_EMAIL": "mairie@corte.example",
        "MAP_CENTER": [42.3061, 9.15],
        "REGION_CODE": "COR",
        "REGION_NAME": "Corse",
        "SUPABASE_URL": "https://corte.supabase.example",
    }
    assert {key: seeds[key].value for key in expected} == expected
    assert seeds["MAP_ZOOM"].value == seed.MAP_ZOOM[kind]
    assert all(seeds[key].is_public for key in seed.APP_PUBLIC_KEYS)
    assert not seeds["CONTACT_EMAIL"].is_public
    secret = seeds["MISTRAL_API_KEY"]
    assert (secret.is_secret, secret.is_public, secret.value) == (True, False, SECRET)
    # Answers follow the answers; defaults (branding, wording, zoom) are written once.
    assert seeds["COMMUNITY_NAME"].overwrite and not seeds["BOT_NAME"].overwrite
    assert not seeds["GOVERNING_BODY"].overwrite and not seeds["MAP_ZOOM"].overwrite


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("hello", "hello"),
        ("42", 42),
        ("[42.0, 9.0]", [42.0, 9.0]),
        ('"42"', "42"),
        ("true", True),
        ('{"a": 1}', {"a": 1}),
        ("NaN", "NaN"),
        ("Ma Communauté", "Ma Communauté"),
    ],
)
def test_values_are_json_and_plain_strings_become_json_strings(text: str, stored: object) -> None:
    assert vault.parse_value(text) == stored


def fleet_of(tmp_path: Path, head_database: HeadDatabase, n: int) -> tuple[Path, dict[str, str]]:
    urls = {f"inst{i}": head_database(f"inst{i}") for i in range(1, n + 1)}
    return write_fleet(tmp_path, head_database("hub"), urls), urls


def test_config_set_get_list_unset(head_database: HeadDatabase, tmp_path: Path) -> None:
    fleet, urls = fleet_of(tmp_path, head_database, 1)
    url = urls["inst1"]
    base = ["--fleet", str(fleet)]

    created = invoke(["config", "set", "GREETING", "Bonjour à tous", "-i", "inst1", "--public", *base])
    assert created.exit_code == 0, created.stderr
    assert created.stdout == "inst1: GREETING created (version 1)\n"
    assert rows(url, "SELECT value::text, is_public FROM public.instance_config WHERE key = 'GREETING'") == [
        ('"Bonjour à tous"', True)
    ]
    assert invoke(["config", "set", "MAP_ZOOM", "13", "-i", "inst1", *base]).exit_code == 0
    assert rows(url, "SELECT jsonb_typeof(value) FROM public.instance_config WHERE key = 'MAP_ZOOM'") == [
        ("number",)
    ]

    changed = invoke(["config", "set", "GREETING", '"Salut"', "-i", "inst1", *base])
    assert changed.stdout == "inst1: GREETING set (version 2)\n"
    row = vault_rows(url)["GREETING"]
    assert (row["value"], row["previous_value"], row["version"], row["is_public"]) == (
        "Salut",
        "Bonjour à tous",
        2,
        True,
    )
    same = invoke(["config", "set", "GREETING", "Salut", "-i", "inst1", *base])
    assert same.stdout == "inst1: GREETING unchanged (version 2)\n"

    got = invoke(["config", "get", "GREETING", "-i", "inst1", *base])
    assert (got.exit_code, got.stdout) == (0, '"Salut"\n')
    record = json.loads(invoke(["config", "get", "GREETING", "-i", "inst1", "--json", *base]).stdout)
    assert (record["value"], record["version"], record["is_public"]) == ("Salut", 2, True)

    listed = invoke(["config", "list", "-i", "inst1", *base])
    assert listed.exit_code == 0
    assert any(line.split()[:2] == ["GREETING", '"Salut"'] for line in listed.stdout.splitlines())

    missing = invoke(["config", "get", "NOPE", "-i", "inst1", *base])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: inst1: NOPE is not set")
    bad = invoke(["config", "set", "lower-case", "x", "-i", "inst1", *base])
    assert bad.exit_code == 2 and "UPPER_SNAKE_CASE" in bad.stderr

    # Deleting is asked first (the row goes with its previous value); not confirmed, nothing goes.
    refused = invoke(["config", "unset", "GREETING", "-i", "inst1", *base])
    assert refused.exit_code == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith('inst1: GREETING = "Salut", version 2, would be deleted\n'), (
        refused.stderr
    )
    assert refused.stderr.endswith("error: not confirmed (pass --yes); nothing was deleted\n"), refused.stderr
    assert "GREETING" in vault_rows(url)
    unset = ["config", "unset", "GREETING", "-i", "inst1", "--yes", *base]
    assert invoke(unset).stdout == "inst1: GREETING removed\n"
    assert invoke(unset).stdout == "inst1: GREETING was not set\n"
    nothing_to_ask = invoke(["config", "unset", "GREETING", "-i", "inst1", *base])
    assert (nothing_to_ask.exit_code, nothing_to_ask.stdout) == (0, "inst1: GREETING was not set\n")
    assert "GREETING" not in vault_rows(url)


def test_secrets_are_masked_unless_revealed(head_database: HeadDatabase, tmp_path: Path) -> None:
    fleet, urls = fleet_of(tmp_path, head_database, 1)
    base = ["-i", "inst1", "--fleet", str(fleet)]

    # From stdin, so that the secret is in no command line.
    stored = invoke(["config", "set", "MISTRAL_API_KEY", "--secret", *base], input=SECRET + "\n")
    assert stored.exit_code == 0, stored.stderr
    assert stored.stdout == "inst1: MISTRAL_API_KEY created (version 1, secret)\n"
    row = vault_rows(urls["inst1"])["MISTRAL_API_KEY"]
    assert (row["value"], row["is_secret"], row["is_public"]) == (SECRET, True, False)

    for args in (["config", "list", *base], ["config", "get", "MISTRAL_API_KEY", *base]):
        for extra in ([], ["--json"]):
            shown = invoke([*args, *extra])
            assert shown.exit_code == 0
            assert SECRET not in shown.stdout + shown.stderr
            assert "***" in shown.stdout
    revealed = invoke(["config", "get", "MISTRAL_API_KEY", "--reveal", *base])
    assert revealed.stdout == json.dumps(SECRET) + "\n"

    # Changing the value keeps it secret; a secret cannot be made public.
    invoke(["config", "set", "MISTRAL_API_KEY", "sk-new-value-0043", *base])
    assert vault_rows(urls["inst1"])["MISTRAL_API_KEY"]["is_secret"] is True
    public = invoke(["config", "set", "MISTRAL_API_KEY", "x", "--public", *base])
    assert public.exit_code == 2 and "never public" in public.stderr
    warned = invoke(["config", "set", "OTHER_TOKEN", "in-clear", *base])
    assert "looks like a secret" in warned.stderr


def test_compare_a_key_across_the_fleet(head_database: HeadDatabase, tmp_path: Path) -> None:
    fleet, _ = fleet_of(tmp_path, head_database, 2)
    base = ["--fleet", str(fleet)]
    invoke(["config", "set", "MAP_ZOOM", "13", "-i", "inst1", *base])
    invoke(["config", "set", "MAP_ZOOM", "11", "-i", "inst2", *base])
    invoke(["config", "set", "API_TOKEN", "tok-1234-secret", "--secret", "-i", "inst1", *base])

    got = invoke(["config", "get", "MAP_ZOOM", "--all", *base])
    assert got.exit_code == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines == ["hub  (not set)", "inst1  13", "inst2  11", "MAP_ZOOM: 3 different values"]

    listed = invoke(["config", "list", "--instance", "inst1", "--instance", "inst2", *base])
    assert listed.exit_code == 0
    assert "MAP_ZOOM  differs  inst1=13  inst2=11" in listed.stdout
    assert "API_TOKEN  differs  inst1=***  inst2=-" in listed.stdout
    assert "tok-1234-secret" not in listed.stdout

    record = json.loads(invoke(["config", "get", "MAP_ZOOM", "--all", "--json", *base]).stdout)
    assert [(i["instance"], [e["value"] for e in i["entries"]]) for i in record["instances"]] == [
        ("hub", []),
        ("inst1", [13]),
        ("inst2", [11]),
    ]


@pytest.mark.parametrize(("text", "needle"), [('{"a":', "not valid JSON"), ("1e999", "out of range")])
def test_a_value_that_starts_like_json_must_be_json(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        vault.parse_value(text)
    assert vault.parse_value(text, as_string=True) == text


def test_a_secret_made_public_never_shows_its_old_value(head_database: HeadDatabase, tmp_path: Path) -> None:
    fleet, urls = fleet_of(tmp_path, head_database, 1)
    base = ["-i", "inst1", "--fleet", str(fleet)]
    assert invoke(["config", "set", "TOKEN_X", "--secret", *base], input=SECRET + "\n").exit_code == 0
    assert invoke(["config", "set", "TOKEN_X", "--secret", *base], input="second-secret\n").exit_code == 0

    public = invoke(["config", "set", "TOKEN_X", "now-public", "--no-secret", *base])

    assert public.exit_code == 0, public.stderr
    assert "was secret" in public.stderr and "cleared from previous_value" in public.stderr
    assert rows(urls["inst1"], "SELECT previous_value FROM public.instance_config WHERE key = 'TOKEN_X'") == [
        (None,)
    ]
    empty = invoke(["config", "set", "OTHER_KEY", "--secret", *base], input="\n")
    assert (empty.exit_code, empty.stderr) == (
        2,
        "error: OTHER_KEY: no value given (empty input); nothing was stored\n",
    )
    bad = invoke(["config", "set", "MAP_ZOOM", '{"a":', *base])
    assert bad.exit_code == 2 and "--string" in bad.stderr


def test_secrets_that_differ_are_told_apart_without_being_shown(
    head_database: HeadDatabase, tmp_path: Path
) -> None:
    fleet, _ = fleet_of(tmp_path, head_database, 2)
    base = ["--fleet", str(fleet)]
    for name, secret in (("inst1", "first-secret-1"), ("inst2", "second-secret-2")):
        assert (
            invoke(["config", "set", "API_TOKEN", "--secret", "-i", name, *base], input=secret).exit_code == 0
        )

    got = invoke(["config", "get", "API_TOKEN", "-i", "inst1", "-i", "inst2", *base])

    assert got.exit_code == 0, got.stderr
    assert "first-secret-1" not in got.stdout and "second-secret-2" not in got.stdout
    assert got.stdout.splitlines()[-1] == "API_TOKEN: 2 different values"
