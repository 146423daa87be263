"""The run journal in the hub against real PostgreSQL: written as the run goes, read back,
resumed, shared by shards, kept locally while the hub is away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zlib
from pathlib import Path

import psycopg
import pytest

import ophelia_db
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.lock import MIGRATION_LOCK_KEY
from tests.helpers import (
    HEAD,
    OPHELIA_DB,
    FleetDbs,
    alembic_version,
    chain_at,
    chain_locations,
    clean_env,
    execute,
    invoke,
    rows,
    run_cli,
    write_fleet,
)

SLOW_CHAIN = chain_locations("slow")


def journal(hub: str, run_id: str) -> dict[str, tuple]:
    """``{instance: (state, from, to, applied)}`` of one run, straight from the hub's tables."""
    found = rows(
        hub,
        "SELECT instance, state, from_revision, to_revision, applied FROM public.ophelia_run_instances "
        "WHERE run_id = %s",
        (run_id,),
    )
    return {name: (state, start, end, list(applied)) for name, state, start, end, applied in found}


def test_a_run_is_journalled_per_instance_and_read_back(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    hub, urls = fleet_dbs(2)
    fleet_path = write_fleet(tmp_path, hub, urls)
    fleet = load_fleet(fleet_path)
    # The hub has no journal when the run starts: it gets one as the run's first wave, and the
    # lines written meanwhile reach it then.
    report = ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=2)
    assert report.exit_code == 0 and report.journal_local is None, report.as_record()
    assert not list((tmp_path / ".ophelia-journal").glob("*.jsonl"))

    entries = journal(hub, report.run_id)
    assert set(entries) == {"hub", "inst1", "inst2"}
    for name in entries:
        assert entries[name][0] == "ok" and entries[name][2] == HEAD and entries[name][3][-1] == HEAD
    ((command, target, started_by),) = rows(
        hub, "SELECT command, target, started_by FROM public.ophelia_runs WHERE run_id = %s", (report.run_id,)
    )
    assert (command, target) == ("upgrade", "head") and started_by.startswith("ophelia-db/")
    assert rows(hub, "SELECT outcome, exit_code FROM public.ophelia_run_shards") == [("ok", 0)]

    listed = invoke(["runs", "--json", "--fleet", str(fleet_path)])
    assert listed.exit_code == 0, listed.stderr
    (run,) = json.loads(listed.stdout)["runs"]
    assert (run["run_id"], run["outcome"], run["counts"]) == (report.run_id, "ok", {"ok": 3})

    shown = invoke(["runs", "show", report.run_id, "--fleet", str(fleet_path)])
    assert shown.exit_code == 0, shown.stderr
    assert f"run {report.run_id}: upgrade to head, ok (3 ok)" in shown.stdout
    assert "inst2  ok" in shown.stdout

    unknown = invoke(["runs", "show", "nope", "--fleet", str(fleet_path)])
    assert unknown.exit_code == 2 and "no run 'nope'" in unknown.stderr


def test_the_journal_is_closed_to_the_api_roles(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    hub, urls = fleet_dbs(1)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    assert ophelia_db.upgrade(fleet, fleet.select(all_=True), jobs=1).exit_code == 0
    for role in ("anon", "authenticated", "service_role"):
        with psycopg.connect(hub, autocommit=True) as conn:
            conn.execute(f"SET ROLE {role}")
            for table in ("ophelia_runs", "ophelia_run_shards", "ophelia_run_instances"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT * FROM public.{table}")


def _wait(predicate, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_run_killed_mid_fleet_leaves_a_true_journal_and_resume_finishes_it(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    hub, urls = fleet_dbs(4)
    fleet_path = write_fleet(tmp_path, hub, urls)
    assert run_cli(["upgrade", "--all"], fleet=fleet_path).returncode == 0
    for name, url in urls.items():
        execute(url, "CREATE TABLE slow_target (id integer)")
        sleep = "60" if name == "inst2" else "0"
        execute(url, f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET ophelia.test_sleep = '{sleep}'")
    env = clean_env({"OPHELIA_FLEET": str(fleet_path), "OPHELIA_VERSION_LOCATIONS": SLOW_CHAIN})
    names = [arg for name in urls for arg in ("--instance", name)]
    killed = subprocess.Popen(
        [*OPHELIA_DB, "upgrade", *names, "--jobs", "1", "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait(lambda: rows(hub, "SELECT 1 FROM public.ophelia_run_instances WHERE state = 'running'"),
              "inst2 to start")  # fmt: skip
        _wait(lambda: rows(urls["inst2"], "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"),
              "inst2's long statement")  # fmt: skip
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    # The server notices the lost client and rolls inst2's revision back.
    _wait(lambda: not rows(urls["inst2"], "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"),
          "inst2's statement to end")  # fmt: skip

    ((run_id,),) = rows(hub, "SELECT run_id FROM public.ophelia_runs ORDER BY started_at DESC LIMIT 1")
    states = {name: entry[0] for name, entry in journal(hub, run_id).items()}
    assert states == {"inst1": "ok", "inst2": "running", "inst3": "planned", "inst4": "planned"}
    assert alembic_version(urls["inst1"]) == ["0105"]
    for name in ("inst2", "inst3", "inst4"):
        assert alembic_version(urls[name]) == [HEAD], name
    shown = run_cli(["runs", "show", run_id, "--json"], fleet=fleet_path)
    assert json.loads(shown.stdout)["run"]["outcome"] == "unfinished"

    execute(urls["inst2"], f"ALTER DATABASE {urls['inst2'].rsplit('/', 1)[1]} SET ophelia.test_sleep = '0'")
    resumed = run_cli(["upgrade", "--resume", run_id, "--json"], fleet=fleet_path, locations=SLOW_CHAIN)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert {(i["name"], i["result"]) for i in record["instances"]} == {
        ("inst2", "ok"), ("inst3", "ok"), ("inst4", "ok")
    }  # fmt: skip
    assert rows(hub, "SELECT resumes FROM public.ophelia_runs WHERE run_id = %s", (record["run_id"],)) == [
        (run_id,)
    ]
    for url in urls.values():
        assert alembic_version(url) == ["0105"]


def test_resume_redoes_what_did_not_finish_and_reports_what_moved(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    hub, urls = fleet_dbs(3)
    fleet_path = write_fleet(tmp_path, hub, urls, defaults='lock_wait = "100ms"')
    fleet = load_fleet(fleet_path)
    assert ophelia_db.upgrade(fleet, fleet.select(["hub"]), to="0005", jobs=1).exit_code == 0
    assert (
        ophelia_db.upgrade(fleet, fleet.select(["inst1", "inst2", "inst3"]), to="0004", jobs=1).exit_code == 0
    )

    holders = [psycopg.connect(urls[name], autocommit=True) for name in ("inst1", "inst2")]
    try:
        for holder in holders:
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        first = ophelia_db.upgrade(fleet, fleet.select(["inst1", "inst2", "inst3"]), jobs=1)
    finally:
        for holder in holders:
            holder.close()
    assert {r.name: r.result for r in first.instances} == {
        "inst1": "locked",
        "inst2": "locked",
        "inst3": "ok",
    }
    # inst1 moves while nobody looks: its revision is no longer the one the run recorded.
    assert ophelia_db.upgrade(fleet, fleet.select(["inst1"]), jobs=1).exit_code == 0

    resumed = invoke(["upgrade", "--resume", first.run_id, "--json", "--fleet", str(fleet_path)])
    record = json.loads(resumed.stdout)
    results = {i["name"]: i for i in record["instances"]}
    assert set(results) == {"inst1", "inst2"}, "inst3 finished in the first run"
    assert results["inst2"]["result"] == "ok"
    assert results["inst1"]["result"] == "skipped"
    assert f"moved since run {first.run_id} (recorded at 0004, now at {HEAD})" in results["inst1"]["error"]
    assert resumed.exit_code == 7

    again = invoke(["upgrade", "--resume", first.run_id, "--all", "--fleet", str(fleet_path)])
    assert again.exit_code == 2 and "give it alone" in again.stderr


def _shard_of(name: str, count: int) -> int:
    return zlib.crc32(name.encode()) % count + 1


def test_shards_with_one_run_id_add_up_to_one_journal(
    tmp_path: Path, fleet_dbs: FleetDbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_ID", "CIRCLE_WORKFLOW_ID"):
        monkeypatch.delenv(variable, raising=False)
    hub, urls = fleet_dbs(6)
    fleet = load_fleet(write_fleet(tmp_path, hub, urls))
    assert ophelia_db.upgrade(fleet, fleet.select(["hub"]), jobs=1).exit_code == 0
    populated = sorted({_shard_of(name, 4) for name in urls})
    late = populated[-1]  # a shard that has instances starts last
    for shard in range(1, 5):
        if shard != late:
            report = ophelia_db.upgrade(
                fleet, fleet.select(all_=True), shard=f"{shard}/4", run_id="release-7"
            )
            assert report.exit_code == 0 and report.run_id == "release-7"

    detail = ophelia_db.show_run(fleet, "release-7")
    assert detail.run.outcome == "unfinished"
    assert [(s.shard, s.state) for s in detail.shards] == [
        (n, "never-started" if n == late else "finished") for n in range(1, 5)
    ]
    waiting = {e.instance for e in detail.instances if e.state == "planned"}
    assert waiting == {name for name in urls if _shard_of(name, 4) == late} != set()
    assert {e.instance for e in detail.instances} == set(urls), "every shard's instances, the hub excluded"

    env = {"GITHUB_RUN_ID": "99", "GITHUB_RUN_ATTEMPT": "1"}  # a CI matrix job: the run id comes from CI
    assert (
        ophelia_db.upgrade(fleet, fleet.select(all_=True), shard=f"{late}/4", run_id="release-7").exit_code
        == 0
    )
    detail = ophelia_db.show_run(fleet, "release-7")
    assert detail.run.outcome == "ok" and {e.state for e in detail.instances} == {"ok"}
    # A shard with no run id to share (none given, no CI) is a run of its own, not a quarter of one.
    solo = ophelia_db.show_run(
        fleet, ophelia_db.upgrade(fleet, fleet.select(all_=True), shard=f"{late}/4").run_id
    )
    assert [(s.shard, s.state) for s in solo.shards] == [(1, "finished")]
    assert {e.instance for e in solo.instances} == waiting
    args = ["upgrade", "--all", "--shard", f"{late}/4", "--json", "--fleet", str(tmp_path / "fleet.toml")]
    ci = invoke(args, env=env)
    assert json.loads(ci.stdout)["run_id"] == "gh-99-1"


def test_a_wave_budget_halts_the_run_after_the_allowed_failures(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    hub, urls = fleet_dbs(4)
    fleet_path = write_fleet(tmp_path, hub, urls)
    assert run_cli(["upgrade", "--all"], fleet=fleet_path).returncode == 0
    failing = chain_locations("failing")  # 0106 fails on every instance
    names = [arg for name in urls for arg in ("--instance", name)]

    waves = ["--wave", "25%", "--wave", "25%", "--wave", "rest"]
    done = run_cli(
        ["upgrade", *names, *waves, "--max-failures", "2", "--json"],
        fleet=fleet_path,
        locations=failing,
    )
    assert done.returncode == 7, done.stderr
    results = {i["name"]: i for i in json.loads(done.stdout)["instances"] if i["role"] == "instance"}
    assert sorted(i["result"] for i in results.values()) == ["failed", "failed", "skipped", "skipped"]
    skipped = [i for i in results.values() if i["result"] == "skipped"]
    assert all("after 2 failed instance(s) (--max-failures 2)" in i["error"] for i in skipped)
    for row in skipped:
        assert alembic_version(urls[row["name"]]) == [HEAD], "a skipped instance is not touched"

    by_rate = run_cli(
        ["upgrade", *names, "--wave", "25%", "--wave", "rest", "--max-failure-rate", "50%", "--json"],
        fleet=fleet_path,
        locations=failing,
    )
    assert by_rate.returncode == 7
    rate_results = [i for i in json.loads(by_rate.stdout)["instances"] if i["role"] == "instance"]
    assert sorted(i["result"] for i in rate_results) == ["failed", "skipped", "skipped", "skipped"]
    assert "over --max-failure-rate 50%" in next(i for i in rate_results if i["result"] == "skipped")["error"]

    bad = run_cli(["upgrade", "--all", "--wave", "150%"], fleet=fleet_path)
    assert bad.returncode == 2 and "between 0 and 100" in bad.stderr


def test_gate_names_an_instance_behind_then_opens_after_its_upgrade(
    tmp_path: Path, fleet_dbs: FleetDbs
) -> None:
    hub, urls = fleet_dbs(2)
    fleet_path = write_fleet(tmp_path, hub, urls)
    base = ["--fleet", str(fleet_path)]
    assert invoke(["upgrade", "--all", *base]).exit_code == 0
    fleet = load_fleet(fleet_path)
    assert ophelia_db.downgrade(fleet, fleet.get("inst1"), to="0004").exit_code == 0

    closed = invoke(["gate", "--requires", "head", *base])
    assert closed.exit_code == 1, closed.stdout
    assert f"inst1: behind: at 0004, needs {HEAD}" in closed.stdout and "inst2" not in closed.stdout
    assert invoke(["gate", "--requires", "0004", *base]).exit_code == 0
    from_registry = json.loads(
        invoke(["gate", "--requires", "head", "--from-registry", "--json", *base]).stdout
    )
    assert from_registry["source"] == "registry"
    assert [i["name"] for i in from_registry["instances"] if not i["passed"]] == ["inst1"]

    assert invoke(["upgrade", "--instance", "inst1", *base]).exit_code == 0
    opened = invoke(["gate", "--requires", "head", *base])
    assert opened.exit_code == 0 and "gate open: all 3 instance(s)" in opened.stdout
    assert invoke(["gate", "--requires", "9999", *base]).exit_code == 2


def test_a_registry_row_edited_by_hand_disagrees_until_sync(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    hub, urls = fleet_dbs(2)
    fleet_path = write_fleet(tmp_path, hub, urls)
    base = ["--fleet", str(fleet_path)]
    assert invoke(["upgrade", "--all", *base]).exit_code == 0
    execute(hub, "UPDATE public.instance_registry SET schema_version = '0003' WHERE subdomain = 'inst1'")

    status = json.loads(invoke(["status", "--json", *base]).stdout)
    by_name = {row["name"]: row for row in status["instances"]}
    assert by_name["inst1"]["registry_version"] == "0003" and "registry_version" not in by_name["inst2"]
    assert "registry=0003" in invoke(["status", *base]).stdout
    checked = invoke(["instances", "--check", *base])
    assert checked.exit_code == 1 and f"the registry says 0003, the instance is at {HEAD}" in checked.stdout

    assert invoke(["sync", "--all", *base]).exit_code == 0
    status = json.loads(invoke(["status", "--json", *base]).stdout)
    assert all("registry_version" not in row for row in status["instances"])
    assert invoke(["instances", "--check", *base]).exit_code == 0


def test_a_hub_away_keeps_the_journal_locally_and_sync_pushes_it(tmp_path: Path, fleet_dbs: FleetDbs) -> None:
    hub, urls = fleet_dbs(1)
    fleet_path = write_fleet(tmp_path, hub, urls)
    assert invoke(["upgrade", "--instance", "hub", "--fleet", str(fleet_path)]).exit_code == 0
    away = write_fleet(
        tmp_path, "postgresql://postgres@127.0.0.1:1/hub", urls, defaults='connect_timeout = "1s"'
    )

    done = invoke(["upgrade", "--instance", "inst1", "--json", "--fleet", str(away)])
    record = json.loads(done.stdout)
    assert done.exit_code == 7 and record["instances"][0]["result"] == "ok"  # the hub report is pending
    kept = Path(record["journal_local"])
    assert kept.parent == tmp_path / ".ophelia-journal" and kept.is_file()
    assert (kept.parent / ".gitignore").read_text() == "*\n"
    shown = invoke(["runs", "show", record["run_id"], "--fleet", str(away)])
    assert shown.exit_code == 0 and "kept locally" in shown.stdout and "inst1  ok" in shown.stdout

    back = write_fleet(tmp_path, hub, urls)
    synced = invoke(["sync", "--all", "--json", "--fleet", str(back)])
    assert synced.exit_code == 0 and json.loads(synced.stdout)["journals_pushed"] == [record["run_id"]]
    assert not kept.exists()
    assert journal(hub, record["run_id"])["inst1"][0] == "ok"


def test_selection_units() -> None:
    from ophelia_db.errors import ConfigError
    from ophelia_db.fleet.journal import ci_run_id
    from ophelia_db.run.selection import Budget, parse_rate, parse_shard

    assert parse_shard("2/4") == (2, 4)
    assert parse_shard("auto/4", {"JOB_COMPLETION_INDEX": "3"}) == (4, 4)
    assert parse_shard("auto", {"JOB_COMPLETION_INDEX": "0", "OPHELIA_SHARD_COUNT": "2"}) == (1, 2)
    for bad, env in (("5/4", {}), ("auto/4", {}), ("auto/4", {"JOB_COMPLETION_INDEX": "4"}), ("x", {})):
        with pytest.raises(ConfigError):
            parse_shard(bad, env)
    assert parse_rate("5%") == parse_rate("0.05") == 0.05
    with pytest.raises(ConfigError):
        parse_rate("lots")
    assert Budget().exceeded(0, 3) is None and Budget().exceeded(1, 3)
    assert Budget(max_failures=2).exceeded(1, 5) is None and Budget(max_failures=2).exceeded(2, 5)
    assert Budget(max_failure_rate=0.5).exceeded(1, 2) is None and Budget(max_failure_rate=0.5).exceeded(2, 3)
    assert ci_run_id({"CI_PIPELINE_ID": "12"}) == "gl-12" and ci_run_id({}) is None


def test_waves_cut_the_selection_deterministically(tmp_path: Path) -> None:
    from ophelia_db.run.selection import plan_waves

    names = {f"i{n}": f"postgresql://u@h/i{n}" for n in range(10)}
    fleet = load_fleet(write_fleet(tmp_path, "postgresql://u@h/hub", names, tags={"i7": ["canary"]}))
    waves = plan_waves(fleet, fleet.select(all_=True), ["canary", "20%", "rest"])
    assert [w.label for w in waves] == ["canary", "20%", "rest"]
    assert [t.name for t in waves[0].targets] == ["i7"]
    assert len(waves[1].targets) == 2 and len(waves[2].targets) == 7
    again = plan_waves(fleet, fleet.select(all_=True), ["canary", "20%", "rest"])
    assert [[t.name for t in w.targets] for w in again] == [[t.name for t in w.targets] for w in waves]
    assert sum(len(w.targets) for w in waves) == 10, "each instance in exactly one wave, the hub in none"
    assert chain_at(chain_locations()).head == HEAD
