"""The command line: exit codes, one-line errors, JSON and plain output, help and README, secrets.

The session cluster and database factories come from ``tests/conftest.py``;
shared helpers from ``tests/helpers.py``.
"""
