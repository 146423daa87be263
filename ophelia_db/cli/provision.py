"""Command-line commands for provisioning, the instance vault and the lifecycle, registered by cli.py.

This module owns ``provision`` (its prompts included), ``config
list|get|set|unset``, ``archive``/``suspend``/``activate``, ``instances``
and ``doctor``: each parses, calls one function of ``provision``, ``vault``
or ``lifecycle``, renders the result and picks the exit code. Secrets are
typed at hidden prompts or named as environment variables, never echoed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ophelia_db.cli.options import AllOpt, FleetOpt, InstanceOpt, JsonOpt, errors, fail, fleet_at
from ophelia_db.cli.render import emit_json
from ophelia_db.errors import ConfigError, combine_exit_codes
from ophelia_db.fleet.config import COMMUNITY_TYPES
from ophelia_db.fleet.hub import Status
from ophelia_db.instances import answers as provision
from ophelia_db.instances import apply as provision_apply
from ophelia_db.instances import doctor as doctor_checks
from ophelia_db.instances import lifecycle, vault
from ophelia_db.run.interrupts import exit_code_of

RevealOpt = Annotated[bool, typer.Option("--reveal", help="Show secret values instead of ***.")]
OneInstanceOpt = Annotated[str, typer.Option("--instance", "-i", help="Instance name.")]
NameArg = Annotated[str, typer.Argument(help="Instance name (its subdomain).")]
KeyArg = Annotated[str, typer.Argument(help="Vault key, UPPER_SNAKE_CASE.")]

MANUAL_STEPS = """\
Before the questions, do by hand what ophelia-db cannot do for you:
  1. Create the Supabase project "ophelia-<subdomain>" in region eu-west-3 (Paris).
  2. In Settings > API, copy the project URL and the anon (public) key.
  3. In Settings > Database, copy the direct connection string (port 5432) into an
     environment variable, or into .env beside fleet.toml (it is asked for by name).
"""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _table(title: str | None, headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal, one tab-free line per row otherwise."""
    if sys.stdout.isatty():
        table = Table(title=title)
        for header in headers:
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
        return
    for row in rows:
        _out("  ".join(row).rstrip())


# --- provision ------------------------------------------------------------------------------------


def _ask(field: str, text: str, default: Any = None, *, optional: bool = False, check: Any = None) -> Any:
    def convert(value: str) -> Any:
        value = value.strip()
        if not value and optional:
            return None
        try:
            return check(value) if check else provision.check_answer(field, value)
        except (ConfigError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from None

    if isinstance(default, tuple | list):
        default = ", ".join(str(part) for part in default)
    shown = str(default) if default not in (None, "") else ("" if optional else None)
    return typer.prompt(text, default=shown, value_proc=convert, show_default=bool(default))


def _interactive(given: dict[str, Any], hub: str) -> provision.Answers:
    _out(MANUAL_STEPS)
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
    proposal = given.get("subdomain") or provision.propose_subdomain(data["community_name"])
    data["subdomain"] = _ask("subdomain", "Subdomain", proposal)
    _out(f"Supabase project to create: ophelia-{data['subdomain']} (region eu-west-3)")
    label = {"municipality": "INSEE code", "university": "UAI code"}.get(kind, "Official code")

    def code(value: str) -> str:
        return provision.check_code(kind, provision.check_answer("code", value))

    data["code"] = _ask("code", f"{label} (optional)", given.get("code"), optional=True, check=code)
    data["region_code"] = _ask("region_code", "Region code", given.get("region_code") or "COR")
    data["region_name"] = _ask("region_name", "Region name", given.get("region_name") or "Corse")
    data["contact_email"] = _ask("contact_email", "Contact email", given.get("contact_email"))
    data["map_center"] = _ask("map_center", "Map centre as latitude, longitude", given.get("map_center"))
    data["database_url_env"] = _ask(
        "database_url_env",
        "Environment variable holding the instance's database URL",
        given.get("database_url_env") or provision.default_url_env(data["subdomain"]),
    )
    data["supabase_url"] = _ask(
        "supabase_url", "Supabase project URL (optional)", given.get("supabase_url"), optional=True
    )
    anon = typer.prompt(
        "Supabase anon key (input hidden; empty to skip)", default="", show_default=False, hide_input=True
    )
    if anon.strip():
        data["supabase_anon_key"] = anon.strip()
    elif given.get("supabase_anon_key_env"):
        data["supabase_anon_key_env"] = given["supabase_anon_key_env"]
    _out(f"The instance is registered in the hub '{hub}' of fleet.toml.")
    data["api_key_envs"] = given.get("api_key_envs") or {}
    api_keys: dict[str, str] = {}
    while True:
        key = _ask(
            "",
            "Optional API key name, e.g. MISTRAL_API_KEY (empty when done)",
            "",
            optional=True,
            check=vault.check_key,
        )
        if not key:
            break
        api_keys[key] = typer.prompt(f"{key} (input hidden)", hide_input=True)
    data["api_keys"] = api_keys
    return provision.build_answers(data)


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


def _render_outputs(outputs: provision.Outputs) -> None:
    for path in (outputs.answers_file, outputs.vault_sql, outputs.registry_sql, outputs.schema_file):
        _out(f"{'wrote' if path in outputs.changed else 'unchanged'} {path}")
    for path in outputs.secret_files:
        _err(f"warning: {path} holds secrets (mode 0600): never commit, share or paste it in a ticket")
    if outputs.left_out:
        _err(f"note: secrets left out as placeholders: {', '.join(outputs.left_out)} (--include-secrets)")
    if outputs.unset:
        _err(f"warning: environment variable(s) not set: {', '.join(outputs.unset)}")


def _step_line(step: provision_apply.Step) -> str:
    mark = "[x]" if step.ticked else "[ ]"
    detail = f": {step.detail}" if step.detail else ""
    state = "" if step.ticked else f" ({step.state})"
    return f"{mark} {step.name}{state}{detail}"


def provision_command(
    from_: Annotated[
        Path | None, typer.Option("--from", help="Answers file (instances/<name>.json); flags override it.")
    ] = None,
    community_type: Annotated[
        str | None, typer.Option("--type", help=f"One of {', '.join(COMMUNITY_TYPES)}.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help='Community name, e.g. "L\'Île-Rousse".')] = None,
    city: Annotated[str | None, typer.Option("--city", help="City (the community's seat).")] = None,
    subdomain: Annotated[
        str | None, typer.Option("--subdomain", help="Default: proposed from the name.")
    ] = None,
    code: Annotated[
        str | None, typer.Option("--code", help="INSEE code (municipality) or UAI (university).")
    ] = None,
    region_code: Annotated[
        str | None, typer.Option("--region-code", help="Region code (default COR).")
    ] = None,
    region_name: Annotated[
        str | None, typer.Option("--region-name", help="Region name (default Corse).")
    ] = None,
    email: Annotated[str | None, typer.Option("--email", help="Contact email (not public).")] = None,
    map_center: Annotated[str | None, typer.Option("--map-center", help="Map centre as 'lat,lon'.")] = None,
    db_url_env: Annotated[
        str | None, typer.Option("--db-url-env", help="Environment variable holding the database URL.")
    ] = None,
    supabase_url: Annotated[str | None, typer.Option("--supabase-url", help="Supabase project URL.")] = None,
    anon_key_env: Annotated[
        str | None, typer.Option("--anon-key-env", help="Environment variable holding the anon key.")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="NAME=ENV_VAR: a vault secret from a variable.")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Also migrate, write the vault, register, add to fleet.toml.")
    ] = False,
    include_secrets: Annotated[
        bool, typer.Option("--include-secrets", help="Write secrets into the SQL files (mode 0600).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: instances/ beside fleet.toml).")
    ] = None,
    interactive: Annotated[
        bool, typer.Option("--interactive", "-I", help="Ask every question, flags giving the defaults.")
    ] = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Provision an instance: files for operators, and with --apply a live, registered instance.

    Without arguments on a terminal it asks the questions. Example:
    ophelia-db provision --from instances/corte.json --apply
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
        if not (given or interactive):
            raise ConfigError(
                "nothing to provision: pass --from instances/<name>.json or the answers as flags "
                "(see --help), or run it on a terminal to be asked"
            )
        loaded = fleet_at(fleet)
        env = provision.environment(loaded.path)
        if interactive:
            # The file's answers, then the flags, are the prompts' defaults.
            defaults = provision.load_answers(from_).model_dump() if from_ is not None else {}
            defaults.update({k: v for k, v in flags.items() if v is not None})
            answers = _interactive(defaults, loaded.hub.name)
        elif from_ is not None:
            answers = provision.load_answers(from_, flags)
        else:
            answers = provision.build_answers({k: v for k, v in flags.items() if v is not None})
        folder = out or loaded.path.parent / "instances"
        outputs = provision.write_outputs(answers, folder, include_secrets=include_secrets, env=env)
    if not json_:
        _render_outputs(outputs)
    if interactive and not apply:
        apply = typer.confirm(
            "Apply now (migrate, write the vault, register in the hub, add to fleet.toml)?", default=True
        )
    if not apply:
        if json_:
            emit_json({"outputs": outputs.as_record(), "apply": None})
        else:
            if interactive:
                _out("\nProvisioning checklist:")
                for step in provision_apply.checklist(answers.subdomain).steps:
                    _out(_step_line(step))
            _out(f"next: ophelia-db provision --from {outputs.answers_file} --apply")
        raise typer.Exit(0)
    if not json_:
        _out("\nProvisioning checklist:")
    with errors():
        try:
            report = provision_apply.apply(
                loaded, answers, env=env, on_step=None if json_ else lambda step: _out(_step_line(step))
            )
        except KeyboardInterrupt as exc:
            # Each step checks before it writes: the same command again resumes where this one stopped.
            _err("interrupted: run the same command again to resume")
            raise typer.Exit(exit_code_of(exc)) from None
    if json_:
        emit_json({"outputs": outputs.as_record(), "apply": report.as_record()})
    elif report.exit_code == 0:
        _out(f"{answers.subdomain}: provisioned" + ("" if report.changed else " (nothing to change)"))
        _out(f"check it as the app would: ophelia-db doctor --instance {answers.subdomain}")
    else:
        failed = next(step for step in report.steps if step.state == "failed")
        _err(f"error: {failed.detail}")
        _err("fix that, then run the same command again: done steps are checked, not redone")
    raise typer.Exit(report.exit_code)


# --- config ---------------------------------------------------------------------------------------

config_app = typer.Typer(
    help="The instance vault: list, get, set and unset keys (secrets masked).", no_args_is_help=True
)


def _entry_row(entry: vault.ConfigEntry) -> list[str]:
    flags = "secret" if entry.is_secret else "public" if entry.is_public else "private"
    return [entry.key, entry.shown, entry.category, flags, f"v{entry.version}"]


@config_app.command("list")
def config_list(
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    reveal: RevealOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """List one instance's vault, or compare every key across several (--all).

    Example: ophelia-db config list -i corte
    """
    with errors():
        targets = fleet_at(fleet).select(instance or (), all_=all_)
        configs = vault.read_fleet(targets, reveal=reveal)
    if len(configs) == 1 and configs[0].error:
        fail(configs[0].error, configs[0].exit_code)
    if json_:
        emit_json({"instances": [c.as_record() for c in configs]})
    elif len(configs) == 1:
        _table(
            f"{configs[0].instance}: instance_config",
            ["key", "value", "category", "access", "version"],
            [_entry_row(e) for e in configs[0].entries],
        )
    else:
        keys = sorted({e.key for c in configs for e in c.entries})
        rows = []
        for key in keys:
            cells = [_cell(c, key) for c in configs]
            same = "same" if len(set(cells)) == 1 else "differs"
            rows.append(
                [key, same, *(f"{c.instance}={cell}" for c, cell in zip(configs, cells, strict=True))]
            )
        _table("instance_config across the fleet", ["key", "", *(c.instance for c in configs)], rows)
    _report_errors(configs)


def _cell(config: vault.InstanceConfig, key: str) -> str:
    entry = config.get(key)
    return "?" if config.error else entry.shown if entry else "-"


def _report_errors(configs: list[vault.InstanceConfig]) -> None:
    codes = [c.exit_code for c in configs]
    for config in configs:
        if config.error:
            _err(f"error: {config.error}")
    raise typer.Exit(combine_exit_codes(codes))


@config_app.command("get")
def config_get(
    key: KeyArg,
    instance: InstanceOpt = None,
    all_: AllOpt = False,
    reveal: RevealOpt = False,
    json_: JsonOpt = False,
    fleet: FleetOpt = None,
) -> None:
    """Print one key's JSON value, or compare it across instances (--all).

    Example: ophelia-db config get MAP_CENTER --all
    """
    with errors():
        targets = fleet_at(fleet).select(instance or (), all_=all_)
        if len(targets) == 1:
            entry = vault.get_entry(targets[0], key, reveal=reveal)
            if json_:
                emit_json(entry.as_record())
            else:
                _out(entry.shown)
                if entry.is_secret and not reveal:
                    _err(f"note: {key} is secret; --reveal shows it")
            raise typer.Exit(0)
        configs = vault.read_fleet(targets, key, reveal=reveal)
    if json_:
        emit_json({"key": key, "instances": [c.as_record() for c in configs]})
    else:
        rows = []
        for config in configs:
            found = config.get(key)
            shown = "(error)" if config.error else found.shown if found else "(not set)"
            rows.append([config.instance, shown])
        _table(key, ["instance", "value"], rows)
        distinct = {row[1] for row in rows}
        _out(f"{key}: {'the same everywhere' if len(distinct) == 1 else f'{len(distinct)} different values'}")
    _report_errors(configs)


@config_app.command("set")
def config_set(
    key: KeyArg,
    instance: OneInstanceOpt,
    value: Annotated[
        str | None,
        typer.Argument(help="JSON value, or a plain string; omitted: read from stdin or asked hidden."),
    ] = None,
    secret: Annotated[
        bool | None,
        typer.Option("--secret/--no-secret", help="Mark the key secret (never readable by anon)."),
    ] = None,
    public: Annotated[
        bool | None, typer.Option("--public/--private", help="Readable by anon (the app before login).")
    ] = None,
    category: Annotated[str | None, typer.Option("--category", help="Category (default general).")] = None,
    description: Annotated[str | None, typer.Option("--description", help="What the key is for.")] = None,
    fleet: FleetOpt = None,
) -> None:
    """Create or change a vault key; the previous value is kept and the version bumped.

    Example: ophelia-db config set MAP_ZOOM 13 -i corte
    """
    with errors():
        target = fleet_at(fleet).select([instance])[0]
        if value is None:
            value = (
                sys.stdin.read().rstrip("\n")
                if not sys.stdin.isatty()
                else typer.prompt(f"{key} (input hidden)", hide_input=True)
            )
        result = vault.set_entry(
            target,
            key,
            vault.parse_value(value),
            secret=secret,
            public=public,
            category=category,
            description=description,
        )
    verb = "created" if result.created else "set" if result.changed else "unchanged"
    suffix = ", secret" if result.is_secret else ""
    _out(f"{result.instance}: {result.key} {verb} (version {result.version}{suffix})")
    if result.warning:
        _err(f"warning: {result.warning}")


@config_app.command("unset")
def config_unset(key: KeyArg, instance: OneInstanceOpt, fleet: FleetOpt = None) -> None:
    """Delete a vault key.

    Example: ophelia-db config unset OLD_KEY -i corte
    """
    with errors():
        target = fleet_at(fleet).select([instance])[0]
        removed = vault.unset_entry(target, key)
    _out(f"{target.name}: {key} {'removed' if removed else 'was not set'}")


# --- lifecycle, instances, doctor -----------------------------------------------------------------


def _set_status(name: str, status: Status, json_: bool, fleet: Path | None) -> None:
    with errors():
        change = lifecycle.set_status(fleet_at(fleet), name, status)
    if json_:
        emit_json(change.as_record())
    elif change.changed:
        _out(f"{change.name}: {change.previous or 'not registered'} -> {change.status}")
    else:
        _out(f"{change.name}: already {change.status}")


def archive(name: NameArg, json_: JsonOpt = False, fleet: FleetOpt = None) -> None:
    """Mark an instance archived in the hub: `upgrade --all` skips it, `status` shows it.

    Example: ophelia-db archive corte
    """
    _set_status(name, "archived", json_, fleet)


def suspend(name: NameArg, json_: JsonOpt = False, fleet: FleetOpt = None) -> None:
    """Mark an instance suspended in the hub: `upgrade --all` skips it, the app stops resolving it.

    Example: ophelia-db suspend corte
    """
    _set_status(name, "suspended", json_, fleet)


def activate(name: NameArg, json_: JsonOpt = False, fleet: FleetOpt = None) -> None:
    """Mark an instance active in the hub again (also ends a provisioning left pending).

    Example: ophelia-db activate corte
    """
    _set_status(name, "active", json_, fleet)


def instances(
    json_: JsonOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if fleet.toml and the registry differ.")
    ] = False,
    fleet: FleetOpt = None,
) -> None:
    """List the fleet as the hub registry sees it, flagging names only one side knows.

    Example: ophelia-db instances --check
    """
    with errors():
        report = lifecycle.instances(fleet_at(fleet))
    if json_:
        emit_json(report.as_record())
    else:
        rows = [
            [
                m.name,
                m.role,
                m.community_name or "-",
                m.community_type or "-",
                m.status or "-",
                m.schema_version or "-",
                m.flag or "",
            ]
            for m in report.members
        ]
        _table(
            f"instances (hub {report.hub})",
            ["name", "role", "community", "type", "status", "version", "flag"],
            rows,
        )
    raise typer.Exit(report.exit_code(check))


def doctor(instance: OneInstanceOpt, json_: JsonOpt = False, fleet: FleetOpt = None) -> None:
    """Check an instance as the Ophelia app sees it (anon role, hub, version); one line per check.

    Example: ophelia-db doctor --instance corte
    """
    with errors():
        loaded = fleet_at(fleet)
        report = doctor_checks.doctor(loaded, loaded.select([instance])[0])
    if json_:
        emit_json(report.as_record())
    else:
        for check in report.checks:
            _out(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.command("provision")(provision_command)
    app.add_typer(config_app, name="config")
    for command in (archive, suspend, activate, instances, doctor):
        app.command()(command)
