"""Alembic environment for ophelia-db: one revision chain, many databases.

ophelia-db drives Alembic in-process and hands this file an open connection
(or an output buffer) and the mirror hook through ``config.attributes``
(Alembic's "sharing a connection" recipe; see ophelia_db/run/driver.py).
Plain Alembic keeps working for one fleet instance:
``alembic -x instance=corte upgrade head`` connects, locks, mirrors and
reports to the hub through ophelia_db/run/plain_alembic.py.
"""

from alembic import context
from ophelia_db.run.driver import EnvAttributes
from ophelia_db.run.plain_alembic import offline_hook, run_online

config = context.config
given = EnvAttributes.of(config)


def _configure(**options):
    hook = EnvAttributes.of(config).on_version_apply
    context.configure(
        target_metadata=None,
        # One transaction per revision: a failure in revision N leaves N-1 committed.
        transaction_per_migration=True,
        version_table_schema="public",
        on_version_apply=[hook] if hook else [],
        **options,
    )


def run_migrations_offline() -> None:
    if given.on_version_apply is None:
        EnvAttributes(on_version_apply=offline_hook(context)).install(config)
    _configure(
        url="postgresql+psycopg://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        output_buffer=given.output_buffer,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    if given.connection is None:
        run_online(context, _configure)
        return
    _configure(connection=given.connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
