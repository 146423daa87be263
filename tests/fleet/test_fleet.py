"""fleet.toml: loading, validation (one ConfigError line each), .env, selection. No database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ophelia_db.durations import parse_duration
from ophelia_db.errors import ConfigError, ExitCode
from ophelia_db.fleet.config import COMMUNITY_TYPES, find_fleet_file, load_fleet
from ophelia_db.redaction import redact
from tests.helpers import ROOT

REPO = ROOT
HUB = '[hub]\nurl = "postgresql://postgres@127.0.0.1:5432/hub"\n'
CORTE = (
    "[instances.corte]\n"
    'community_name = "Ville de Corte"\n'
    'community_type = "municipality"\n'
    'url = "postgresql://ophelia@db.internal:5432/corte"\n'
)
SUBDOMAIN_HINT = "is not a valid subdomain (lowercase letters, digits and '-', at most 20 characters)"


def instance(name: str, *lines: str, url: str | None = "postgresql://ophelia@db.internal:5432/x") -> str:
    body = [f"[instances.{name}]", f'community_name = "{name.title()}"', 'community_type = "municipality"']
    if url is not None:
        body.append(f'url = "{url}"')
    return "\n".join([*body, *lines]) + "\n"


def write(directory: Path, text: str, name: str = "fleet.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(directory: Path, text: str) -> tuple[Path, str]:
    """Load ``text`` as fleet.toml, expect a one-line exit-2 ConfigError, return (path, message)."""
    path = write(directory, text)
    with pytest.raises(ConfigError) as caught:
        load_fleet(path, environ={})
    assert caught.value.exit_code == ExitCode.USAGE == 2
    message = caught.value.message
    assert "\n" not in message and message.strip() == message
    return path.resolve(), message


# --- refusals --------------------------------------------------------------------------------------


def test_unknown_key_in_instance_is_named_with_its_section_and_line(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + CORTE + 'colour = "red"\n')
    assert message == f"{path}:7: unknown key 'colour' in [instances.corte]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HUB + CORTE + "[extras]\nfoo = 1\n", ":7: unknown key 'extras' in the top level"),
        (HUB + "colour = 1\n" + CORTE, ":3: unknown key 'colour' in [hub]"),
        ("[defaults]\nretries = 3\n" + HUB + CORTE, ":2: unknown key 'retries' in [defaults]"),
        (HUB + CORTE + "[local]\nport = 1\nsocket = 2\n", ":9: unknown key 'socket' in [local]"),
    ],
    ids=["top-level-table", "hub", "defaults", "local"],
)
def test_unknown_keys_elsewhere(tmp_path: Path, text: str, expected: str) -> None:
    path, message = refused(tmp_path, text)
    assert message == f"{path}{expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HUB + CORTE + 'tag = ["canary"]\n',
            ":7: unknown key 'tag' in [instances.corte]; did you mean 'tags'?",
        ),
        (
            "[defaults]\nlock_timout = 3\n" + HUB,
            ":2: unknown key 'lock_timout' in [defaults]; did you mean 'lock_timeout'?",
        ),
        (
            HUB + CORTE + "[locale]\nport = 1\n",
            ":7: unknown key 'locale' in the top level; did you mean 'local'?",
        ),
        (
            # The required key's "missing" is not what the operator needs to read: the misspelling is.
            HUB + CORTE.replace("community_type", "community_typ"),
            ":5: unknown key 'community_typ' in [instances.corte]; did you mean 'community_type'?",
        ),
    ],
    ids=["instance", "defaults", "top-level", "misspelt-required-key"],
)
def test_a_misspelt_key_is_named_with_the_key_it_resembles(tmp_path: Path, text: str, expected: str) -> None:
    path, message = refused(tmp_path, text)
    assert message == f"{path}{expected}"


@pytest.mark.parametrize("name", ["Corte", "a" * 21, "cor_te"], ids=["uppercase", "21-chars", "underscore"])
def test_bad_subdomain_is_refused(tmp_path: Path, name: str) -> None:
    path, message = refused(tmp_path, HUB + instance(name))
    assert message == f"{path}: instance name '{name}' {SUBDOMAIN_HINT}"


def test_subdomain_boundaries_are_accepted(tmp_path: Path) -> None:
    longest = "a" * 20
    fleet = load_fleet(write(tmp_path, HUB + instance(longest) + instance("ile-rousse-2")), environ={})
    assert sorted(fleet.instances) == ["a" * 20, "ile-rousse-2"]


def test_duplicate_instance_names_both_lines(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + CORTE + CORTE)
    assert message == f"{path}:7: duplicate instance 'corte' (first declared on line 3)"


def test_duplicate_instance_with_quoted_key(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + CORTE + CORTE.replace("[instances.corte]", '[instances."corte"]'))
    assert message == f"{path}:7: duplicate instance 'corte' (first declared on line 3)"


def test_instance_named_like_the_default_hub(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + instance("hub"))
    assert message == f"{path}: duplicate instance 'hub': it is also the hub's name"


def test_instance_named_like_a_renamed_hub(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + 'name = "central"\n' + instance("central"))
    assert message == f"{path}: duplicate instance 'central': it is also the hub's name"


def test_bad_hub_name(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + 'name = "The_Hub"\n' + CORTE)
    assert message == f"{path}: [hub] name 'The_Hub' must match ^[a-z0-9-]{{1,20}}$"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ophelia:Tr0ub4dor-x@db.internal:5432/corte",
        "postgresql://ophelia@db.internal:5432/corte?sslmode=require&password=Tr0ub4dor-x",
        "postgres://ophelia:Tr0ub4dor-x@db.internal/corte",
        "postgresql+psycopg://ophelia:Tr0ub4dor-x@db.internal/corte",
        "postgresql://ophelia:Tr0ub4dor-x@/corte?host=/var/run/postgresql",
        "postgresql://ophelia:Tr0ub4dor/x?y@db.internal:5432/corte",  # unescaped '/' and '?'
        "host=db.internal dbname=corte user=ophelia password=Tr0ub4dor-x",
    ],
)
def test_password_in_instance_url_is_refused_without_echoing_it(tmp_path: Path, url: str) -> None:
    path, message = refused(tmp_path, HUB + instance("corte", url=url))
    assert message == (
        f"{path}:6: instances.corte.url: holds a password; secrets never live in fleet.toml: put the URL "
        "in an environment variable (or .env beside fleet.toml) and name it with url_env"
    )
    assert "Tr0ub4dor" not in message


def test_password_in_hub_url_is_refused(tmp_path: Path) -> None:
    path, message = refused(tmp_path, '[hub]\nurl = "postgresql://postgres:Hub-S3cret@h/hub"\n' + CORTE)
    assert message.startswith(f"{path}:2: hub.url: holds a password")
    assert "url_env" in message
    assert "Hub-S3cret" not in message


def test_unset_url_env_fails_only_when_that_instance_is_selected(tmp_path: Path) -> None:
    text = HUB + instance("corte", 'url_env = "OPHELIA_CORTE_URL_UNSET"', url=None) + instance("universita")
    path = write(tmp_path, text).resolve()
    fleet = load_fleet(path, environ={})  # loading alone does not need the variable
    corte = fleet.instances["corte"]
    assert corte.url is None
    assert corte.display_url == "(no URL)"
    assert [t.name for t in fleet.select(["universita"])] == ["universita"]
    expected = (
        f"corte: environment variable OPHELIA_CORTE_URL_UNSET (url_env of [instances.corte] in {path}) "
        f"is not set; export it or add it to {tmp_path.resolve() / '.env'}"
    )
    for attempt in (lambda: fleet.select(["corte"]), corte.dsn, lambda: fleet.select(all_=True)):
        with pytest.raises(ConfigError) as caught:
            attempt()
        assert caught.value.exit_code == 2
        assert caught.value.message == expected


def test_empty_url_env_value_counts_as_unset(tmp_path: Path) -> None:
    path = write(tmp_path, HUB + instance("corte", 'url_env = "OPHELIA_CORTE_URL"', url=None))
    fleet = load_fleet(path, environ={"OPHELIA_CORTE_URL": ""})
    with pytest.raises(ConfigError, match=r"environment variable OPHELIA_CORTE_URL .* is not set"):
        fleet.select(["corte"])


@pytest.mark.parametrize(
    "lines",
    [['url_env = "X"'], []],
    ids=["both", "neither"],
)
def test_exactly_one_of_url_and_url_env(tmp_path: Path, lines: list[str]) -> None:
    url = "postgresql://ophelia@h/corte" if lines else None
    path, message = refused(tmp_path, HUB + instance("corte", *lines, url=url))
    assert message == f'{path}: [instances.corte] needs exactly one of url_env = "VAR" or url = "..."'


def test_hub_needs_a_url(tmp_path: Path) -> None:
    path, message = refused(tmp_path, "[hub]\n" + CORTE)
    assert message == f'{path}: [hub] needs exactly one of url_env = "VAR" or url = "..."'


def test_unknown_community_type_lists_the_allowed_values(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + CORTE.replace('"municipality"', '"city"'))
    assert message == (
        f"{path}:5: instances.corte.community_type: "
        "must be one of municipality, intercommunality, university, association, region"
    )
    assert COMMUNITY_TYPES == ("municipality", "intercommunality", "university", "association", "region")


def test_missing_community_name(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + CORTE.replace('community_name = "Ville de Corte"\n', ""))
    assert message == f"{path}: missing key 'community_name' in [instances.corte]"


def test_bad_default_duration(tmp_path: Path) -> None:
    path, message = refused(tmp_path, '[defaults]\nlock_wait = "soon"\n' + HUB + CORTE)
    assert message == (
        f"{path}:2: defaults.lock_wait: 'soon' is not a duration (use e.g. '500ms', '30s', '15min', '1h')"
    )


def test_bad_instance_duration(tmp_path: Path) -> None:
    path, message = refused(tmp_path, HUB + CORTE + 'lock_timeout = "soon"\n')
    assert message == (
        f"{path}: [instances.corte] lock_timeout: 'soon' is not a duration "
        "(use e.g. '500ms', '30s', '15min', '1h')"
    )


@pytest.mark.parametrize("key", ["jobs", "per_host"])
@pytest.mark.parametrize("value", ["0", "-1", "true", '"4"', "2.5"])
def test_jobs_and_per_host_must_be_positive_whole_numbers(tmp_path: Path, key: str, value: str) -> None:
    path, message = refused(tmp_path, f"[defaults]\n{key} = {value}\n" + HUB + CORTE)
    assert message == f"{path}:2: defaults.{key}: {key} must be a whole number of at least 1"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (HUB + CORTE + "tags = = 1\n[instances.b]\n", 7),
        (HUB + CORTE + "tags = [\n", 7),  # tomllib says "at end of document"
    ],
    ids=["mid-file", "end-of-file"],
)
def test_toml_syntax_error_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path, message = refused(tmp_path, text)
    assert message.startswith(f"{path}:{line}: invalid TOML: ")


def test_missing_hub(tmp_path: Path) -> None:
    path, message = refused(tmp_path, CORTE)
    assert message == f"{path}: missing key 'hub' in the top level"


def test_missing_fleet_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path.resolve() / "nowhere" / "fleet.toml"
    with pytest.raises(ConfigError) as caught:
        load_fleet(missing, environ={})
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"fleet file {missing} not found (--fleet); pass --fleet PATH or set OPHELIA_FLEET"
    )


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("15min", 900.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("2m", 120.0),
        ("10", 10.0),
        (" 1.5 s ", 1.5),
        (12, 12.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 days", "-1s", "s", "", -1])
def test_parse_duration_refuses(value: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


# --- good files ------------------------------------------------------------------------------------


def test_defaults_apply_when_absent(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, HUB + CORTE), environ={})
    assert (fleet.defaults.jobs, fleet.defaults.per_host) == (32, 32)
    for target in fleet.members:
        assert target.timeouts.model_dump() == {
            "lock_wait": 30.0,
            "lock_timeout": 5.0,
            "statement_timeout": 900.0,
            "connect_timeout": 10.0,
            "client_connection_check_interval": 2.0,
        }
    assert fleet.local is None


def test_defaults_are_parsed_and_instances_override_them(tmp_path: Path) -> None:
    text = (
        '[defaults]\njobs = 8\nlock_wait = "45s"\nlock_timeout = "500ms"\n'
        'statement_timeout = "15min"\nconnect_timeout = 3\n'
        + HUB
        + 'connect_timeout = "1s"\n'
        + CORTE
        + 'lock_timeout = "2s"\nstatement_timeout = "1h"\nclient_connection_check_interval = "500ms"\n'
        + instance("universita")
    )
    fleet = load_fleet(write(tmp_path, text), environ={})
    assert fleet.defaults.jobs == 8
    assert fleet.instances["universita"].timeouts.model_dump() == {
        "lock_wait": 45.0,
        "lock_timeout": 0.5,
        "statement_timeout": 900.0,
        "connect_timeout": 3.0,
        "client_connection_check_interval": 2.0,
    }
    assert fleet.instances["corte"].timeouts.model_dump() == {
        "lock_wait": 45.0,
        "lock_timeout": 2.0,
        "statement_timeout": 3600.0,
        "connect_timeout": 3.0,
        "client_connection_check_interval": 0.5,
    }
    assert fleet.hub.timeouts.connect_timeout == 1.0
    assert fleet.hub.timeouts.lock_timeout == 0.5


def test_identity_roles_and_hub_defaults(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, HUB + CORTE), environ={})
    assert (fleet.hub.name, fleet.hub.role, fleet.hub.community_name) == ("hub", "hub", "Ophélia hub")
    corte = fleet.instances["corte"]
    assert (corte.name, corte.role, corte.community_name, corte.community_type) == (
        "corte",
        "instance",
        "Ville de Corte",
        "municipality",
    )
    assert corte.url_source == "url"
    assert corte.dsn() == "postgresql://ophelia@db.internal:5432/corte"
    assert corte.display_url == "postgresql://ophelia@db.internal:5432/corte"


@pytest.mark.parametrize(
    "url", ["postgresql:///ophelia_corte?host=/var/run/postgresql", "postgresql://ophelia@/corte?host=/tmp"]
)
def test_unix_socket_urls_are_accepted(tmp_path: Path, url: str) -> None:
    fleet = load_fleet(write(tmp_path, HUB + instance("corte", url=url)), environ={})
    assert fleet.instances["corte"].dsn() == url
    assert fleet.instances["corte"].display_url == url


def test_url_env_from_environ_is_secret_and_registered(tmp_path: Path) -> None:
    url = "postgresql://ophelia:Qv7-fleet-secret@db.internal:5432/corte"
    path = write(tmp_path, HUB + instance("corte", 'url_env = "OPHELIA_CORTE_URL"', url=None))
    fleet = load_fleet(path, environ={"OPHELIA_CORTE_URL": url})
    corte = fleet.instances["corte"]
    assert corte.dsn() == url
    assert corte.url_source == "url_env OPHELIA_CORTE_URL"
    assert corte.display_url == "postgresql://ophelia:***@db.internal:5432/corte"
    assert "Qv7-fleet-secret" not in repr(corte)
    # The password alone is masked too, wherever it shows up later.
    assert redact("server said: Qv7-fleet-secret") == "server said: ***"


def test_dotenv_beside_fleet_supplies_url_env_and_environment_wins(tmp_path: Path) -> None:
    from_dotenv = "postgresql://ophelia@dotenv.internal:5432/corte"
    from_env = "postgresql://ophelia@process.internal:5432/corte"
    text = HUB + instance("corte", 'url_env = "OPHELIA_CORTE_URL"', url=None)
    path = write(tmp_path, text)
    write(tmp_path, f"# comment\nOPHELIA_CORTE_URL={from_dotenv}\nOTHER=1\n", name=".env")
    assert load_fleet(path, environ={}).instances["corte"].dsn() == from_dotenv
    assert load_fleet(path, environ={"OPHELIA_CORTE_URL": from_env}).instances["corte"].dsn() == from_env


def test_process_environment_is_the_default_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = "postgresql://ophelia@process.internal:5432/corte"
    path = write(tmp_path, HUB + instance("corte", 'url_env = "OPHELIA_TEST_CORTE_URL"', url=None))
    write(tmp_path, "OPHELIA_TEST_CORTE_URL=postgresql://ophelia@dotenv.internal/corte\n", name=".env")
    monkeypatch.setenv("OPHELIA_TEST_CORTE_URL", from_env)
    assert load_fleet(path).instances["corte"].dsn() == from_env


def test_dotenv_elsewhere_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", HUB + instance("corte", 'url_env = "OPHELIA_CORTE_URL"', url=None))
    write(tmp_path, "OPHELIA_CORTE_URL=postgresql://ophelia@h/corte\n", name=".env")
    with pytest.raises(ConfigError, match="OPHELIA_CORTE_URL"):
        load_fleet(path, environ={}).select(["corte"])


def test_find_fleet_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default, from_env, from_flag = (write(tmp_path, HUB, n) for n in ("fleet.toml", "env.toml", "flag.toml"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPHELIA_FLEET", raising=False)
    assert find_fleet_file() == default.resolve()
    monkeypatch.setenv("OPHELIA_FLEET", str(from_env))
    assert find_fleet_file() == from_env.resolve()
    assert find_fleet_file(from_flag) == from_flag.resolve()
    assert find_fleet_file("flag.toml") == from_flag.resolve()
    assert load_fleet(environ={}).path == from_env.resolve()


def test_find_fleet_file_missing_names_the_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPHELIA_FLEET", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError) as caught:
        find_fleet_file()
    assert caught.value.message == (
        f"fleet file {tmp_path.resolve() / 'gone.toml'} not found ($OPHELIA_FLEET); "
        "pass --fleet PATH or set OPHELIA_FLEET"
    )
    monkeypatch.delenv("OPHELIA_FLEET")
    with pytest.raises(ConfigError) as caught:
        find_fleet_file()
    assert caught.value.message == (
        f"fleet file {tmp_path.resolve() / 'fleet.toml'} not found (default); "
        "pass --fleet PATH or set OPHELIA_FLEET"
    )


# --- selection -------------------------------------------------------------------------------------


@pytest.fixture
def fleet_of_three(tmp_path: Path):  # type: ignore[no-untyped-def]
    text = (
        HUB
        + instance("universita", 'tags = ["big"]')
        + instance("corte", 'tags = ["canary", "big"]')
        + instance("lisula")
    )
    return load_fleet(write(tmp_path, text), environ={})


def test_select_all_puts_hub_first_then_instances_by_name(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    selected = fleet_of_three.select(all_=True)
    assert [(t.name, t.role) for t in selected] == [
        ("hub", "hub"),
        ("corte", "instance"),
        ("lisula", "instance"),
        ("universita", "instance"),
    ]
    assert [t.name for t in fleet_of_three.members] == ["hub", "corte", "lisula", "universita"]


def test_hub_first_even_when_its_name_sorts_last(tmp_path: Path) -> None:
    text = HUB + 'name = "zz-hub"\n' + instance("corte") + instance("ajaccio")
    fleet = load_fleet(write(tmp_path, text), environ={})
    assert [t.name for t in fleet.select(all_=True)] == ["zz-hub", "ajaccio", "corte"]


def test_select_by_names_is_ordered_and_deduplicated(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    selected = fleet_of_three.select(["universita", "corte", "universita", "hub"])
    assert [t.name for t in selected] == ["hub", "corte", "universita"]


def test_select_by_tags(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    assert [t.name for t in fleet_of_three.select(tags=["canary"])] == ["corte"]
    assert [t.name for t in fleet_of_three.select(tags=["big"])] == ["corte", "universita"]
    assert [t.name for t in fleet_of_three.select(["lisula"], tags=["canary"])] == ["corte", "lisula"]
    assert fleet_of_three.instances["corte"].tags == ("canary", "big")
    assert fleet_of_three.hub.tags == ()


def test_select_unknown_tag(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        fleet_of_three.select(tags=["nope"])
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"no instance of {fleet_of_three.path} has the tag 'nope'")


def test_select_nothing_is_refused_unless_default_all(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        fleet_of_three.select()
    assert caught.value.message == "select instances with --instance NAME, --all or --tag TAG"
    assert len(fleet_of_three.select(default_all=True)) == 4


def test_unknown_instance_suggests_the_closest_name(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        fleet_of_three.select(["cortte"])
    assert caught.value.exit_code == 2
    assert (
        caught.value.message == f"unknown instance 'cortte' in {fleet_of_three.path}; did you mean 'corte'?"
    )


def test_unknown_instance_without_close_match_lists_known(fleet_of_three) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        fleet_of_three.get("zzzzzz")
    assert caught.value.message == (
        f"unknown instance 'zzzzzz' in {fleet_of_three.path}; known: hub, corte, lisula, universita"
    )


# --- [local] and the repository's own fleet --------------------------------------------------------


def test_local_table_state_dir_is_relative_to_the_fleet_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "conf", HUB + CORTE + '[local]\nport = 55000\nstate_dir = "state/pg"\n')
    fleet = load_fleet(path, environ={})
    assert fleet.local is not None
    assert fleet.local.port == 55000
    assert fleet.local.state_dir == (tmp_path / "conf" / "state" / "pg").resolve()


def test_local_table_defaults_and_absolute_state_dir(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, HUB + "[local]\n"), environ={})
    assert fleet.local is not None
    assert (fleet.local.port, fleet.local.state_dir) == (54329, (tmp_path / ".ophelia").resolve())
    elsewhere = tmp_path / "abs"
    fleet = load_fleet(write(tmp_path, HUB + f'[local]\nstate_dir = "{elsewhere}"\n'), environ={})
    assert fleet.local is not None
    assert fleet.local.state_dir == elsewhere.resolve()


def test_repository_fleet_is_the_embedded_local_default() -> None:
    fleet = load_fleet(REPO / "fleet.toml", environ={})
    assert [t.name for t in fleet.select(all_=True)] == ["hub", "corte", "lisula", "universita"]
    assert fleet.local is not None
    assert fleet.local.state_dir == (REPO / ".ophelia").resolve()
    assert all(os.path.basename(t.dsn()).startswith("ophelia_") for t in fleet.members)
