"""Upgrading through the library: a fresh instance to head, the round trip, a failing revision."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import Target, load_fleet
from ophelia_db.run.chain import file_checksum
from ophelia_db.run.state import InstanceState
from ophelia_db.run.upgrade import Progress
from tests.helpers import (
    ALEMBIC_INI,
    CHAIN,
    HEAD,
    REVISIONS,
    FleetDbs,
    alembic_version,
    assert_consistent,
    chain_locations,
    execute,
    exists,
    failing_chain,
    invoke,
    registry,
    rows,
    run_cli,
    snapshot,
    write_fleet,
)

pytestmark = pytest.mark.pg

FAILING_LOCATIONS = chain_locations("failing")
CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")


# --- the tests ----------------------------------------------------------------------------


def test_chain_under_test_is_0001_to_0005() -> None:
    assert REVISIONS == ["0001", "0002", "0003", "0004", "0005"], (
        "tests/chains/failing builds on 0005 and these tests expect 5 revisions; update them with the chain"
    )
    assert failing_chain().head == "0106"


def test_fresh_instance_to_head_writes_the_mirror(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))

    report = ophelia_db.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)

    assert report.exit_code == 0, report.as_record()
    assert report.hub_report == "ok"
    result = {r.name: r for r in report.instances}["inst1"]
    assert (result.result, result.from_revision, result.to_revision) == ("ok", None, HEAD)
    assert list(result.applied) == REVISIONS
    assert alembic_version(url) == [HEAD]

    history = rows(
        url,
        "SELECT version, name, checksum, execution_time_ms, applied_by, applied_at "
        "FROM public.schema_migrations ORDER BY id",
    )
    assert [h[0] for h in history] == REVISIONS
    for version, name, checksum, ms, by, applied_at in history:
        revision = CHAIN.get(version)
        assert name == revision.name and name, version
        assert CHECKSUM.match(checksum), checksum
        assert checksum == file_checksum(revision.path)
        assert ms is not None and ms >= 0, f"{version}: execution_time_ms {ms!r}"
        assert by.startswith("ophelia-db/"), by
        assert applied_at is not None

    assert rows(url, "SELECT current_version, instance_id FROM public.schema_version") == [(HEAD, "inst1")]
    version, updated_at, instance_id, count = rows(url, "SELECT * FROM public.get_schema_version()")[0]
    assert (version, instance_id, count) == (HEAD, "inst1", len(REVISIONS))
    assert updated_at is not None
    assert rows(url, "SELECT * FROM public.get_pending_migrations(ARRAY['0001','0099'])") == [("0099",)]

    # A second run changes nothing.
    before = snapshot(url)
    again = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert [(r.result, r.exit_code) for r in again.instances] == [("noop", 0)]
    assert snapshot(url) == before


def test_two_step_upgrade_times_only_this_runs_revisions(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)

    first = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to="0002", jobs=1)
    assert first.exit_code == 0, first.as_record()
    assert_consistent(url, "0002")
    early = rows(url, "SELECT version, applied_at, execution_time_ms FROM public.schema_migrations")

    second = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert second.exit_code == 0, second.as_record()
    assert list(second.instances[0].applied) == ["0003", "0004", "0005"]
    assert_consistent(url, HEAD)
    late = rows(
        url, "SELECT version, applied_at, execution_time_ms FROM public.schema_migrations ORDER BY id"
    )
    assert late[:2] == sorted(early), "rows of the earlier run must be kept as they were"
    assert all(ms is not None for _, _, ms in late[2:])


def test_downgrade_upgrade_round_trip(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    ophelia_db.upgrade(fleet, fleet.select(["hub", "inst1"]), jobs=1)
    assert_consistent(url, HEAD)

    down = ophelia_db.downgrade(fleet, fleet.get("inst1"), to="0003")
    assert down.exit_code == 0, down.as_record()
    assert list(down.instances[0].reverted) == ["0005", "0004"]
    assert_consistent(url, "0003")
    assert not exists(url, "public.instance_registry")
    assert exists(url, "public.instance_config")
    assert registry(hub_url)["inst1"]["schema_version"] == "0003"

    up = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert up.exit_code == 0, up.as_record()
    assert list(up.instances[0].applied) == ["0004", "0005"]
    assert_consistent(url, HEAD)
    assert exists(url, "public.instance_registry")

    to_base = ophelia_db.downgrade(fleet, fleet.get("inst1"), to="base")
    assert to_base.exit_code == 0, to_base.as_record()
    assert list(to_base.instances[0].reverted) == list(reversed(REVISIONS))
    assert alembic_version(url) == []
    for relation in ("schema_migrations", "schema_version", "instance_config", "instance_registry"):
        assert not exists(url, f"public.{relation}"), relation

    back = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1)
    assert back.exit_code == 0, back.as_record()
    assert_consistent(url, HEAD)
    assert rows(url, "SELECT instance_id FROM public.schema_version") == [("inst1",)]


def test_downgrade_below_current_is_refused(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    ophelia_db.upgrade(fleet, fleet.select(["inst1"]), to="0002", jobs=1)
    before = snapshot(urls["inst1"])

    report = ophelia_db.downgrade(fleet, fleet.get("inst1"), to="0003")

    result = report.instances[0]
    assert (result.result, result.exit_code) == ("refused", 4), result
    assert "0003" in (result.error or "")
    assert snapshot(urls["inst1"]) == before


def test_failure_in_the_middle_rolls_back_that_revision_only(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)  # the hub stays on the project chain
    chain = failing_chain()

    report = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), chain=chain, jobs=1)

    assert report.exit_code == 5, report.as_record()
    result = report.instances[0]
    assert (result.result, result.exit_code) == ("failed", 5)
    assert list(result.applied) == [*REVISIONS, "0105"]
    assert result.to_revision == "0105"
    error = result.error or ""
    for needle in ("inst1", "0106", "0106_broken.py", "rolled back", "stays at 0105"):
        assert needle in error, f"{needle!r} missing from: {error}"
    assert "ophelia-db upgrade --instance inst1" in error, f"no next step in: {error}"
    assert "THIS IS NOT VALID SQL" in error or "syntax error" in error, error
    # What failed, in the server's words, its SQLSTATE, and the statement it came from.
    assert "[SQLSTATE 42601]" in error and "(in: THIS IS NOT VALID SQL)" in error, error
    assert "\n" not in error and "Traceback" not in error

    assert_consistent(url, "0105", chain)
    assert rows(url, "SELECT checksum FROM public.schema_migrations WHERE version = '0105'") == [
        (file_checksum(chain.get("0105").path),)
    ]
    assert exists(url, "public.instance_notes")
    assert not exists(url, "public.half_done"), "0106's CREATE TABLE must be rolled back"
    assert not rows(
        url,
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'instance_notes' AND column_name = 'tag'",
    )

    hub_row = registry(hub_url)["inst1"]
    assert (hub_row["last_run_status"], hub_row["schema_version"]) == ("failed", "0105")
    assert hub_row["migrations_count"] == len(REVISIONS) + 1
    assert "0106" in hub_row["last_error"]

    # Where it stands now, seen with both chains.
    status = ophelia_db.status(fleet, fleet.select(["inst1"]), chain=chain).instances[0]
    assert (status.state, status.current, list(status.pending)) == ("outdated", "0105", ["0106"])
    assert ophelia_db.status(fleet, fleet.select(["inst1"])).instances[0].state == "ahead"

    # Running again fails the same way and still leaves 0105.
    again = ophelia_db.upgrade(fleet, fleet.select(["inst1"]), chain=chain, jobs=1)
    assert (again.instances[0].result, again.instances[0].applied) == ("failed", ())
    assert_consistent(url, "0105", chain)


def test_failing_revision_in_a_parallel_run_is_rerun_online_and_named(
    fleet_dbs: FleetDbs, tmp_path: Path
) -> None:
    # In parallel, each instance migrates in a thread in batches; the failed batch is rolled back
    # and the instance handed to a worker process, where Alembic online names the statement.
    hub_url, urls = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub_url, urls))
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    chain = failing_chain()

    report = ophelia_db.upgrade(fleet, fleet.select(["inst1", "inst2"]), chain=chain, jobs=2)

    assert report.exit_code == 5, report.as_record()
    for result in report.instances:
        assert (result.result, result.to_revision) == ("failed", "0105"), result
        assert "(in: THIS IS NOT VALID SQL)" in (result.error or ""), result.error
        assert_consistent(urls[result.name], "0105", chain)


def test_failing_revision_cli_exit_5(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    path = write_fleet(tmp_path, hub_url, urls)
    fleet = load_fleet(path)
    ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1)
    env = {"OPHELIA_VERSION_LOCATIONS": FAILING_LOCATIONS, "OPHELIA_ALEMBIC_INI": str(ALEMBIC_INI)}

    proc = run_cli(["upgrade", "--instance", "inst1", "--fleet", str(path)], cwd=tmp_path, env=env)

    assert proc.returncode == 5, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    out = proc.stdout + proc.stderr
    assert "0106_broken.py" in out and "rolled back" in out, out
    assert_consistent(url, "0105", failing_chain())

    as_json = invoke(["upgrade", "--instance", "inst1", "--fleet", str(path), "--json"], env=env)
    assert as_json.exit_code == 5, as_json.stderr
    record = json.loads(as_json.stdout)
    [row] = record["instances"]
    assert (row["name"], row["result"], row["exit_code"], row["from"], row["to"]) == (
        "inst1",
        "failed",
        5,
        "0105",
        "0105",
    )
    assert "0106" in row["error"]


def test_a_missing_privilege_is_named_as_such(
    fleet_dbs: FleetDbs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_url, urls = fleet_dbs(1)
    admin = load_fleet(write_fleet(tmp_path, hub_url, urls))
    assert ophelia_db.upgrade(admin, admin.select(all_=True), jobs=1).exit_code == 0
    role = f"limited_{uuid.uuid4().hex[:8]}"
    execute(urls["inst1"], f"CREATE ROLE {role} LOGIN BYPASSRLS PASSWORD 'limited-pw'")
    for table in ("alembic_version", "schema_migrations", "schema_version"):
        execute(urls["inst1"], f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.{table} TO {role}")
    # The role may read and write the version tables but not create in schema public.
    limited_url = urls["inst1"].replace("postgresql://postgres@", f"postgresql://{role}@")
    monkeypatch.setenv("PGPASSWORD", "limited-pw")
    (tmp_path / "limited").mkdir()
    fleet = load_fleet(write_fleet(tmp_path / "limited", hub_url, {"inst1": limited_url}))

    report = ophelia_db.upgrade(
        fleet, fleet.select(["inst1"]), chain=failing_chain(), jobs=1, skip_inactive=False
    )

    result = report.instances[0]
    assert (result.result, result.exit_code) == ("failed", 5), result
    error = result.error or ""
    assert "0105 (0105_add_notes.py) needs a privilege the migration role lacks" in error, error
    assert "permission denied for schema public [SQLSTATE 42501]" in error, error
    assert "stays at 0005" in error and "grant that privilege" in error, error
    assert_consistent(urls["inst1"], HEAD)


def test_a_downgrade_that_drops_rows_says_so_and_needs_yes(fleet_dbs: FleetDbs, tmp_path: Path) -> None:
    hub_url, urls = fleet_dbs(1)
    url = urls["inst1"]
    path = write_fleet(tmp_path, hub_url, urls)
    assert run_cli(["upgrade", "--all"], fleet=path).returncode == 0
    execute(
        url,
        "INSERT INTO public.instance_config (key, value, is_secret) VALUES ('API_KEY', '1', true)",
    )

    refused = run_cli(["downgrade", "--instance", "inst1", "--to", "0002"], fleet=path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "table public.instance_config (1 row)" in refused.stderr and "--yes" in refused.stderr
    assert alembic_version(url) == [HEAD]  # nothing changed

    done = run_cli(["downgrade", "--instance", "inst1", "--to", "0002", "--yes"], fleet=path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_consistent(url, "0002")

    hub = run_cli(["downgrade", "--instance", "hub", "--to", "0003"], fleet=path)
    assert hub.returncode == 2 and "registry" in hub.stderr, hub.stderr
    assert alembic_version(hub_url) == [HEAD]
    gone = run_cli(["downgrade", "--instance", "hub", "--to", "0003", "--yes"], fleet=path)
    assert alembic_version(hub_url) == ["0003"], gone.stdout + gone.stderr
    assert "once the hub is back" not in gone.stderr and "sync --all" in gone.stderr


# A first look's connection kept for the migration: idle, its last query the state read.
_LOOKED = "state = 'idle' AND query LIKE '%alembic_version%'"


def _released_when(
    seen: Callable[[], bool], why: str, release: Callable[[], None]
) -> tuple[threading.Thread, list[str]]:
    """A thread that runs ``release`` once ``seen()`` holds, or after a 30 s breaker (only there so
    that a failing run does not hang the suite); the list then says which of the two it was."""
    released_by: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if seen():
                released_by.append(why)
                break
            time.sleep(0.005)  # a poll interval, not a timing: what ends the wait is what is seen
        else:
            released_by.append("the breaker")
        release()

    watching = threading.Thread(target=watch)
    watching.start()
    return watching, released_by


def _first_look_held_up(url: str) -> psycopg.Connection[Any]:
    """A connection whose open transaction locks ``url``'s alembic_version: a first look waits for it."""
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE public.alembic_version IN ACCESS EXCLUSIVE MODE")
    return blocker


def _backends(url: str, where: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {where}"
        ).fetchone()
    return found[0] if found else 0


def test_the_hubs_first_look_does_not_wait_for_the_registry_read(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    # The registry read (on the hub) is held up by a lock on instance_registry, released only
    # once the hub's first look is in: a run that looks at the hub after reading the registry
    # would wait for the breaker instead.
    hub, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    hub_target = fleet.select(names=["hub"])
    first = ophelia_db.upgrade(fleet, hub_target, to=REVISIONS[-2], skip_inactive=False)
    assert first.instances[0].result == "ok" and alembic_version(hub) == [REVISIONS[-2]]
    blocker = psycopg.connect(hub)
    blocker.execute("LOCK TABLE public.instance_registry IN ACCESS EXCLUSIVE MODE")
    # The hub's first look, kept for its migration: an idle backend whose last query read
    # alembic_version, while the registry read waits on the lock.
    watching, released_by = _released_when(
        lambda: _backends(hub, _LOOKED) > 0, "the hub's first look", blocker.rollback
    )
    try:
        report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=2)
    finally:
        watching.join()
        blocker.close()
    assert released_by == ["the hub's first look"]
    assert [(r.name, r.result) for r in report.instances] == [("hub", "ok"), ("inst1", "ok")]
    assert alembic_version(hub) == alembic_version(urls["inst1"]) == [HEAD]


def test_the_instances_are_looked_at_during_the_registry_read_and_one_left_out_is_not_waited_for(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    # The registry read is held up by a lock on instance_registry, released only once inst1's
    # first look is in. inst2 is archived, and its first look hangs on a lock of its own: the
    # run leaves it out without waiting for it, and that look then closes its connection.
    hub, urls = fleet_dbs(2)
    path = write_fleet(tmp_path, hub, urls)
    fleet = load_fleet(path)
    assert ophelia_db.upgrade(fleet, fleet.select(names=["hub"]), jobs=1).exit_code == 0
    assert invoke(["archive", "inst2", "--fleet", str(path)]).exit_code == 0
    inst2_blocker = _first_look_held_up(urls["inst2"])
    registry_blocker = psycopg.connect(hub)
    registry_blocker.execute("LOCK TABLE public.instance_registry IN ACCESS EXCLUSIVE MODE")
    # inst1's first look, kept for its migration: an idle backend whose last query read its state.
    watching, released_by = _released_when(
        lambda: _backends(urls["inst1"], _LOOKED) > 0, "inst1's first look", registry_blocker.rollback
    )
    try:
        report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=2)
        # The run is over while inst2's look still waits for its lock.
        assert _backends(urls["inst2"], "wait_event_type = 'Lock'") == 1
    finally:
        watching.join()
        registry_blocker.close()
        inst2_blocker.close()
    assert released_by == ["inst1's first look"]
    assert [(r.name, r.result) for r in report.instances] == [("hub", "noop"), ("inst1", "ok")]
    assert report.inactive == ("inst2",)
    assert alembic_version(urls["inst1"]) == [HEAD] and alembic_version(urls["inst2"]) == []
    deadline = time.monotonic() + 30  # the look ends once its lock is free; nothing keeps it open
    while _backends(urls["inst2"], "true") and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _backends(urls["inst2"], "true") == 0


def test_the_hub_migrates_while_the_instances_are_still_being_read(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    # inst1's first look is held up by a lock on its alembic_version; the hub must not wait
    # for it: it migrates as soon as its own first look is in (and only then is inst1 let go).
    hub, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    blocker = _first_look_held_up(urls["inst1"])
    released_by: list[str] = []
    release_lock = threading.Lock()

    def release(why: str) -> None:
        with release_lock:
            if not released_by:
                released_by.append(why)
                blocker.rollback()

    def started(target: Target) -> None:
        if target.role == "hub":
            release("the hub's migration")

    # Only there so that a run which waits for every first look does not hang the suite.
    breaker = threading.Timer(30, release, args=("the breaker",))
    breaker.start()
    try:
        report = ophelia_db.upgrade(
            fleet, fleet.select(all_=True), jobs=2, progress=Progress(on_start=started)
        )
    finally:
        breaker.cancel()
        blocker.close()
    assert released_by == ["the hub's migration"]
    assert [(r.name, r.result) for r in report.instances] == [("hub", "ok"), ("inst1", "ok")]
    assert alembic_version(urls["inst1"]) == [HEAD]


def test_tables_that_appear_after_the_first_look_are_read_under_the_lock(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    # The first look finds a new instance, so the read under the lock leaves out the fast read of
    # tables that were not there; another runner migrates it in between: what the lock sees wins.
    hub, instances = fleet_dbs(1)
    path = write_fleet(tmp_path, hub, instances)
    fleet = load_fleet(path)

    def another_runner_first(target: Target) -> None:
        done = run_cli(["upgrade", "--instance", target.name, "--to", REVISIONS[1]], fleet=path)
        assert alembic_version(instances["inst1"]) == [REVISIONS[1]], done.stdout + done.stderr

    report = ophelia_db.upgrade(
        fleet, fleet.select(["inst1"]), jobs=1, progress=Progress(on_start=another_runner_first)
    )
    (result,) = report.instances
    assert (result.result, result.from_revision, result.applied) == ("ok", REVISIONS[1], tuple(REVISIONS[2:]))
    assert_consistent(instances["inst1"], HEAD)


def test_the_hubs_first_look_is_kept_even_while_instance_looks_wait_for_a_slot(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    # One server, 2 slots. The hub's look ends while an instance's look holds the other slot
    # and a second one waits for it: an instance's look would not be kept then (its slot is
    # wanted), the hub's is: its migration comes first and every other waits for it.
    from ophelia_db.run.looks import FirstLooks

    hub, urls = fleet_dbs(2)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    instances = [fleet.instances[name] for name in urls]
    blockers = {url: _first_look_held_up(url) for url in (hub, *urls.values())}
    waiting = "wait_event_type = 'Lock'"
    looks = FirstLooks(jobs=2, per_host=2, has_work=lambda target, state: True, seen=None)
    try:
        looks.start([fleet.hub])
        seen_hub, hub_seen = _released_when(lambda: _backends(hub, waiting) == 1, "hub", lambda: None)
        seen_hub.join()
        looks.start(instances)  # one takes the second slot, the other waits for a slot
        instance_waits = _released_when(
            lambda: sum(_backends(url, waiting) for url in urls.values()) == 1,
            "an instance",
            blockers[hub].rollback,
        )
        instance_waits[0].join()
        looks.wait_for([fleet.hub])
        for url in urls.values():
            blockers[url].rollback()
        looks.wait_for(instances)
        assert hub_seen == ["hub"] and instance_waits[1] == ["an instance"]
        assert looks.kept.holds(fleet.hub)
        assert {t.name: isinstance(looks.states[t.name], InstanceState) for t in instances} == {
            "inst1": True,
            "inst2": True,
        }
    finally:
        looks.close()
        for blocker in blockers.values():
            blocker.close()
