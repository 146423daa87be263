"""A plain Alembic environment: the peer ophelia-db is measured against.

What a team using Alembic alone, driven well, would run: one connection,
one transaction per revision, nothing else (no lock, no mirror, no report).
The database URL comes from ``config.attributes["url"]`` (in-process runs)
or ``-x url=...``; offline, the SQL goes to the configured output buffer.
"""

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from alembic import context

config = context.config


def run_migrations_offline() -> None:
    context.configure(
        url="postgresql+psycopg://",
        literal_binds=True,
        transaction_per_migration=True,
        output_buffer=config.attributes.get("output_buffer"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True)["url"]
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
