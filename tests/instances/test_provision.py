"""Provisioning: the answers model, the generated files and SQL, and `provision --apply` end to end."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

import ophelia_db
from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import load_fleet
from ophelia_db.instances import answers as provision
from ophelia_db.instances import sql as sqlgen
from ophelia_db.instances.apply import STEPS, add_to_fleet, apply, instance_target
from ophelia_db.instances.files import write_outputs
from ophelia_db.instances.seed import SeedRow
from ophelia_db.local.binaries import find_bin_dir
from tests.helpers import ROOT, MakeDatabase
from tests.instances.support import (
    ANON_KEY,
    HeadDatabase,
    answers_data,
    fleet_with_hub,
    invoke,
    provisioned,
    registry_row,
    rows,
    run_cli,
    scalar,
    vault_rows,
)

pytestmark = pytest.mark.pg
# The head_template/head_database fixtures.
NASTY = [
    "L'Île-Rousse",
    "Università di Corsica",
    "dollars $$ quoted $$ and $tag$ body $tag$",
    "back\\slash \\' \\\\ E'\\n' ends with \\",
    "double \"quotes\" and 'single' and ''doubled''",
    "line one\nline two\r\nline three\ttab\x0bvt",
    "'; DROP TABLE public.instance_config; --",
    "unicode ✓ 🏝️ ñ ß œ \u2028 separator",
    "%s %(name)s {} {0} :'psql_var' :psql_var",
    "-- not a comment\n/* nor this */ \\echo nor this",
]


def psql(url: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Execute a generated file as an operator pasting it into psql would."""
    return subprocess.run(
        [str(find_bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path), url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "proposal"),
    [
        ("L'Île-Rousse", "l-ile-rousse"),
        ("Università di Corsica", "universita-di-corsic"),
        ("Ville de Corte", "ville-de-corte"),
        ("Œuvre   Ærienne!!", "oeuvre-aerienne"),
        ("Communauté de communes du Centre Corse", "communaute-de-commun"),
        ("--- ???", ""),
    ],
)
def test_subdomain_is_proposed_from_the_name(name: str, proposal: str) -> None:
    assert provision.propose_subdomain(name) == proposal
    assert len(proposal) <= 20


def test_one_model_validates_every_answer() -> None:
    answers = provision.build_answers(answers_data(subdomain="", community_name="L'Île-Rousse", code=None))
    assert answers.subdomain == "l-ile-rousse"
    assert provision.build_answers(answers_data(map_center="42.5 , 8.9")).map_center == (42.5, 8.9)
    assert provision.build_answers(answers_data(code="2b096")).code == "2B096"
    bad = {
        "contact_email": ("not-an-email", "contact_email: 'not-an-email' is not an email address"),
        "subdomain": ("Corte_2", "subdomain: 'Corte_2' is not a subdomain"),
        "code": ("12", "'12' is not an INSEE commune code"),
        "map_center": ("95, 9", "map_center latitude: 95 should be less than or equal to 90"),
        "community_name": ("two\nlines", "community_name: must be one line"),
        "database_url_env": ("postgresql://x", "is not an environment variable name"),
        "supabase_url": (
            "https://user:pw@x.supabase.co",
            "supabase_url: not an https URL without credentials",
        ),
        "api_key_envs": ({"COMMUNITY_NAME": "X"}, "would overwrite seeded vault keys"),
        "colour": ("red", "colour: not an answer of provisioning; see instances/instance-schema.json"),
        "contact_mail": (
            "a@b.fr",
            "contact_mail: not an answer of provisioning; did you mean 'contact_email'?",
        ),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(ConfigError) as caught:
            provision.build_answers(answers_data(**{field: value}))
        assert message in caught.value.message, field
    with pytest.raises(ConfigError, match="UAI"):
        provision.build_answers(answers_data(community_type="university", code="2B096"))
    with pytest.raises(ConfigError, match="is not a subdomain"):
        provision.check_answer("subdomain", "Not Valid")


def test_instance_schema_json_stays_in_sync_with_the_model(tmp_path: Path) -> None:
    committed = ROOT / "instances" / "instance-schema.json"
    assert committed.read_text(encoding="utf-8") == provision.schema_text(), (
        "instances/instance-schema.json is stale: regenerate it with "
        "`python -c 'from ophelia_db.instances import answers; print(answers.schema_text(), end=\"\")'"
        " > instances/instance-schema.json`"
    )
    schema = json.loads(committed.read_text(encoding="utf-8"))
    assert not provision.SECRET_FIELDS & schema["properties"].keys()
    assert schema["additionalProperties"] is False
    written = json.loads(provision.answers_json(provision.build_answers(answers_data())))
    assert written.keys() <= schema["properties"].keys()
    assert set(schema["required"]) <= written.keys()


def test_secrets_are_refused_in_an_answers_file(tmp_path: Path) -> None:
    path = tmp_path / "corte.json"
    path.write_text(json.dumps({**answers_data(), "supabase_anon_key": "eyJsecret"}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        provision.load_answers(path)
    assert "supabase_anon_key" in caught.value.message and "eyJsecret" not in caught.value.message
    path.write_text('{\n  "city": ,\n}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"corte.json:2: invalid JSON"):
        provision.load_answers(path)


# --- the generated SQL ----------------------------------------------------------------------------


def test_generated_statements_round_trip_any_value_byte_for_byte(
    head_database: HeadDatabase, tmp_path: Path
) -> None:
    url = head_database("roundtrip")
    seeds = [SeedRow(f"NASTY_{i}", text, "test", text) for i, text in enumerate(NASTY)]
    seeds += [
        SeedRow("NESTED", {"names": NASTY, "n": 1.5, "ok": True, "none": None}, "test", "nested"),
        SeedRow("A_LIST", [42.0, 9.0, "x\ny"], "test", "list"),
        SeedRow("A_SECRET", NASTY[3] + NASTY[5], "api", "secret", is_secret=True),
    ]
    script = tmp_path / "nasty.sql"
    script.write_text("\n".join(sqlgen.vault_statements(seeds)) + "\n", encoding="utf-8")

    done = psql(url, script)
    assert done.returncode == 0, done.stderr

    stored = vault_rows(url)
    for seed in seeds:
        row = stored[seed.key]
        assert row["value"] == seed.value, seed.key
        assert row["description"] == seed.description, seed.key
        assert (row["is_secret"], row["category"]) == (seed.is_secret, seed.category)
    texts = dict(
        rows(url, "SELECT key, value #>> '{}' FROM public.instance_config WHERE key LIKE 'NASTY_%%'")
    )
    assert texts == {seed.key: seed.value for seed in seeds[: len(NASTY)]}

    # Running it again changes nothing, not even updated_at or version.
    assert psql(url, script).returncode == 0
    assert vault_rows(url) == stored


def test_generated_files_round_trip_names_and_secrets(head_database: HeadDatabase, tmp_path: Path) -> None:
    instance, hub = head_database("inst"), head_database("hub")
    name = 'L\'Île-Rousse $$ \\ "q"'
    secret = "sk-\n$$'\"\\end"
    anon = "anon'key\\with$$quotes"
    data = answers_data(
        "lisula", community_name=name, city="Università di Corsica", region_name="Corse 'du Sud'", code=None
    )
    answers = provision.build_answers({**data, "api_keys": {"MISTRAL_API_KEY": secret}})
    outputs = write_outputs(answers, tmp_path, include_secrets=True, env={"TEST_ANON_KEY": anon})

    assert set(outputs.secret_files) == {outputs.vault_sql, outputs.registry_sql}
    for path in outputs.secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(outputs.answers_file.stat().st_mode) == 0o644
    assert secret not in outputs.answers_file.read_text() and anon not in outputs.answers_file.read_text()
    assert outputs.left_out == ()

    for url, path in ((instance, outputs.vault_sql), (hub, outputs.registry_sql)):
        done = psql(url, path)
        assert done.returncode == 0, done.stderr
    stored = vault_rows(instance)
    assert stored["COMMUNITY_NAME"]["value"] == name
    assert stored["CITY"]["value"] == "Università di Corsica"
    assert stored["REGION_NAME"]["value"] == "Corse 'du Sud'"
    assert stored["MISTRAL_API_KEY"]["value"] == secret and stored["MISTRAL_API_KEY"]["is_secret"]
    assert name in stored["WELCOME_MESSAGE"]["value"]
    row = registry_row(hub, "lisula")
    assert row is not None
    assert (row["community_name"], row["supabase_anon_key"], row["status"]) == (name, anon, "active")
    assert row["metadata"]["city"] == "Università di Corsica"

    for url, path in ((instance, outputs.vault_sql), (hub, outputs.registry_sql)):
        assert psql(url, path).returncode == 0
    assert vault_rows(instance) == stored
    assert registry_row(hub, "lisula") == row


def test_secrets_are_placeholders_unless_asked(head_database: HeadDatabase, tmp_path: Path) -> None:
    url = head_database("inst")
    data = answers_data(api_key_envs={"MISTRAL_API_KEY": "TEST_MISTRAL"})
    env = {"TEST_ANON_KEY": ANON_KEY, "TEST_MISTRAL": "mistral-secret-value"}
    outputs = write_outputs(provision.build_answers(data), tmp_path, env=env)

    assert outputs.secret_files == ()
    assert set(outputs.left_out) == {"MISTRAL_API_KEY", "SUPABASE_ANON_KEY"}
    for path in (outputs.answers_file, outputs.vault_sql, outputs.registry_sql):
        text = path.read_text(encoding="utf-8")
        assert "mistral-secret-value" not in text and ANON_KEY not in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    vault_sql = outputs.vault_sql.read_text(encoding="utf-8")
    assert '-- INSERT INTO "public"."instance_config"' in vault_sql
    assert "<SECRET MISTRAL_API_KEY" in vault_sql and "SECRETS LEFT OUT" in vault_sql
    assert "<SECRET SUPABASE_ANON_KEY" in outputs.registry_sql.read_text(encoding="utf-8")
    assert json.loads(outputs.answers_file.read_text())["api_key_envs"] == {"MISTRAL_API_KEY": "TEST_MISTRAL"}

    # Pasting the file as it is never stores a placeholder.
    assert psql(url, outputs.vault_sql).returncode == 0
    assert "MISTRAL_API_KEY" not in vault_rows(url)


def test_cli_writes_the_files_and_warns_about_secrets(tmp_path: Path) -> None:
    fleet = fleet_with_hub(tmp_path, "postgresql://postgres@127.0.0.1:1/hub")
    source = tmp_path / "answers.json"
    source.write_text(json.dumps(answers_data()), encoding="utf-8")
    env = {"TEST_ANON_KEY": ANON_KEY}

    plain = invoke(["provision", "--from", str(source), "--fleet", str(fleet)], env=env)
    assert plain.exit_code == 0, plain.stderr
    assert f"wrote {tmp_path / 'instances' / 'corte.json'}" in plain.stdout
    assert "secrets left out as placeholders: SUPABASE_ANON_KEY" in plain.stderr
    assert "--apply" in plain.stdout

    secret = invoke(["provision", "--from", str(source), "--include-secrets", "--fleet", str(fleet)], env=env)
    assert secret.exit_code == 0, secret.stderr
    assert "corte-registry.sql holds secrets (mode 0600)" in secret.stderr
    assert "left out" not in secret.stderr  # nothing was: the note is true or absent
    assert ANON_KEY not in secret.stdout + secret.stderr
    assert f"unchanged {tmp_path / 'instances' / 'corte.json'}" in secret.stdout

    as_json = invoke(["provision", "--from", str(source), "--json", "--fleet", str(fleet)], env=env)
    assert as_json.exit_code == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["apply"] is None and len(document["outputs"]["files"]) == 4
    secret_json = invoke(
        ["provision", "--from", str(source), "--include-secrets", "--json", "--fleet", str(fleet)], env=env
    )
    json.loads(secret_json.stdout)  # stdout holds only the document; the warning is on stderr
    assert "corte-registry.sql holds secrets (mode 0600)" in secret_json.stderr

    bad = invoke(["provision", "--from", str(source), "--email", "nope", "--fleet", str(fleet)])
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: ") and "contact_email" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    nothing = invoke(["provision", "--fleet", str(fleet)])
    assert nothing.exit_code == 2 and "nothing to provision" in nothing.stderr

    # Every problem at once, in one line, in plain words: not the first one and "N more".
    several = invoke(["provision", "--type", "town", "--name", "Calvi", "--fleet", str(fleet)])
    assert (several.exit_code, several.stderr) == (
        2,
        "error: community_type: 'town' is not one of municipality, intercommunality, university, "
        "association, region; city: missing; contact_email: missing; map_center: missing; "
        "database_url_env: missing\n",
    )


# --- fleet.toml -----------------------------------------------------------------------------------

FLEET = """\
# top comment: keep me
[defaults]
jobs = 2  # inline comment

[hub]
url = "postgresql://postgres@127.0.0.1:1/hub"

# the first instance
[instances.ajaccio]
community_name = "Ajaccio"
community_type = "municipality"
url = "postgresql://postgres@127.0.0.1:1/ajaccio"
tags = ["canary"]  # first to upgrade
"""


def test_fleet_toml_keeps_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET, encoding="utf-8")
    answers = provision.build_answers(answers_data(community_name="L'Île-Rousse", subdomain="lisula"))

    assert add_to_fleet(path, answers) is True
    text = path.read_text(encoding="utf-8")
    assert text.startswith(FLEET)
    assert text[len(FLEET) :] == (
        "\n[instances.lisula]\n"
        'community_name = "L\'Île-Rousse"\n'
        'community_type = "municipality"\n'
        'url_env = "TEST_LISULA_URL"\n'
    )
    assert list(load_fleet(path, environ={}).instances) == ["ajaccio", "lisula"]

    assert add_to_fleet(path, answers) is False
    assert path.read_text(encoding="utf-8") == text

    renamed = provision.build_answers(answers_data(community_name="Isula Rossa", subdomain="lisula"))
    assert add_to_fleet(path, renamed) is True
    assert path.read_text(encoding="utf-8") == text.replace("L'Île-Rousse", "Isula Rossa")

    bare = tmp_path / "bare" / "fleet.toml"
    bare.parent.mkdir()
    bare.write_text('[hub]\nurl = "postgresql://postgres@127.0.0.1:1/hub"\n', encoding="utf-8")
    assert add_to_fleet(bare, answers) is True
    assert list(load_fleet(bare, environ={}).instances) == ["lisula"]


# --- apply ----------------------------------------------------------------------------------------


def snapshot(hub: str, instance: str, fleet: Path) -> dict[str, object]:
    return {
        "registry": registry_row(hub, "corte"),
        "vault": vault_rows(instance),
        "history": rows(instance, "SELECT * FROM public.schema_migrations ORDER BY id"),
        "fleet": fleet.read_bytes(),
    }


def test_provision_from_json_apply_brings_an_empty_database_to_a_registered_instance(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    instance, hub = make_database("corte"), head_database("hub")
    fleet = fleet_with_hub(tmp_path, hub)
    original = fleet.read_text(encoding="utf-8")
    (tmp_path / ".env").write_text(f"TEST_CORTE_URL={instance}\nTEST_ANON_KEY={ANON_KEY}\n", encoding="utf-8")
    source = tmp_path / "corte-answers.json"
    source.write_text(json.dumps(answers_data(), ensure_ascii=False), encoding="utf-8")

    done = run_cli(["provision", "--from", str(source), "--apply", "--fleet", str(fleet)], cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    checklist = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line[:4] for line in checklist] == ["[x] "] * len(STEPS)
    assert "corte: provisioned" in done.stdout
    assert ANON_KEY not in done.stdout + done.stderr

    status = run_cli(["status", "--json", "--fleet", str(fleet)], cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    states = {row["name"]: row for row in json.loads(status.stdout)["instances"]}
    assert states["corte"]["state"] == "up-to-date" and "registry_status" not in states["corte"]

    row = registry_row(hub, "corte")
    assert row is not None
    assert (row["status"], row["community_name"], row["supabase_anon_key"]) == (
        "active",
        "Ville de Corte",
        ANON_KEY,
    )
    assert (row["supabase_url"], row["contact_email"]) == (
        "https://corte.supabase.example",
        "mairie@corte.example",
    )
    assert row["schema_version"] == scalar(instance, "SELECT current_version FROM public.schema_version")
    stored = vault_rows(instance)
    assert stored["COMMUNITY_NAME"]["value"] == "Ville de Corte" and stored["BOT_NAME"]["value"] == "Ophélia"
    assert stored["GOVERNING_BODY"]["value"] == "conseil municipal"
    assert stored["MAP_CENTER"]["value"] == [42.3061, 9.15]
    text = fleet.read_text(encoding="utf-8")
    assert text.startswith(original) and "[instances.corte]" in text and 'url_env = "TEST_CORTE_URL"' in text

    # Twice changes nothing: not a registry timestamp, not a vault version, not a byte of fleet.toml.
    before = snapshot(hub, instance, fleet)
    again = invoke(["provision", "--from", str(source), "--apply", "--fleet", str(fleet)])
    assert again.exit_code == 0, again.stdout + again.stderr
    assert "corte: provisioned (nothing to change)" in again.stdout
    assert snapshot(hub, instance, fleet) == before


def test_interactive_provisioning_asks_validates_and_ends_with_the_checklist(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    instance, hub = make_database("univ"), head_database("hub")
    fleet = fleet_with_hub(tmp_path, hub)
    answers = [
        "univ",  # not a community type: asked again
        "university",
        "Università di Corsica",
        "Corte",
        "",  # accept the proposed subdomain
        "2B096",  # not a UAI code: asked again
        "0200860D",
        "",  # region code COR
        "",  # region name Corse
        "not-an-email",
        "scola@universita.example",
        "42.30, 9.15",
        "",  # the proposed environment variable
        "https://univ.supabase.example",
        "typed-anon-key-0001",
        "MISTRAL_API_KEY",
        "typed-mistral-secret-0002",
        "",  # no more API keys
        "y",  # apply now
    ]
    env = {"OPHELIA_UNIVERSITA_DI_CORSIC_URL": instance}

    result = invoke(
        ["provision", "--interactive", "--fleet", str(fleet)], env=env, input="\n".join(answers) + "\n"
    )

    assert result.exit_code == 0, result.stdout + result.stderr
    out = result.stdout
    assert 'Create the Supabase project "ophelia-<subdomain>" in region eu-west-3' in out
    assert "Settings > API" in out and "ophelia-universita-di-corsic (region eu-west-3)" in out
    assert "choose one of" in out and "is not a UAI code" in out and "is not an email address" in out
    tail = out[out.index("Provisioning checklist:") :].splitlines()[1:]
    assert [line.split(":")[0] for line in tail[: len(STEPS)]] == [f"[x] {s}" for s in STEPS]
    assert "typed-anon-key-0001" not in out + result.stderr
    assert "typed-mistral-secret-0002" not in out + result.stderr

    saved = json.loads((tmp_path / "instances" / "universita-di-corsic.json").read_text(encoding="utf-8"))
    assert saved["community_name"] == "Università di Corsica" and saved["code"] == "0200860D"
    assert "typed" not in json.dumps(saved)
    # The typed secrets are kept for the next `provision --from ... --apply`: in .env, named by the file.
    prefix = "OPHELIA_UNIVERSITA_DI_CORSIC"
    assert saved["supabase_anon_key_env"] == f"{prefix}_ANON_KEY"
    assert saved["api_key_envs"] == {"MISTRAL_API_KEY": f"{prefix}_MISTRAL_API_KEY"}
    dotenv = tmp_path / ".env"
    assert dotenv.stat().st_mode & 0o777 == 0o600
    assert "typed-anon-key-0001" in dotenv.read_text() and "typed-mistral-secret-0002" in dotenv.read_text()
    assert f"saved {prefix}_ANON_KEY, {prefix}_MISTRAL_API_KEY in {dotenv} (mode 0600)" in result.stderr
    stored = vault_rows(instance)
    assert stored["GOVERNING_BODY"]["value"] == "conseil d'administration"
    assert stored["MISTRAL_API_KEY"]["value"] == "typed-mistral-secret-0002"
    assert stored["MISTRAL_API_KEY"]["is_secret"] is True
    row = registry_row(hub, "universita-di-corsic")
    assert row is not None and (row["status"], row["supabase_anon_key"]) == ("active", "typed-anon-key-0001")


def test_apply_says_when_the_app_cannot_use_the_instance_yet(
    head_database: HeadDatabase, tmp_path: Path
) -> None:
    instance, hub = head_database("corte"), head_database("hub")
    answers = provision.build_answers(answers_data(supabase_url=None, supabase_anon_key_env=None))

    done = apply(load_fleet(fleet_with_hub(tmp_path, hub)), answers, env={"TEST_CORTE_URL": instance})

    assert done.exit_code == 0, done.as_record()
    assert {s.name: s.detail for s in done.steps}["registry row active"] == (
        "active; not usable by the app yet: no Supabase URL given (supabase_url, --supabase-url) "
        "and no anon key given (supabase_anon_key_env)"
    )


def test_apply_stops_at_the_first_failure_and_resumes(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    instance, hub = make_database("corte"), make_database("hub")
    fleet_path = fleet_with_hub(tmp_path, hub)
    answers = provision.build_answers(answers_data())
    env = {"TEST_CORTE_URL": instance, "TEST_ANON_KEY": ANON_KEY}

    stopped = apply(load_fleet(fleet_path), answers, env=env)
    assert stopped.exit_code == 2
    states = [(s.name, s.state) for s in stopped.steps]
    assert states[:2] == [("project reachable", "ok"), ("hub reachable", "failed")]
    assert all(state == "not run" for _, state in states[2:])
    assert "ophelia-db upgrade --instance hub" in stopped.steps[1].detail
    assert rows(instance, "SELECT to_regclass('public.alembic_version')") == [(None,)]

    # Interrupted later: the hub row is pending and the instance half migrated.
    fleet = load_fleet(fleet_path)
    assert ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1).exit_code == 0
    target = instance_target(fleet, answers, env)
    assert ophelia_db.upgrade(fleet, [target], to="0002", jobs=1).exit_code == 0
    rows(hub, "UPDATE public.instance_registry SET status = 'pending' WHERE subdomain = 'corte'")

    resumed = apply(fleet, answers, env=env)
    assert resumed.exit_code == 0, resumed.as_record()
    by_name = {s.name: s for s in resumed.steps}
    assert by_name["registry row pending"].state == "ok"
    assert (
        by_name["migrations applied"].state == "done" and "0002 -> " in by_name["migrations applied"].detail
    )
    assert by_name["registry row active"].state == "done"
    assert registry_row(hub, "corte")["status"] == "active"  # type: ignore[index]

    rows(hub, "UPDATE public.instance_registry SET status = 'archived' WHERE subdomain = 'corte'")
    refused = apply(load_fleet(fleet_path), answers, env=env)
    assert refused.exit_code == 2 and "ophelia-db activate corte" in refused.steps[1].detail

    hub_name = provision.build_answers(answers_data(subdomain="hub"))
    assert apply(fleet, hub_name, env={"TEST_HUB_URL": hub}).steps[0].state == "failed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subdomain", "-"),
        ("subdomain", "--x--"),
        ("code", "00000"),
        ("contact_email", "a@corte.example;drop"),
        ("supabase_url", "http://abcd.supabase.co"),
        ("map_center", "NaN,NaN"),
    ],
)
def test_loose_answers_are_refused(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=field):
        provision.build_answers(answers_data(**{field: value}))


def test_the_example_answers_file_follows_the_schema() -> None:
    example = ROOT / "instances" / "universita.example.json"
    schema = json.loads((ROOT / "instances" / "instance-schema.json").read_text(encoding="utf-8"))
    data = json.loads(example.read_text(encoding="utf-8"))
    assert set(data) <= set(schema["properties"]) and set(schema["required"]) <= set(data)
    answers = provision.load_answers(example)
    assert (answers.subdomain, answers.community_type, answers.code) == (
        "universita",
        "university",
        "0200860D",
    )


def test_provisioning_again_on_another_database_needs_replace(
    make_database: MakeDatabase, head_database: HeadDatabase, tmp_path: Path
) -> None:
    hub, first, other = head_database("hub"), make_database("corte"), make_database("other")
    path, env = provisioned(tmp_path, hub, first)
    answers = provision.build_answers(answers_data(database_url_env="TEST_OTHER_URL"))
    env = {**env, "TEST_OTHER_URL": other}

    refused = apply(load_fleet(path), answers, env=env)

    assert refused.exit_code == 2, refused.as_record()
    (failed,) = [step for step in refused.steps if step.state == "failed"]
    assert (
        "already in" in failed.detail
        and "--replace" in failed.detail
        and "nothing was changed" in failed.detail
    )
    assert scalar(other, "SELECT to_regclass('public.alembic_version') IS NULL") is True
    assert 'url_env = "TEST_CORTE_URL"' in path.read_text(encoding="utf-8")

    replaced = apply(load_fleet(path), answers, env=env, replace=True)

    assert replaced.exit_code == 0, replaced.as_record()
    text = path.read_text(encoding="utf-8")
    assert 'url_env = "TEST_OTHER_URL"' in text and "TEST_CORTE_URL" not in text
    assert load_fleet(path, environ=env).get("corte").dsn() == other
