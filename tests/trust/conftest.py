"""Fixtures of the trust tests: the shipped chain's reference schemas, built once per session.

Building them (the chain applied revision by revision to a scratch database)
is the expensive part of these tests, so ``references`` builds them once and
writes them to the session cluster's reference cache, where the CLI finds them.
"""

from __future__ import annotations

import pytest

from ophelia_db.local.cluster import LocalCluster
from ophelia_db.trust.reference import References, build_references
from tests.helpers import CHAIN
from tests.trust.support import reference_cache

_built: dict[int, References] = {}


@pytest.fixture(scope="session")
def references(pg_cluster: LocalCluster) -> References:
    """The shipped chain's reference snapshots, built once per test session (and cached on disk)."""
    if pg_cluster.port not in _built:
        _built[pg_cluster.port] = build_references(
            CHAIN, scratch_url=pg_cluster.url("postgres"), cache_dir=reference_cache(pg_cluster)
        )
    return _built[pg_cluster.port]
