"""Fleet benchmark: ophelia-db against plain Alembic and the SQL floor, at zero and simulated latency.

One throwaway PostgreSQL cluster; for each round-trip time (RTT) every
database is reached through ``latency_proxy.LatencyProxy``, which delays each
direction by RTT/2 and counts round trips. For each method, N fresh empty
databases are migrated from nothing to the shipped chain's head, and every
method is timed as a whole (start-up included) in the same run:

- ``ophelia-db upgrade --all`` (hub + N-1 instances; fleet default jobs) as
  the chain's first run (its render cache emptied), then on N fresh databases
  with the chain rendered before, then the same again (a no-op), then
  ``ophelia-db status``;
- plain Alembic driven well: ``alembic.command.upgrade`` in-process, in a
  ProcessPoolExecutor of 4 and of 16 workers (``bench/plain_alembic/env.py``:
  no lock, no mirror, no report);
- the offline SQL (rendered once by Alembic) with ``psql -1 -f``, 16 in parallel;
- the same SQL sent as one batch per database with psycopg, 16 in parallel (the floor);
- a threaded psycopg ``SELECT 1`` over the databases (16 threads).

Every peer runs as a child process (``bench/peers.py``, which imports no more than the peers
need), so that all figures include start-up.
ophelia-db's rows, the floor and ``SELECT 1`` are run ``--repeat`` times (3)
one after the other and their medians shown (and the medians of the ratios taken run by run, "paired");
plain Alembic and ``psql`` once.

Then, at RTT 0 only, other fleet sizes for ophelia-db alone: N = 5 (the fixed
cost of a run: start-up, the hub first, the worker model) and 200, 500
(linearity and peak memory: the largest proportional set size summed over the
command's process tree, sampled every 50 ms). Before the figures of each RTT,
the proxy's delay is checked with a ``SELECT 1`` loop through it.

Usage: python bench/fleet_bench.py [--n 50] [--rtts 0,20] [--sizes 5,200,500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.latency_proxy import LatencyProxy  # noqa: E402
from bench.peers import offline_sql  # noqa: E402
from ophelia_db.local.binaries import free_port  # noqa: E402
from ophelia_db.local.cluster import LocalCluster  # noqa: E402

BIN = Path(sys.executable).parent
# The peers run from a script of their own, lean in imports: see its docstring.
PEERS = ROOT / "bench" / "peers.py"
VERSIONS = ROOT / "alembic" / "versions"
# Where run/render_cache.py keeps the shipped chain's renderings.
RENDER_CACHE = VERSIONS / "__pycache__"


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (forkserver workers share many) counted once overall."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_pss_kb(root_pid: int) -> int:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += _pss_kb(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def run_command(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command to completion; return (seconds, peak MB of its process tree). Fails loudly."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_pss_kb(process.pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[-3:])} failed ({process.returncode}): {err.decode()[-2000:]}")
    return elapsed, peak / 1024


def measured_rtt(cluster: LocalCluster, proxy: LatencyProxy, queries: int = 20) -> float:
    """The proxy's round trip as a client sees it: the median of a ``SELECT 1`` loop on one
    connection through it, in ms."""
    url = cluster.url("postgres").replace(f":{cluster.port}/", f":{proxy.port}/")
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(queries):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def check_rtt(cluster: LocalCluster, proxy: LatencyProxy, rtt: int) -> float:
    """Refuse to go on when the proxy does not delay as asked (its figures would be wrong)."""
    measured = measured_rtt(cluster, proxy)
    # At least the RTT asked (the proxy holds each direction that long), and not far over it.
    if not rtt <= measured <= rtt + max(5.0, 0.25 * rtt):
        raise SystemExit(f"the proxy's measured RTT is {measured:.1f} ms, not {rtt} ms: stopping")
    print(f"RTT {rtt} ms: a SELECT 1 through the proxy takes {measured:.1f} ms (median of 20)", flush=True)
    return measured


def at_head(urls: Sequence[str], head: str) -> None:
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert found == (head,), f"{url} is at {found}, not {head}"


class Bench:
    def __init__(self, cluster: LocalCluster, workdir: Path, sql: str, head: str) -> None:
        self.cluster, self.workdir, self.sql, self.head = cluster, workdir, sql, head
        # psql -1 gives the file one transaction: the per-revision BEGIN/COMMIT lines go.
        self.sql_file = workdir / "chain.sql"
        self.sql_file.write_text(sql)
        self.serial = 0

    def fresh(self, proxy: LatencyProxy, n: int) -> tuple[list[str], list[str]]:
        """N new empty databases: their names and their URLs through the proxy."""
        self.serial += 1
        names = [f"b{self.serial}_{i:04d}" for i in range(n)]
        self.cluster.ensure_databases(names)
        port = f":{self.cluster.port}/"
        return names, [self.cluster.url(name).replace(port, f":{proxy.port}/") for name in names]

    def drop(self, names: Sequence[str]) -> None:
        with psycopg.connect(self.cluster.url("postgres"), autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[call-overload]

    def fleet(self, names: Sequence[str], urls: Sequence[str]) -> dict[str, str]:
        path = self.workdir / f"fleet{self.serial}.toml"
        lines = [f'[hub]\nurl = "{urls[0]}"\n']
        for name, url in zip(names[1:], urls[1:], strict=True):
            lines.append(
                f'[instances.{name.replace("_", "-")}]\ncommunity_name = "{name}"\n'
                f'community_type = "municipality"\nurl = "{url}"\n'
            )
        path.write_text("\n".join(lines))
        return {**os.environ, "OPHELIA_FLEET": str(path)}

    def first_run(self, proxy: LatencyProxy, n: int, figures: dict[str, float]) -> None:
        """``upgrade --all`` as the chain's first run here: no rendering kept (run/render_cache.py)."""
        names, urls = self.fresh(proxy, n)
        for cached in RENDER_CACHE.glob("ophelia-rendered.*.json"):
            cached.unlink()
        proxy.reset()
        command = [str(BIN / "ophelia-db"), "upgrade", "--all"]
        figures["upgrade_first"], _ = run_command(command, self.fleet(names, urls))
        figures["upgrade_first_rt"] = proxy.round_trips / n
        at_head(urls, self.head)
        self.drop(names)

    def ours(self, proxy: LatencyProxy, n: int, figures: dict[str, float]) -> None:
        names, urls = self.fresh(proxy, n)
        env = self.fleet(names, urls)
        cli = [str(BIN / "ophelia-db")]
        for key, args in (
            ("upgrade", ["upgrade", "--all"]),
            ("noop", ["upgrade", "--all"]),
            ("status", ["status"]),
        ):
            proxy.reset()
            figures[key], peak = run_command([*cli, *args], env)
            figures[f"{key}_rt"] = proxy.round_trips / n
            figures[f"{key}_conn"] = proxy.connections / n
            if key == "upgrade":
                figures["peak_mb"] = peak
                at_head(urls, self.head)
        figures["select1"], _ = self.peer("select1", urls)
        self.drop(names)

    def peer(self, kind: str, urls: Sequence[str]) -> tuple[float, float]:
        """Run a peer as a whole command, interpreter start-up included, as ophelia-db is run."""
        listing = self.workdir / f"urls{self.serial}.txt"
        listing.write_text("\n".join(urls))
        command = [
            sys.executable,
            str(PEERS),
            kind,
            "--urls",
            str(listing),
            "--sql",
            str(self.sql_file),
        ]
        return run_command(command, dict(os.environ))

    def peers(self, proxy: LatencyProxy, n: int, figures: dict[str, float], kinds: Sequence[str]) -> None:
        for key in kinds:
            names, urls = self.fresh(proxy, n)
            proxy.reset()
            figures[key], _ = self.peer(key, urls)
            figures[f"{key}_rt"] = proxy.round_trips / n
            at_head(urls, self.head)
            self.drop(names)


# The ratios of the targets, also taken run by run: name, (numerator, denominator).
PAIRED = {
    "paired_floor": ("upgrade", "batch"),
    "paired_status": ("status", "select1"),
    "paired_noop": ("noop", "status"),
}


def measure(bench: Bench, proxy: LatencyProxy, n: int, repeat: int) -> dict[str, float]:
    """Every row at one RTT: ours, the floor and SELECT 1 ``repeat`` times, one after the other
    (medians: this shared machine varies by 10-30 % from one minute to the next), the far
    slower plain Alembic and psql once."""
    once: dict[str, float] = {}
    bench.peers(proxy, n, once, ("plain4", "plain16", "psql"))
    runs = []
    for _ in range(repeat):
        figures: dict[str, float] = {}
        bench.first_run(proxy, n, figures)
        bench.ours(proxy, n, figures)
        bench.peers(proxy, n, figures, ("batch",))
        runs.append(figures)
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    # The same ratios taken run by run, then their median: both figures of each come from the
    # same minute, which this VM's slow spells (up to twice as slow) do not split.
    for name, (top, bottom) in PAIRED.items():
        medians[name] = statistics.median(run[top] / run[bottom] for run in runs)
    return {**once, **medians}


ROWS = [
    ("ophelia-db upgrade --all, the chain's first run (nothing rendered yet)", "upgrade_first"),
    ("ophelia-db upgrade --all", "upgrade"),
    ("plain Alembic, 4 processes", "plain4"),
    ("plain Alembic, 16 processes", "plain16"),
    ("offline SQL, psql -1 -f, 16 parallel", "psql"),
    ("offline SQL, one batch per database, 16 parallel", "batch"),
    ("ophelia-db no-op upgrade --all", "noop"),
    ("ophelia-db status", "status"),
    ("psycopg SELECT 1, 16 threads", "select1"),
]


def report(n: int, by_rtt: dict[int, dict[str, float]], repeat: int) -> None:
    rtts = sorted(by_rtt)
    print(
        f"\nN = {n} (hub + {n - 1} instances), shipped chain, seconds (round trips per database); "
        f"medians of {repeat} runs, plain Alembic and psql -1 -f one run"
    )
    print(f"| method | {' | '.join(f'RTT {rtt} ms' for rtt in rtts)} |")
    print(f"|---|{'---|' * len(rtts)}")
    for label, key in ROWS:
        cells = []
        for rtt in rtts:
            f = by_rtt[rtt]
            trips = f" ({f[key + '_rt']:.1f})" if key + "_rt" in f else ""
            cells.append(f"{f[key]:.2f}{trips}")
        print(f"| {label} | {' | '.join(cells)} |")
    print("\nratios (target)")
    for rtt in rtts:
        f = by_rtt[rtt]
        best_plain = min(f["plain4"], f["plain16"])
        print(
            f"RTT {rtt:>2} ms (a SELECT 1 through the proxy: {f['measured_rtt']:.1f} ms): "
            f"upgrade / best plain Alembic {f['upgrade'] / best_plain:.2f} (< 1); "
            f"upgrade / one-batch floor {f['upgrade'] / f['batch']:.2f}, paired {f['paired_floor']:.2f} "
            f"(<= 1.5 at 20 ms; first run {f['upgrade_first'] / f['batch']:.2f}); "
            f"status / SELECT 1 {f['status'] / f['select1']:.2f}, paired {f['paired_status']:.2f} (<= 1.2); "
            f"no-op / status {f['noop'] / f['status']:.2f}, paired {f['paired_noop']:.2f} (<= 1.1); "
            f"connections per instance {f['upgrade_conn']:.1f}; peak {f['peak_mb']:.0f} MB"
        )


@contextmanager
def throwaway_cluster(name: str) -> Iterator[tuple[LocalCluster, Path]]:
    """A PostgreSQL cluster of the benchmark's own (in /tmp) and a work folder, both removed after."""
    state = Path(tempfile.mkdtemp(prefix="ophelia-bench-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(state, "postgres", "postgres")
    cluster = LocalCluster(state, free_port())
    cluster.start()
    workdir = Path(tempfile.mkdtemp(prefix=f"ophelia-bench-{name}-"))
    try:
        yield cluster, workdir
    finally:
        cluster.destroy()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--rtts", default="0,20", help="round-trip times in ms")
    sizes_help = "other fleet sizes, at RTT 0, ophelia-db only (fixed cost, linearity)"
    parser.add_argument("--sizes", default="5,200,500", help=sizes_help)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours, the floor and SELECT 1")
    args = parser.parse_args()
    from ophelia_db.run.chain import chain_for

    with throwaway_cluster("fleet") as (cluster, workdir):
        bench = Bench(cluster, workdir, offline_sql(), str(chain_for().head))
        print(f"cores={os.cpu_count()} python={sys.version.split()[0]} chain head={bench.head}")
        by_rtt: dict[int, dict[str, float]] = {}
        for rtt in [int(x) for x in args.rtts.split(",") if x]:
            with LatencyProxy("127.0.0.1", cluster.port, rtt=rtt / 1000) as proxy:
                measured = check_rtt(cluster, proxy, rtt)
                by_rtt[rtt] = measure(bench, proxy, args.n, max(1, args.repeat))
                by_rtt[rtt]["measured_rtt"] = measured
        report(args.n, by_rtt, max(1, args.repeat))
        sizes = sorted({args.n, *(int(x) for x in args.sizes.split(",") if x)})
        if len(sizes) > 1:
            print("\nfleet sizes, RTT 0, ophelia-db only")
            print("|    N | upgrade | ms/instance | no-op | status | SELECT 1 | peak MB |")
            print("|---|---|---|---|---|---|---|")
            with LatencyProxy("127.0.0.1", cluster.port) as proxy:
                for n in sizes:
                    f: dict[str, float] = {}
                    bench.ours(proxy, n, f)
                    print(
                        f"| {n:>4} | {f['upgrade']:.2f} | {1000 * f['upgrade'] / n:.1f} | {f['noop']:.2f} | "
                        f"{f['status']:.2f} | {f['select1']:.2f} | {f['peak_mb']:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
