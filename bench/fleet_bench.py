"""Fleet benchmark: ophelia-db against the plain-Alembic loop, on one throwaway cluster.

For each N it creates 2N empty databases (one set for ophelia-db, one for the
plain-Alembic loop, so both start from nothing), then times, as whole
commands with their start-up included:

- ``ophelia-db upgrade --all`` on a fresh fleet (the shipped chain);
- the same command again (a no-op);
- ``ophelia-db status``;
- ``alembic -x instance=NAME upgrade head`` once per database (the plain loop);
- a bare Python + psycopg ``SELECT 1`` over the same databases.

It prints the figures and the ratios the project targets. Peak memory is the
largest sum of proportional set size (PSS: shared pages split between the
processes sharing them) over the command's process tree, sampled every 50 ms.

Usage: python bench/fleet_bench.py [--sizes 10,50,100,200] [--jobs K]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ophelia_db.local.binaries import free_port  # noqa: E402
from ophelia_db.local.cluster import LocalCluster  # noqa: E402

BIN = Path(sys.executable).parent
SELECT_ONE = """
import sys, psycopg
for url in sys.argv[1:]:
    with psycopg.connect(url, prepare_threshold=None) as conn:
        conn.execute("SELECT 1").fetchone()
"""


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


def _tree_rss_kb(root_pid: int) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = _pss_kb(pid)
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def run(command: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Run a command; return (seconds, exit code, peak resident kB of its tree)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_kb(process.pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = process.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        sys.stderr.write(err.decode()[-2000:])
    return elapsed, process.returncode, peak


def write_fleet(path: Path, cluster: LocalCluster, names: list[str], jobs: int) -> None:
    lines = [f"[defaults]\njobs = {jobs}\n", f'[hub]\nurl = "{cluster.url(names[0])}"\n']
    for name in names[1:]:
        lines.append(
            f'[instances.{name.replace("_", "-")}]\ncommunity_name = "{name}"\n'
            f'community_type = "municipality"\nurl = "{cluster.url(name)}"\n'
        )
    path.write_text("\n".join(lines))


def bench(cluster: LocalCluster, n: int, jobs: int, workdir: Path) -> dict[str, float]:
    ours = [f"o{n}_{i:04d}" for i in range(n)]
    plain = [f"p{n}_{i:04d}" for i in range(n)]
    cluster.ensure_databases(ours + plain)
    fleet_ours, fleet_plain = workdir / f"ours{n}.toml", workdir / f"plain{n}.toml"
    write_fleet(fleet_ours, cluster, ours, jobs)
    write_fleet(fleet_plain, cluster, plain, jobs)
    env = {**os.environ, "OPHELIA_FLEET": str(fleet_ours)}
    figures: dict[str, float] = {}
    cli = [str(BIN / "ophelia-db")]
    figures["upgrade"], code, figures["upgrade_peak_mb"] = run([*cli, "upgrade", "--all"], env)
    assert code == 0, "upgrade --all failed"
    figures["upgrade_peak_mb"] /= 1024
    figures["noop"], code, _ = run([*cli, "upgrade", "--all"], env)
    assert code == 0, "no-op upgrade failed"
    figures["status"], code, _ = run([*cli, "status"], env)
    assert code == 0, "status failed"
    figures["select1"], code, _ = run([sys.executable, "-c", SELECT_ONE, *map(cluster.url, ours)], env)
    plain_env = {**os.environ, "OPHELIA_FLEET": str(fleet_plain)}
    started = time.perf_counter()
    names = ["hub"] + [name.replace("_", "-") for name in plain[1:]]
    for name in names:
        alembic = [str(BIN / "alembic"), "-c", str(ROOT / "alembic.ini")]
        _, code, _ = run([*alembic, "-x", f"instance={name}", "upgrade", "head"], plain_env)
        assert code == 0, f"plain alembic failed on {name}"
    figures["plain"] = time.perf_counter() - started
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50,100,200")
    parser.add_argument("--jobs", type=int, default=4, help="fleet [defaults] jobs (shipped default 4)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    state = Path(tempfile.mkdtemp(prefix="ophelia-bench-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(state, "postgres", "postgres")
    cluster = LocalCluster(state, free_port())
    cluster.start()
    workdir = Path(tempfile.mkdtemp(prefix="ophelia-bench-fleet-"))
    try:
        print(f"cores={os.cpu_count()} jobs={args.jobs} chain=shipped (alembic/versions)")
        header = (
            f"{'N':>5} {'upgrade':>9} {'plain':>9} {'speedup':>8} {'no-op':>8} {'status':>8} "
            f"{'SELECT1':>8} {'status/sel1':>11} {'noop/status':>11} {'peak MB':>8} {'ms/inst':>8}"
        )
        print(header)
        for n in sizes:
            f = bench(cluster, n, args.jobs, workdir)
            print(
                f"{n:>5} {f['upgrade']:>8.2f}s {f['plain']:>8.2f}s {f['plain'] / f['upgrade']:>7.1f}x "
                f"{f['noop']:>7.2f}s {f['status']:>7.2f}s {f['select1']:>7.2f}s "
                f"{f['status'] / f['select1']:>10.2f}x {f['noop'] / f['status']:>10.2f}x "
                f"{f['upgrade_peak_mb']:>8.0f} {1000 * f['upgrade'] / n:>8.1f}",
                flush=True,
            )
        print(
            "targets: speedup >= 10x at N=100; status/sel1 <= 2x; noop/status <= 1.5x; peak < 300 MB at N=200"
        )
    finally:
        cluster.destroy()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
