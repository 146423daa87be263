"""Alembic environment for ophelia-db: one revision chain, many databases.

ophelia-db drives Alembic in-process and hands this file an open connection
and the mirror hook through ``config.attributes`` (Alembic's "sharing a
connection" recipe). Plain Alembic keeps working for one fleet instance:
``alembic -x instance=corte upgrade head`` connects, locks, mirrors and
reports to the hub through ophelia_db.standalone.
"""

from alembic import context

config = context.config


def _configure(**options):
    hook = config.attributes.get("on_version_apply")
    context.configure(
        target_metadata=None,
        # One transaction per revision: a failure in revision N leaves N-1 committed.
        transaction_per_migration=True,
        version_table_schema="public",
        on_version_apply=[hook] if hook else [],
        **options,
    )


def run_migrations_offline() -> None:
    if config.attributes.get("on_version_apply") is None:
        from ophelia_db.run.plain_alembic import offline_hook

        config.attributes["on_version_apply"] = offline_hook(context)
    _configure(
        url="postgresql+psycopg://",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        output_buffer=config.attributes.get("output_buffer"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from ophelia_db.run.plain_alembic import run_online

        run_online(context, _configure)
        return
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
