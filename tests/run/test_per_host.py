"""``[defaults] per_host``: how many instances of one database server a run works on at once.

Several instances may live on one server (or behind one pooler's front door);
``jobs`` alone would open as many connections to it as there are instances in
flight. Counted by a proxy in front of that server: the connections open at once.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import ophelia_db
from bench.latency_proxy import LatencyProxy
from ophelia_db.fleet.config import load_fleet
from ophelia_db.fleet.hosts import HostSlots, server_of
from ophelia_db.run.session import KeptLooks
from tests.helpers import HEAD, current_version, write_fleet

INSTANCES = 6
PER_HOST = 2
# A migrating instance holds two connections: its own and the pooler witness's.
CONNECTIONS_PER_INSTANCE = 2


def _behind(proxy: LatencyProxy, url: str) -> str:
    direct = urlsplit(url)
    return urlunsplit(direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}"))


def test_a_run_keeps_to_per_host_connections_on_a_shared_server(tmp_path, fleet_dbs):
    hub, instances = fleet_dbs(INSTANCES)
    server = urlsplit(hub)
    with LatencyProxy(server.hostname or "127.0.0.1", server.port or 5432, rtt=0.004) as proxy:
        shared = {name: _behind(proxy, url) for name, url in instances.items()}
        fleet = load_fleet(write_fleet(tmp_path, hub, shared, defaults=f"per_host = {PER_HOST}"))
        assert len({server_of(t) for t in fleet.instances.values()}) == 1

        report = ophelia_db.upgrade(fleet, list(fleet.members))
        assert {r.result for r in report.instances} == {"ok"}
        assert all(current_version(url) == HEAD for url in instances.values())
        assert proxy.counts.peak_open <= PER_HOST * CONNECTIONS_PER_INSTANCE, proxy.counts

        proxy.reset()
        statuses = ophelia_db.status(fleet, list(fleet.members)).instances
        assert {s.state for s in statuses} == {"up-to-date"}
        assert proxy.counts.peak_open <= PER_HOST, proxy.counts


def test_servers_are_bounded_apart(tmp_path, fleet_dbs):
    # Two instances on two servers both get a slot with per_host 1; a third on the first waits.
    hub, instances = fleet_dbs(2)
    fleet = load_fleet(
        write_fleet(
            tmp_path,
            hub,
            {
                "a": instances["inst1"],
                "b": instances["inst2"].replace("127.0.0.1", "localhost"),
                "c": instances["inst2"],
            },
        )
    )
    a, b, c = (fleet.instances[name] for name in "abc")
    slots = HostSlots(1)
    assert slots.try_take(a) and slots.try_take(b)
    assert not slots.try_take(c)
    slots.give_back(a)
    assert slots.try_take(c)


def test_every_look_is_kept_for_its_migration_once_the_looks_left_fit(tmp_path, fleet_dbs):
    # 6 instances, 4 slots: the first 2 looks to end are not kept (4 more were still to end,
    # which would have waited for the slot), the last 4 are: 4 of 6 migrate on their first
    # look's connection, 2 open one more. Keeping half the slots at most, as before, opened 4.
    hub, instances = fleet_dbs(6)
    server = urlsplit(hub)
    with LatencyProxy(server.hostname or "127.0.0.1", server.port or 5432) as proxy:
        shared = {name: _behind(proxy, url) for name, url in instances.items()}
        fleet = load_fleet(write_fleet(tmp_path, hub, shared, defaults="per_host = 4"))
        report = ophelia_db.upgrade(fleet, list(fleet.members))
        assert {r.result for r in report.instances} == {"ok"}
        assert proxy.counts.connections == 6 + 2, proxy.counts
        assert proxy.counts.peak_open <= 4, proxy.counts


class _Idle:
    """A kept connection as far as keeping goes: nothing is sent on it here."""

    def close(self) -> None:
        pass


def test_a_look_is_kept_only_once_the_looks_still_to_end_fit_beside_it(tmp_path):
    # 4 instances, 2 slots: a look kept while 3 others are still to end would hold a slot they
    # wait for (as the first one was, when half the slots could be kept); the last 2 are kept.
    urls = {f"inst{n}": f"postgresql://u@127.0.0.1:1/inst{n}" for n in range(1, 5)}
    fleet = load_fleet(write_fleet(tmp_path, "postgresql://u@127.0.0.1:1/hub", urls))
    targets = [fleet.instances[name] for name in urls]
    kept = KeptLooks(256, HostSlots(2))
    kept.expect(targets)
    assert [kept.offer(target, _Idle()) for target in targets] == [False, False, True, True]  # type: ignore[arg-type]
    assert [kept.holds(target) for target in targets] == [False, False, True, True]
