"""The embedded local PostgreSQL cluster.

The session cluster and database factories come from ``tests/conftest.py``;
shared helpers from ``tests/helpers.py``.
"""
