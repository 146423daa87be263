"""A revision Alembic runs online, over a fleet: ophelia-db against plain Alembic driven well.

The shipped chain goes as batches, in threads. A revision that cannot go as a batch (here the
test chain ``tests/chains/cic``: an index built concurrently, after the shipped 0001-0005)
sends each instance that has it pending to a worker process, which runs the batches and then
Alembic online for it: this measures that path, N fresh databases to 0105, against plain
Alembic in-process with 4 and 16 processes on the same chain (``bench/peers.py``), at each RTT
through ``latency_proxy.LatencyProxy``. ophelia-db runs ``--repeat`` times (median), plain
Alembic once; every command is timed whole, start-up included.

Usage: python bench/online_bench.py [--sizes 5,50] [--rtts 0,20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_bench import BIN, Bench, at_head, check_rtt, run_command, throwaway_cluster  # noqa: E402
from bench.latency_proxy import LatencyProxy  # noqa: E402

CHAIN = os.pathsep.join(str(ROOT / folder) for folder in ("alembic/versions", "tests/chains/cic"))
HEAD = "0105"


def ours(bench: Bench, proxy: LatencyProxy, n: int) -> tuple[float, float, float]:
    """``upgrade --all`` of N fresh databases to 0105: seconds, round trips per database, peak MB."""
    names, urls = bench.fresh(proxy, n)
    proxy.reset()
    seconds, peak = run_command([str(BIN / "ophelia-db"), "upgrade", "--all"], bench.fleet(names, urls))
    trips = proxy.round_trips / n
    at_head(urls, HEAD)
    bench.drop(names)
    return seconds, trips, peak


def plain(bench: Bench, proxy: LatencyProxy, n: int, kind: str) -> float:
    names, urls = bench.fresh(proxy, n)
    seconds, _ = bench.peer(kind, urls)
    at_head(urls, HEAD)
    bench.drop(names)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,50", help="fleet sizes (hub included)")
    parser.add_argument("--rtts", default="0,20", help="round-trip times in ms")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ophelia-db (median)")
    args = parser.parse_args()
    # Both ophelia-db and the plain-Alembic peers read the chain from here (children inherit it).
    os.environ["OPHELIA_VERSION_LOCATIONS"] = os.environ["BENCH_VERSION_LOCATIONS"] = CHAIN
    rows = []
    with throwaway_cluster("online") as (cluster, workdir):
        bench = Bench(cluster, workdir, "", HEAD)
        for rtt in [int(x) for x in args.rtts.split(",") if x]:
            with LatencyProxy("127.0.0.1", cluster.port, rtt=rtt / 1000) as proxy:
                check_rtt(cluster, proxy, rtt)
                for n in [int(x) for x in args.sizes.split(",") if x]:
                    runs = [ours(bench, proxy, n) for _ in range(max(1, args.repeat))]
                    seconds = statistics.median(r[0] for r in runs)
                    trips, peak = runs[0][1], max(r[2] for r in runs)
                    four, sixteen = plain(bench, proxy, n, "plain4"), plain(bench, proxy, n, "plain16")
                    rows.append((n, rtt, seconds, trips, peak, four, sixteen))
                    print(f"N = {n}, RTT {rtt} ms done", flush=True)
    print("\nfresh databases to 0105 (the shipped chain, then an index built concurrently), seconds")
    print("| N | RTT | ophelia-db upgrade --all (round trips per database, peak MB) | plain Alembic 4 | 16 |")
    print("|---|---|---|---|---|")
    for n, rtt, seconds, trips, peak, four, sixteen in rows:
        print(f"| {n} | {rtt} ms | {seconds:.2f} ({trips:.1f}, {peak:.0f} MB) | {four:.2f} | {sixteen:.2f} |")


if __name__ == "__main__":
    main()
