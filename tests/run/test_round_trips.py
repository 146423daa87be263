"""Round trips per instance, counted by a proxy between ophelia-db and a real PostgreSQL.

Remote fleets pay a network round trip per exchange, so the number of
exchanges is the speed a test can hold without timing anything: a change that
sends statements one by one again fails here. A round trip is a client turn
(``bench/latency_proxy.py``); the proxy delays each direction by a few
milliseconds so that pipelined statements are seen as the one turn they are.
Two turns of every figure are the connection's start-up (SSL request, startup
message; TLS and SCRAM add more on a real remote database).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import ophelia_db
from bench.latency_proxy import LatencyProxy
from ophelia_db.fleet.catalog import fingerprint
from ophelia_db.fleet.config import Target, load_fleet
from ophelia_db.fleet.hub_writer import HubReporter
from ophelia_db.run.upgrade import Progress
from tests.helpers import (
    HEAD,
    REVISIONS,
    chain_at,
    chain_locations,
    current_version,
    invoke,
    run_cli,
    silent_server,
    write_fleet,
)

# One instance from empty to head (5 revisions), on the first look's connection kept for it:
# start-up 2, first look 1, then one message: the session token, the lock and a check that the
# state is still the look's (the look showed the connection direct), all the revisions, the
# fingerprint and the unlock 1 (issue 11 asks <= 10; more than 4 means the revisions no longer
# share one message, the fingerprint went on its own, the first look's connection was not kept,
# or the lock went in a round trip of its own, as it did until the look's state was checked
# under the lock instead of read again: 5).
EMPTY_TO_HEAD_ON_ITS_CONNECTION = 4
# And no other: the pooler witness (start-up 2 + 1) is spared, since the backend that answers is
# the one the start-up named (PostgreSQL itself, not a pooler: fleet/lock.py).
EMPTY_TO_HEAD_CONNECTIONS = 1
# An instance that has its tables and is behind: the same.
BEHIND_ON_ITS_CONNECTION = 4
# An instance at the shipped head, then a revision Alembic runs online (tests/chains/cic: an index
# built concurrently), in a fresh process: start-up 2, look 1, token with the lock and the state
# read 1; SQLAlchemy's dialect start-up 6 (BEGIN, 4 queries, ROLLBACK; once per process);
# Alembic's statements and the revision's, one by one (16, with the time boxes and the
# section's marker, one round trip); the mirror rows 1, COMMIT 1; the fingerprint with the
# unlock 1. It took 40: hstore's lookup 3, the marker 4, the mirror rows 3, the fingerprint in
# a transaction of psycopg's 4.
ONLINE_REVISION_ON_ITS_CONNECTION = 29
# An empty instance to 0105 in a worker process (its look's connection stays behind): start-up
# 2, then one message: the session token, the lock, the check that the state is still the look's
# and the batches 1 (on a connection the look did not open: the opening checks that its backend
# is the one the start-up named; it took 3: the token, the lock and the read, the batches); then
# Alembic online as above, the dialect start-up included (the worker's first connection).
WORKER_EMPTY_TO_ONLINE_REVISION = 28
NOOP_OR_STATUS = 3  # start-up 2 + one state read, on one connection
NOOP_HUB_WRITES = 4  # a no-op run's reporter connection to the hub (5 when the start went alone)
SYNC = 4  # start-up 2, the state read, the schema fingerprint, on one connection


@contextmanager
def _through_proxy(url: str) -> Iterator[tuple[LatencyProxy, str]]:
    """A counting proxy in front of ``url``'s server, and ``url`` pointed at it."""
    direct = urlsplit(url)
    with LatencyProxy(direct.hostname or "127.0.0.1", direct.port or 5432, rtt=0.004) as proxy:
        yield proxy, urlunsplit(direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}"))


@pytest.fixture
def proxied(tmp_path, fleet_dbs):
    """A fleet whose instance is reached through a counting proxy (the hub directly)."""
    hub, instances = fleet_dbs(1)
    with _through_proxy(instances["inst1"]) as (proxy, through):
        fleet = load_fleet(write_fleet(tmp_path, hub, {"inst1": through}))
        yield fleet, proxy, instances["inst1"]


def test_empty_instance_to_head_in_few_round_trips(proxied):
    fleet, proxy, url = proxied
    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert [r.result for r in report.instances] == ["ok"]
    assert current_version(url) == HEAD
    counts = proxy.counts
    assert counts.connections == EMPTY_TO_HEAD_CONNECTIONS, counts
    migration = max(counts.per_connection)
    # Sent statement by statement, as Alembic online does, the same run took 84.
    assert migration <= EMPTY_TO_HEAD_ON_ITS_CONNECTION, counts
    # The fingerprint the batch carried is the one read on its own (as `drift` reads it).
    with psycopg.connect(url, autocommit=True) as conn:
        assert report.instances[0].schema_fingerprint == fingerprint(conn)


def test_an_instance_behind_by_one_revision_in_four_round_trips(proxied):
    fleet, proxy, url = proxied
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to=REVISIONS[-2], jobs=1)
    proxy.reset()
    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert [(r.result, r.applied) for r in report.instances] == [("ok", (HEAD,))], report.instances
    assert current_version(url) == HEAD
    assert proxy.counts.connections == 1, proxy.counts
    assert proxy.round_trips <= BEHIND_ON_ITS_CONNECTION, proxy.counts
    with psycopg.connect(url) as conn:  # the token went with the lock, and the batch saw it
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


def test_noop_upgrade_and_status_read_once_on_one_connection(proxied):
    fleet, proxy, _ = proxied
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    for action in (
        lambda: ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1),
        lambda: ophelia_db.status(fleet, fleet.select(["inst1"])),
    ):
        proxy.reset()
        action()
        assert proxy.counts.connections == 1, proxy.counts
        assert proxy.round_trips <= NOOP_OR_STATUS, proxy.counts


def test_sync_reads_version_and_fingerprint_on_one_connection(proxied):
    fleet, proxy, _ = proxied
    ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1)  # the hub too: its registry is written
    proxy.reset()
    report = ophelia_db.sync(fleet, fleet.select(["inst1"]))
    assert report.hub_report == "ok", report.hub_error
    assert proxy.counts.connections == 1, proxy.counts  # was 2: the fingerprint on one of its own
    assert proxy.round_trips <= SYNC, proxy.counts
    with psycopg.connect(fleet.hub.url.get_secret_value()) as hub:
        pushed = hub.execute(
            "SELECT metadata->>'schema_fingerprint' FROM instance_registry WHERE subdomain = 'inst1'"
        ).fetchone()
    assert pushed is not None and pushed[0] and pushed[0].startswith("sha256:")


def test_every_instance_is_migrated_on_its_first_looks_connection_even_beyond_jobs(tmp_path, fleet_dbs):
    # Every look ends before the first wave starts: keeping only ``jobs`` of them open made the
    # others connect again (six round trips with TLS and SCRAM), one connection more each.
    hub, instances = fleet_dbs(3)
    with _through_proxy(instances["inst1"]) as (proxy, _):
        port = f":{urlsplit(instances['inst1']).port}/"
        through = {name: url.replace(port, f":{proxy.port}/") for name, url in instances.items()}
        fleet = load_fleet(write_fleet(tmp_path, hub, through))
        report = ophelia_db.upgrade(fleet, fleet.select(["inst1", "inst2", "inst3"]), jobs=1)
        assert [(r.name, r.result) for r in report.instances] == [(f"inst{i}", "ok") for i in (1, 2, 3)]
        assert proxy.counts.connections == 3, proxy.counts
        assert max(proxy.counts.per_connection) <= EMPTY_TO_HEAD_ON_ITS_CONNECTION, proxy.counts


def test_a_run_opens_one_connection_to_the_hub(tmp_path, fleet_dbs):
    # The registry's lifecycle statuses are read on the connection the reports then use.
    hub, instances = fleet_dbs(1)
    with _through_proxy(hub) as (proxy, through):
        fleet = load_fleet(write_fleet(tmp_path, through, instances))
        ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
        proxy.reset()
        report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
        assert report.hub_report == "ok"
        assert proxy.connections == 1, proxy.counts


def test_the_hub_read_ahead_is_the_connection_the_run_reports_on(tmp_path, fleet_dbs):
    # The CLI starts the hub's start-up and registry read before loading the run; the run then
    # reads the lifecycle statuses from it and writes on the same connection.
    hub, instances = fleet_dbs(2)
    with _through_proxy(hub) as (proxy, through):
        path = write_fleet(tmp_path, through, instances)
        assert invoke(["upgrade", "--instance", "hub", "--fleet", str(path)]).exit_code == 0
        archived = invoke(["archive", "inst2", "--fleet", str(path)])
        assert archived.exit_code == 0, archived.stdout + archived.stderr
        first = invoke(["upgrade", "--all", "--fleet", str(path)])
        assert first.exit_code == 0, first.stdout + first.stderr
        assert "skipped (archived or suspended in the hub): inst2" in first.stderr
        proxy.reset()
        again = invoke(["upgrade", "--all", "--fleet", str(path)])
        assert again.exit_code == 0, again.stdout + again.stderr
        # The reporter's (read ahead, then the writes) and the hub's own first look as a member.
        assert proxy.connections == 2, proxy.counts
        # The reporter's: start-up 2, the registry read 1, then the journal's start, every result
        # and the journal's end in one write: nothing was left to wait for.
        assert max(proxy.counts.per_connection) <= NOOP_HUB_WRITES, proxy.counts

        proxy.reset()
        fleet = load_fleet(path)
        ahead = HubReporter(fleet.hub)
        ahead.read_ahead()
        report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1, hub_reporter=ahead)
        assert report.hub_report == "ok" and [r.name for r in report.instances] == ["hub", "inst1"]
        assert proxy.connections == 2, proxy.counts
    assert current_version(instances["inst2"]) is None  # archived: never migrated


def test_the_journals_start_waits_for_the_runs_first_result(tmp_path, fleet_dbs):
    # Nothing to do, and one instance that never answers: its result comes a connect_timeout
    # after the run's start was journalled, and the start still goes to the hub with it, in one
    # write with every other result and the run's end (two writes when the start went alone).
    hub, instances = fleet_dbs(1)
    with _through_proxy(hub) as (proxy, through), silent_server() as (port, _):
        hung = {"hung": f"postgresql://postgres@127.0.0.1:{port}/hung"}
        fleet = load_fleet(
            write_fleet(tmp_path, through, {**instances, **hung}, defaults='connect_timeout = "1s"')
        )
        ophelia_db.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)
        proxy.reset()
        report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1)
        results = [(r.name, r.result) for r in report.instances]
        assert results == [("hub", "noop"), ("hung", "unreachable"), ("inst1", "noop")], results
        assert report.hub_report == "ok", report.hub_error
        # The hub's own look (start-up 2, the look 1), and the reporter's: start-up 2, the
        # registry read 1, then the one write.
        assert sorted(proxy.counts.per_connection) == [3, NOOP_HUB_WRITES], proxy.counts
    with psycopg.connect(hub) as conn:
        journalled = conn.execute(
            "SELECT instance, state FROM public.ophelia_run_instances WHERE run_id = %s ORDER BY 1",
            (report.run_id,),
        ).fetchall()
    assert journalled == [("hub", "noop"), ("hung", "unreachable"), ("inst1", "noop")]


def test_a_first_look_connection_the_server_closed_is_replaced(tmp_path, fleet_dbs):
    # The first look's connection waits for its migration (behind the hub, say); a server that
    # ends it meanwhile (idle timeout, restart) must not fail the instance.
    hub, instances = fleet_dbs(1)
    url = instances["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub, instances))
    dbname = urlsplit(url).path.lstrip("/")

    def end_its_sessions(target: Target) -> None:
        with psycopg.connect(hub, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            ).fetchall()
        assert ended == [(True,)]  # the kept first look, and nothing else yet

    report = ophelia_db.upgrade(
        fleet, fleet.select(["inst1"]), jobs=1, progress=Progress(on_start=end_its_sessions)
    )
    assert [(r.result, r.to_revision) for r in report.instances] == [("ok", HEAD)]
    assert current_version(url) == HEAD


def test_a_revision_alembic_runs_online_in_few_round_trips(proxied):
    fleet, proxy, url = proxied
    # The hub too: it takes the run's report.
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0
    proxy.reset()
    online = chain_locations("cic")
    done = run_cli(["upgrade", "--instance", "inst1", "--json"], fleet=fleet.path, locations=online)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"][0]["applied"] == ["0105"]
    assert proxy.counts.connections == 1, proxy.counts
    assert proxy.round_trips <= ONLINE_REVISION_ON_ITS_CONNECTION, proxy.counts
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('public.ophelia_interrupted_steps')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


def test_an_instance_migrated_in_a_worker_process_opens_no_witness(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(2)
    with _through_proxy(instances["inst1"]) as (proxy, through):
        fleet = load_fleet(write_fleet(tmp_path, hub, {"inst1": through, "inst2": instances["inst2"]}))
        chain = chain_at(chain_locations("cic"))  # 0105 needs Alembic online: each instance goes to a worker
        report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=4, chain=chain)
    assert [(r.name, r.result, r.to_revision) for r in report.instances] == [
        ("hub", "ok", "0105"),
        ("inst1", "ok", "0105"),
        ("inst2", "ok", "0105"),
    ]
    # The first look, and the worker's own connection: the look showed PostgreSQL itself there, so
    # the worker opens no witness ahead (it did: 3 connections, a backend more for every instance).
    assert proxy.counts.connections == 2, proxy.counts
    assert max(proxy.counts.per_connection) <= WORKER_EMPTY_TO_ONLINE_REVISION, proxy.counts
