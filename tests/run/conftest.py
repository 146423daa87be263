"""Running the chain: upgrade, downgrade, the mirror, workers, locks, plain Alembic.

The session cluster and database factories come from ``tests/conftest.py``;
shared helpers from ``tests/helpers.py``.
"""
