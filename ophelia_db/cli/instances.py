"""Looking after live instances: `config`, `archive`/`suspend`/`activate`, `instances`, `doctor`.

Each parses its options, calls one function of ``ophelia_db.instances``,
renders the report through ``render.emit`` (renderers in
``render/instances.py``) and exits with its code. Secrets are typed at
hidden prompts or read from stdin, never echoed, and shown as ``***``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ophelia_db._lazy import lazy_module
from ophelia_db.cli.options import (
    AllOpt,
    FleetOpt,
    InstanceOpt,
    JsonOpt,
    OneInstanceOpt,
    YesOpt,
    confirmed,
    errors,
    fail,
    fleet_at,
)
from ophelia_db.cli.render import emit, emit_json, err, is_tty, out, table
from ophelia_db.cli.render.instances import TERMINAL_CELL, entry_row
from ophelia_db.errors import ConfigError, combine_exit_codes

if TYPE_CHECKING:
    from ophelia_db import instances as library
    from ophelia_db.fleet.hub import Status
    from ophelia_db.instances import seed, vault
else:
    # Loaded when a command runs: `status` and the rest need no provisioning code.
    library = lazy_module("ophelia_db.instances")
    vault = lazy_module("ophelia_db.instances.vault")
    seed = lazy_module("ophelia_db.instances.seed")

RevealOpt = Annotated[bool, typer.Option("--reveal", help="Show secret values instead of ***.")]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Instance name (its subdomain).")]
KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Vault key, UPPER_SNAKE_CASE.")]

config_app = typer.Typer(
    help="The instance vault: list, get, set and unset keys (secrets masked).", no_args_is_help=True
)


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
        title = f"{configs[0].instance}: instance_config"
        headers = ["key", "value", "category", "access", "version"]
        limit = TERMINAL_CELL if is_tty(sys.stdout) else None
        table(title, headers, [entry_row(e, limit) for e in configs[0].entries])
    else:
        rows = []
        for key in sorted({e.key for c in configs for e in c.entries}):
            cells, variants = vault.compare(configs, key)
            same = "same" if variants == 1 else "differs"
            rows.append(
                [key, same, *(f"{c.instance}={cell}" for c, cell in zip(configs, cells, strict=True))]
            )
        table("instance_config across the fleet", ["key", "", *(c.instance for c in configs)], rows)
    _exit_with_errors(configs)


def _exit_with_errors(configs: list[vault.InstanceConfig]) -> None:
    for config in configs:
        if config.error:
            err(f"error: {config.error}")
    raise typer.Exit(combine_exit_codes([c.exit_code for c in configs]))


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
                emit(entry, as_json=True, code=0)
            out(entry.shown)
            if entry.is_secret and not reveal:
                err(f"note: {key} is secret; --reveal shows it")
            raise typer.Exit(0)
        configs = vault.read_fleet(targets, key, reveal=reveal)
    if json_:
        emit_json({"key": key, "instances": [c.as_record() for c in configs]})
    else:
        cells, distinct = vault.compare(configs, key, missing="(not set)", failed="(error)")
        rows = [[c.instance, cell] for c, cell in zip(configs, cells, strict=True)]
        table(key, ["instance", "value"], rows)
        out(f"{key}: {'the same everywhere' if distinct == 1 else f'{distinct} different values'}")
    _exit_with_errors(configs)


@config_app.command("set")
def config_set(
    key: KeyArg,
    instance: OneInstanceOpt,
    value: Annotated[
        str | None,
        typer.Argument(
            metavar="[VALUE]", help="JSON value, or a plain string; omitted: read from stdin or asked hidden."
        ),
    ] = None,
    secret: Annotated[
        bool | None,
        typer.Option("--secret/--no-secret", help="Mark the key secret (never readable by anon)."),
    ] = None,
    public: Annotated[
        bool | None, typer.Option("--public/--private", help="Readable by anon (the app before login).")
    ] = None,
    category: Annotated[
        str | None, typer.Option("--category", metavar="NAME", help="Category (default general).")
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="What the key is for.")
    ] = None,
    as_string: Annotated[
        bool, typer.Option("--string", help="Store the value as text, even if it looks like JSON.")
    ] = False,
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
            if not value:
                raise ConfigError(f"{key}: no value given (empty input); nothing was stored")
        result = vault.set_entry(
            target,
            key,
            vault.parse_value(value, as_string=as_string),
            secret=secret,
            public=public,
            category=category,
            description=description,
        )
    verb = "created" if result.created else "set" if result.changed else "unchanged"
    suffix = ", secret" if result.is_secret else ""
    out(f"{result.instance}: {result.key} {verb} (version {result.version}{suffix})")
    if result.warning:
        err(f"warning: {result.warning}")


@config_app.command("unset")
def config_unset(key: KeyArg, instance: OneInstanceOpt, yes: YesOpt = False, fleet: FleetOpt = None) -> None:
    """Delete a vault key, after showing it and asking (elsewhere than on a terminal: --yes).

    The row goes with its previous value: unlike set, unset keeps nothing.

    Example: ophelia-db config unset OLD_KEY -i corte --yes
    """
    with errors():
        target = fleet_at(fleet).select([instance])[0]
        if not yes:
            entry = vault.find_entry(target, key)
            if entry is None:
                out(f"{target.name}: {key} was not set")
                return
            read_by_app = " (the app reads it before login)" if key in seed.APP_PUBLIC_KEYS else ""
            shown = f"{key} = {entry.shown}, version {entry.version}{read_by_app}"
            err(f"{target.name}: {shown}, would be deleted")
            confirmed(f"Delete {key} from {target.name}'s vault?", yes=False, refuse="nothing was deleted")
        removed = vault.unset_entry(target, key)
    out(f"{target.name}: {key} {'removed' if removed else 'was not set'}")


def _set_status(name: str, status: Status, json_: bool, fleet: FleetOpt) -> None:
    with errors():
        change = library.set_status(fleet_at(fleet), name, status)
    emit(change, as_json=json_, code=0)


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
        bool,
        typer.Option(
            "--check",
            help="Also read each instance; exit 1 if fleet.toml, the registry and the live versions differ.",
        ),
    ] = False,
    fleet: FleetOpt = None,
) -> None:
    """List the fleet as the hub registry sees it, flagging names only one side knows.

    With --check each instance is read too, and a registry row whose version is
    not the instance's own is flagged (`ophelia-db sync` fixes it).

    Example: ophelia-db instances --check
    """
    with errors():
        report = library.instances(fleet_at(fleet), live=check)
    emit(report, as_json=json_, code=report.exit_code(check))


def doctor(instance: OneInstanceOpt, json_: JsonOpt = False, fleet: FleetOpt = None) -> None:
    """Check an instance as the Ophelia app sees it (anon role, hub, version); one line per check.

    Example: ophelia-db doctor --instance corte
    """
    with errors():
        loaded = fleet_at(fleet)
        report = library.doctor(loaded, loaded.select([instance])[0])
    emit(report, as_json=json_)


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
    app.add_typer(config_app, name="config")
    for command in (archive, suspend, activate, instances, doctor):
        app.command()(command)
