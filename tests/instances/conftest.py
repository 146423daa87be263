"""Fixtures of the instances tests: databases already at head, cloned from a migrated template.

They are cloned from one template migrated once per session (``CREATE
DATABASE ... TEMPLATE``), which keeps these tests fast; the end-to-end tests
still start from brand-new empty databases.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.local.cluster import LocalCluster
from tests.helpers import MakeDatabase, write_fleet
from tests.instances.support import HeadDatabase, rows


@pytest.fixture(scope="session")
def head_template(pg_cluster: LocalCluster) -> Iterator[str]:
    """A database migrated to head once, to clone (its registry emptied)."""
    name = f"tmpl_head_{uuid.uuid4().hex[:10]}"
    janitor = DatabaseJanitor(
        user="postgres", host=pg_cluster.host, port=pg_cluster.port, dbname=name, connection_timeout=10
    )
    janitor.init()
    url = pg_cluster.url(name)
    with tempfile.TemporaryDirectory() as directory:
        fleet = load_fleet(write_fleet(Path(directory), url, {}))
        report = ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    assert report.exit_code == 0, report.as_record()
    rows(url, "DELETE FROM public.instance_registry")
    rows(url, "DELETE FROM public.ophelia_runs")  # the journal of the run that made the template
    rows(url, "UPDATE public.schema_version SET instance_id = NULL")
    try:
        yield name
    finally:
        janitor.drop()


@pytest.fixture
def head_database(make_database: MakeDatabase, head_template: str) -> HeadDatabase:
    """Factory of databases already at head (URL returned), dropped at teardown."""

    def make(prefix: str = "head") -> str:
        return make_database(prefix, template=head_template)

    return make
