"""`provision`: its prompts, its flags, and the checklist of a live apply.

Where the answers come from is the library's decision (``instances.gather``);
this module asks the questions on a terminal, shows the files written and
each step of ``--apply`` as it is ticked. Secrets are typed at hidden
prompts or named as environment variables, never echoed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import FleetOpt, JsonOpt, errors, fleet_at
from ophelia_db.cli.render import emit_json, err, out
from ophelia_db.cli.render.instances import render_output_warnings, render_outputs, step_line
from ophelia_db.errors import ConfigError
from ophelia_db.fleet import COMMUNITY_TYPES

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Fleet
    from ophelia_db.instances import Answers, Outputs

# The library, loaded by the command that runs (`--help` loads none of it).
library = lazy_module("ophelia_db.instances")
answers_model = lazy_module("ophelia_db.instances.answers")
applying = lazy_module("ophelia_db.instances.apply")
seed = lazy_module("ophelia_db.instances.seed")
config = lazy_module("ophelia_db.fleet.config")
interrupts = lazy_module("ophelia_db.run.interrupts")

MANUAL_STEPS = """\
Before the questions, do by hand what ophelia-db cannot do for you:
  1. Create the Supabase project "ophelia-<subdomain>" in region eu-west-3 (Paris).
  2. In Settings > API, copy the project URL and the anon (public) key.
  3. In Settings > Database, copy the direct connection string (port 5432) into an
     environment variable, or into .env beside fleet.toml (it is asked for by name).
"""


def _ask(field: str, text: str, default: Any = None, *, optional: bool = False, check: Any = None) -> Any:
    def convert(value: str) -> Any:
        value = value.strip()
        if not value and optional:
            return None
        try:
            return check(value) if check else answers_model.check_answer(field, value)
        except (ConfigError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from None

    if isinstance(default, tuple | list):
        default = ", ".join(str(part) for part in default)
    shown = str(default) if default not in (None, "") else ("" if optional else None)
    return typer.prompt(text, default=shown, value_proc=convert, show_default=bool(default))


def _interactive(given: dict[str, Any], hub: str) -> Answers:
    out(MANUAL_STEPS)
    types = ", ".join(COMMUNITY_TYPES)

    def community_type(value: str) -> str:
        if value not in COMMUNITY_TYPES:
            raise ConfigError(f"choose one of {types}")
        return value

    kind = _ask(
        "community_type",
        f"Community type ({types})",
        given.get("community_type") or "municipality",
        check=community_type,
    )
    data: dict[str, Any] = {"community_type": kind}
    data["community_name"] = _ask("community_name", "Community name", given.get("community_name"))
    data["city"] = _ask("city", "City", given.get("city"))
    proposal = given.get("subdomain") or answers_model.propose_subdomain(data["community_name"])
    data["subdomain"] = _ask("subdomain", "Subdomain", proposal)
    out(f"Supabase project to create: ophelia-{data['subdomain']} (region eu-west-3)")
    label = {"municipality": "INSEE code", "university": "UAI code"}.get(kind, "Official code")

    def code(value: str) -> str:
        return answers_model.check_code(kind, answers_model.check_answer("code", value))

    data["code"] = _ask("code", f"{label} (optional)", given.get("code"), optional=True, check=code)
    data["region_code"] = _ask("region_code", "Region code", given.get("region_code") or "COR")
    data["region_name"] = _ask("region_name", "Region name", given.get("region_name") or "Corse")
    data["contact_email"] = _ask("contact_email", "Contact email", given.get("contact_email"))
    data["map_center"] = _ask("map_center", "Map centre as latitude, longitude", given.get("map_center"))
    data["database_url_env"] = _ask(
        "database_url_env",
        "Environment variable holding the instance's database URL",
        given.get("database_url_env") or answers_model.default_url_env(data["subdomain"]),
    )
    data["supabase_url"] = _ask(
        "supabase_url", "Supabase project URL (optional)", given.get("supabase_url"), optional=True
    )
    _ask_secrets(data, given, hub)
    return answers_model.build_answers(data)


def _ask_secrets(data: dict[str, Any], given: dict[str, Any], hub: str) -> None:
    anon = typer.prompt(
        "Supabase anon key (input hidden; empty to skip)", default="", show_default=False, hide_input=True
    )
    if anon.strip():
        data["supabase_anon_key"] = anon.strip()
    elif given.get("supabase_anon_key_env"):
        data["supabase_anon_key_env"] = given["supabase_anon_key_env"]
    out(f"The instance is registered in the hub '{hub}' of fleet.toml.")
    data["api_key_envs"] = given.get("api_key_envs") or {}
    api_keys: dict[str, str] = {}
    while True:
        key = _ask(
            "",
            "Optional API key name, e.g. MISTRAL_API_KEY (empty when done)",
            "",
            optional=True,
            check=seed.check_key,
        )
        if not key:
            break
        api_keys[key] = typer.prompt(f"{key} (input hidden)", hide_input=True)
    data["api_keys"] = api_keys


def _api_key_envs(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    found = {}
    for pair in pairs:
        key, sep, variable = pair.partition("=")
        if not sep or not key or not variable:
            raise ConfigError(
                f"--api-key {pair!r}: expected NAME=ENV_VAR, e.g. MISTRAL_API_KEY=OPHELIA_MISTRAL_KEY"
            )
        found[key.strip()] = variable.strip()
    return found


FromOpt = Annotated[
    Path | None,
    typer.Option("--from", metavar="FILE", help="Answers file (instances/<name>.json); flags override it."),
]
TypeOpt = Annotated[
    str | None, typer.Option("--type", metavar="TYPE", help=f"One of {', '.join(COMMUNITY_TYPES)}.")
]
NameOpt = Annotated[
    str | None, typer.Option("--name", metavar="NAME", help='Community name, e.g. "L\'Île-Rousse".')
]
CityOpt = Annotated[str | None, typer.Option("--city", metavar="CITY", help="City (the community's seat).")]
SubdomainOpt = Annotated[
    str | None, typer.Option("--subdomain", metavar="NAME", help="Default: proposed from the name.")
]
CodeOpt = Annotated[
    str | None, typer.Option("--code", metavar="CODE", help="INSEE code (municipality) or UAI (university).")
]
RegionCodeOpt = Annotated[
    str | None, typer.Option("--region-code", metavar="CODE", help="Region code (default COR).")
]
RegionNameOpt = Annotated[
    str | None, typer.Option("--region-name", metavar="NAME", help="Region name (default Corse).")
]
EmailOpt = Annotated[str | None, typer.Option("--email", metavar="EMAIL", help="Contact email (not public).")]
MapCenterOpt = Annotated[
    str | None, typer.Option("--map-center", metavar="LAT,LON", help="Map centre as 'lat,lon'.")
]
DbUrlEnvOpt = Annotated[
    str | None,
    typer.Option("--db-url-env", metavar="ENV_VAR", help="Environment variable holding the database URL."),
]
SupabaseUrlOpt = Annotated[
    str | None, typer.Option("--supabase-url", metavar="URL", help="Supabase project URL.")
]
AnonKeyEnvOpt = Annotated[
    str | None,
    typer.Option("--anon-key-env", metavar="ENV_VAR", help="Environment variable holding the anon key."),
]
ApiKeyOpt = Annotated[
    list[str] | None,
    typer.Option("--api-key", metavar="NAME=ENV_VAR", help="NAME=ENV_VAR: a vault secret from a variable."),
]
ApplyOpt = Annotated[
    bool, typer.Option("--apply", help="Also migrate, write the vault, register, add to fleet.toml.")
]
IncludeSecretsOpt = Annotated[
    bool, typer.Option("--include-secrets", help="Write secrets into the SQL files (mode 0600).")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", metavar="DIR", help="Output folder (default: instances/ beside fleet.toml)."),
]
ReplaceOpt = Annotated[
    bool,
    typer.Option("--replace", help="Re-provision an instance of fleet.toml on other connection details."),
]
InteractiveOpt = Annotated[
    bool, typer.Option("--interactive", "-I", help="Ask every question, flags giving the defaults.")
]


def provision_command(
    from_: FromOpt = None,
    community_type: TypeOpt = None,
    name: NameOpt = None,
    city: CityOpt = None,
    subdomain: SubdomainOpt = None,
    code: CodeOpt = None,
    region_code: RegionCodeOpt = None,
    region_name: RegionNameOpt = None,
    email: EmailOpt = None,
    map_center: MapCenterOpt = None,
    db_url_env: DbUrlEnvOpt = None,
    supabase_url: SupabaseUrlOpt = None,
    anon_key_env: AnonKeyEnvOpt = None,
    api_key: ApiKeyOpt = None,
    apply: ApplyOpt = False,
    include_secrets: IncludeSecretsOpt = False,
    out_dir: OutOpt = None,
    interactive: InteractiveOpt = False,
    replace: ReplaceOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Provision an instance: files for operators, and with --apply a live, registered instance.

    Without arguments on a terminal it asks the questions.

    Example: ophelia-db provision --from instances/corte.json --apply
    """
    flags: dict[str, Any] = {
        "community_type": community_type,
        "community_name": name,
        "city": city,
        "subdomain": subdomain,
        "code": code,
        "region_code": region_code,
        "region_name": region_name,
        "contact_email": email,
        "map_center": map_center,
        "database_url_env": db_url_env,
        "supabase_url": supabase_url,
        "supabase_anon_key_env": anon_key_env,
    }
    given = from_ is not None or api_key or any(value is not None for value in flags.values())
    interactive = interactive or (not given and sys.stdin.isatty() and not json_)
    with errors():
        flags["api_key_envs"] = _api_key_envs(api_key)
        loaded = fleet_at(fleet)
        ask = (lambda defaults: _interactive(defaults, loaded.hub.name)) if interactive else None
        answers = library.gather(from_, flags, ask)
        if interactive:
            answers = _keep_typed_secrets(answers, loaded.path.parent / ".env")
        env = config.environment(loaded.path)
        folder = out_dir or loaded.path.parent / "instances"
        outputs = library.write_outputs(answers, folder, include_secrets=include_secrets, env=env)
    (render_output_warnings if json_ else render_outputs)(outputs)
    question = "Apply now (migrate, write the vault, register in the hub, add to fleet.toml)?"
    if not (apply or (interactive and typer.confirm(question, default=True))):
        _files_only(outputs, answers, interactive=interactive, json_=json_)
    _apply(loaded, answers, env, outputs, json_=json_, replace=replace)


def _keep_typed_secrets(answers: Answers, env_file: Path) -> Answers:
    answers, saved = answers_model.keep_typed_secrets(answers, env_file)
    if saved:
        err(f"saved {', '.join(saved)} in {env_file} (mode 0600); the answers file names them")
    return answers


def _files_only(outputs: Outputs, answers: Answers, *, interactive: bool, json_: bool) -> NoReturn:
    if json_:
        emit_json({"outputs": outputs.as_record(), "apply": None})
    else:
        if interactive:
            out("\nProvisioning checklist:")
            for step in applying.checklist(answers.subdomain).steps:
                out(step_line(step))
        out(f"next: ophelia-db provision --from {outputs.answers_file} --apply")
    raise typer.Exit(0)


def _apply(
    fleet: Fleet, answers: Answers, env: dict[str, str], outputs: Outputs, *, json_: bool, replace: bool
) -> NoReturn:
    if not json_:
        out("\nProvisioning checklist:")
    with errors():
        try:
            on_step = None if json_ else lambda step: out(step_line(step))
            report = library.apply(fleet, answers, env=env, on_step=on_step, replace=replace)
        except KeyboardInterrupt as exc:
            # Each step checks before it writes: the same command again resumes where this one stopped.
            err("interrupted: run the same command again to resume")
            raise typer.Exit(interrupts.exit_code_of(exc)) from None
    if json_:
        emit_json({"outputs": outputs.as_record(), "apply": report.as_record()})
    elif report.exit_code == 0:
        out(f"{answers.subdomain}: provisioned" + ("" if report.changed else " (nothing to change)"))
        out(f"check it as the app would: ophelia-db doctor --instance {answers.subdomain}")
    else:
        failed = next(step for step in report.steps if step.state == "failed")
        err(f"error: {failed.detail}")
        err("fix that, then run the same command again: done steps are checked, not redone")
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("provision")(provision_command)
