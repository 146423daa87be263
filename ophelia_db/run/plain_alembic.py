"""Plain ``alembic -x instance=NAME ...`` on one fleet instance.

This module owns what ``alembic/env.py`` does when Alembic's own command
line runs it without an ophelia-db connection: find the instance in
fleet.toml, take its migration lock, run the revisions with the mirror
hook, and report the result to the hub — the same guarantees as
``ophelia-db upgrade --instance NAME``. Errors become Alembic
``CommandError``s, which Alembic prints as one ``FAILED:`` line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic.util import CommandError

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet.config import Target, load_fleet
from ophelia_db.fleet.connections import connect, engine_for
from ophelia_db.fleet.hub import RegistryUpdate
from ophelia_db.fleet.hub_writer import HubReporter
from ophelia_db.fleet.lock import migration_lock
from ophelia_db.run.chain import Chain, ChainSpec
from ophelia_db.run.driver import EnvAttributes
from ophelia_db.run.mirror import MirrorHook
from ophelia_db.run.state import read_state


def _command_error(message: str) -> Exception:
    return CommandError(message)


def _spec(context: Any) -> ChainSpec:
    config = context.config
    return ChainSpec(
        alembic_ini=Path(config.config_file_name).resolve(),
        version_locations=config.get_main_option("version_locations"),
    )


def _target(context: Any) -> tuple[Target, Target]:
    options = context.get_x_argument(as_dictionary=True)
    name = options.get("instance")
    if not name:
        raise _command_error(
            "name the fleet instance: alembic -x instance=NAME ... "
            "(or use `ophelia-db upgrade --instance NAME`)"
        )
    try:
        fleet = load_fleet(options.get("fleet"))
        target = fleet.get(name)
        target.dsn()
    except OpheliaError as exc:
        raise _command_error(exc.message) from None
    return target, fleet.hub


def offline_hook(context: Any) -> MirrorHook:
    """The mirror hook for ``--sql`` output (instance optional)."""
    options = context.get_x_argument(as_dictionary=True)
    return MirrorHook(chain=Chain.load(_spec(context)), instance_id=options.get("instance"))


def run_online(context: Any, configure: Callable[..., None]) -> None:
    """Run the requested Alembic command on one fleet instance, locked and mirrored."""
    target, hub = _target(context)
    chain = Chain.load(_spec(context))
    hook = MirrorHook(chain=chain, instance_id=target.name)
    EnvAttributes(on_version_apply=hook).install(context.config)
    failure: str | None = None
    try:
        with migration_lock(target):
            engine = engine_for(target)
            try:
                with engine.connect() as connection:
                    configure(connection=connection)
                    with context.begin_transaction():
                        context.run_migrations()
            finally:
                engine.dispose()
    except OpheliaError as exc:
        raise _command_error(exc.message) from None
    except Exception as exc:
        failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        if hook.applied or hook.reverted or failure:
            _report(target, hub, "failed" if failure else "ok", failure)


def _report(target: Target, hub: Target, run_status: str, error: str | None) -> None:
    try:
        with connect(target, autocommit=True) as conn:
            state = read_state(conn)
    except OpheliaError:
        return
    reporter = HubReporter(hub)
    reporter.report(
        RegistryUpdate(
            target=target,
            run_status=run_status,
            version_known=True,
            schema_version=state.revision,
            schema_updated_at=state.updated_at,
            migrations_count=state.migrations_count,
            error=error,
        )
    )
    reporter.close()
    if reporter.state != "ok":
        # Unconfigured logging sends warnings to stderr, next to Alembic's own lines.
        logging.getLogger(__name__).warning("hub report %s: %s", reporter.state, reporter.error)
