"""fleet.toml, URLs, redaction and the hub registry.

The session cluster and database factories come from ``tests/conftest.py``;
shared helpers from ``tests/helpers.py``.
"""
