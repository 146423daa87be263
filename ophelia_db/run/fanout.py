"""Bounded fan-out of per-instance migrations over threads and worker processes.

This module owns running ``instance.migrate`` for many instances at once: at
most ``jobs`` in flight, results handed back as they finish, and a ``Halt``
that stops starting new work — after too many failures, a failed canary, or
SIGINT/SIGTERM. An instance whose pending revisions all go as batches waits
on the network, not on Python, so it runs in a thread of this process; one
that needs Alembic online (whose proxies are process-global) runs in a worker
process, and so does a thread's instance that turns out to need it. An
interruption cancels the threads' running statements and is forwarded to the
workers, so that each rolls back its current revision and releases its lock.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from dataclasses import dataclass, field

from ophelia_db.errors import ExitCode
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import Connection
from ophelia_db.fleet.hosts import PER_HOST, HostSlots
from ophelia_db.results import SUCCESSFUL, InstanceResult, Outcome
from ophelia_db.run.chain import ChainSpec, chain_for
from ophelia_db.run.instance import migrate
from ophelia_db.run.interrupts import (
    Interrupted,
    clear_thread_interrupt,
    exit_code_of,
    interrupt_threads,
    worker_initializer,
)
from ophelia_db.run.revisions import HANDED_OVER, IN_A_PROCESS, IN_A_THREAD, NeedsAlembic
from ophelia_db.run.session import KeptLooks, cancel_open_sessions
from ophelia_db.run.state import InstanceState

Finish = Callable[[Target, InstanceResult], None]
Start = Callable[[Target], None]
_INTERRUPT_CODES = {ExitCode.SIGINT, ExitCode.SIGTERM}
# Everything a migration imports, loaded once in the fork server so that the
# workers share those pages instead of each importing its own copy.
_PRELOAD = [
    "ophelia_db.run.instance",
    "alembic.command",
    "alembic.ddl.postgresql",
    "alembic.runtime.environment",
    "sqlalchemy.dialects.postgresql.psycopg",
]


# Worker processes at most (Alembic online), whatever ``jobs`` says. Alembic online waits on
# the network too (a statement per round trip, ≈ 25 per instance), but each process costs
# ≈ 20 MB: 8 took a revision that needs it over 50 fresh databases at 20 ms from 9.8 s to 6.7 s,
# and the run's peak memory from 203 to 282 MB (16: 5.9 s, 430 MB) (bench/online_bench.py).
MAX_PROCESSES = max(8, os.cpu_count() or 1)


@dataclass
class Halt:
    """Why the run stops starting new instances, if it does."""

    max_failures: int | None = None
    failures: int = 0
    reason: str | None = None
    interrupted: int | None = None
    failed_names: list[str] = field(default_factory=list)
    failure_codes: set[int] = field(default_factory=set)

    def record(self, result: InstanceResult) -> None:
        if result.exit_code in _INTERRUPT_CODES:
            self.interrupt(int(result.exit_code))
            return
        if result.result in SUCCESSFUL:
            return
        self.failures += 1
        self.failed_names.append(result.name)
        self.failure_codes.add(int(result.exit_code))
        if self.max_failures is not None and self.failures >= self.max_failures and not self.reason:
            self.reason = (
                f"halted after {self.failures} failed instance(s) (--max-failures {self.max_failures})"
            )
            # The instances it keeps from starting did not fail: the run ends mixed (exit 7).
            self.failure_codes.add(ExitCode.MIXED)

    def skip(self, target: Target, reason: str = "not started", code: int | None = None) -> InstanceResult:
        """The result of an instance this halt keeps from starting.

        It carries the cause's code: the interruption's, else the failures' when
        they agree (a hub that cannot be reached makes the whole run exit 8), else 7.
        """
        cause = next(iter(self.failure_codes)) if len(self.failure_codes) == 1 else ExitCode.MIXED
        return InstanceResult.skipped(target, self.reason or reason, self.interrupted or code or cause)

    def interrupt(self, code: int) -> None:
        self.interrupted = self.interrupted or code
        signame = "SIGTERM" if code == ExitCode.SIGTERM else "SIGINT"
        self.reason = f"not started: interrupted by {signame}"


class Workers:
    """The run's worker processes, started early when asked to.

    Warming them as soon as a wave's instances are known to need them hides
    their start-up: the fork server's imports and each worker's first read of
    the chain happen while the instances that run in threads migrate.
    """

    def __init__(self, jobs: int) -> None:
        # Threads carry the I/O-bound work; processes only run Alembic online,
        # which costs CPU and memory, so there are never more than MAX_PROCESSES.
        self.jobs = min(jobs, MAX_PROCESSES)
        self._pool: ProcessPoolExecutor | None = None
        # warm() may come from a thread of the run's while the main thread migrates the hub.
        self._lock = threading.Lock()
        self._warmed = False
        self._closed = False

    def warm(self) -> None:
        """Start the worker processes now, ahead of the first instance that needs one (once)."""
        with self._lock:
            if self._warmed or self._closed or self.jobs <= 1:
                return
            self._warmed = True
            pool = self._pool_locked()
            for _ in range(self.jobs):
                pool.submit(_warm_up)

    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._pool_locked()

    def _pool_locked(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers start from a clean, single-threaded process,
            # and import Alembic once each rather than once per instance.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=context, initializer=worker_initializer
            )
        return self._pool

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            # A warm-up that comes later (its thread still waiting on the looks) starts nothing.
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _warm_up() -> None:
    chain_for()


@dataclass
class Wave:
    """What every instance of a wave is migrated to, and who hears about it."""

    spec: ChainSpec
    goal: str | None
    halt: Halt
    finish: Finish
    start: Start | None = None
    # At most ``[defaults] per_host`` instances of one database server in flight.
    slots: HostSlots = field(default_factory=lambda: HostSlots(PER_HOST))
    # First-look connections kept for the migrations run in this process.
    kept: KeptLooks | None = None
    # The instances' first looks, for what they tell a migration (run/instance.py).
    looks: Mapping[str, InstanceState] = field(default_factory=dict)
    _announced: set[str] = field(default_factory=set)

    def next_ready(self, queue: list[Target]) -> Target | None:
        """Take the next queued instance with a slot of its server (``queue`` is last-first).

        Instances whose first-look connection is kept go first: they hold their slot already.
        """
        order = range(len(queue) - 1, -1, -1)
        for index in order:
            if self.kept is not None and self.kept.holds(queue[index]):
                return queue.pop(index)
        for index in order:
            if self.slots.try_take(queue[index]):
                return queue.pop(index)
        return None

    def kept_connection(self, target: Target) -> Connection | None:
        """``target``'s first-look connection, for a migration in this process."""
        return self.kept.take(target) if self.kept is not None else None

    def started(self, target: Target) -> None:
        # Once per instance, even when a thread hands it over to a worker process.
        if self.start and target.name not in self._announced:
            self._announced.add(target.name)
            self.start(target)


def run(
    targets: list[Target],
    wave: Wave,
    jobs: int,
    workers: Workers | None = None,
    *,
    in_threads: Callable[[Target], bool] | None = None,
) -> None:
    """Migrate ``targets`` to ``wave.goal``, calling ``wave.finish`` for every one of them exactly once.

    ``in_threads`` tells which instances may run in a thread (all their pending
    revisions go as batches); the others, and any a thread hands over, go to
    worker processes.
    """
    if not targets:
        return
    if jobs <= 1 or len(targets) == 1:
        _run_here(targets, wave)
        return
    threaded: list[Target] = []
    rest: list[Target] = []
    for target in targets:
        (threaded if in_threads and in_threads(target) else rest).append(target)
    handed_over = _run_threads(threaded, wave, min(jobs, len(threaded) or 1))
    order = {target.name: index for index, target in enumerate(targets)}
    rest = sorted(rest + handed_over, key=lambda target: order[target.name])
    if not rest:
        return
    if wave.halt.reason:
        for target in rest:
            wave.finish(target, wave.halt.skip(target))
    elif workers is not None:
        _run_pool(rest, wave, min(workers.jobs, len(rest)), workers.pool(), handed_over)
    else:
        with Workers(jobs) as own:
            _run_pool(rest, wave, min(own.jobs, len(rest)), own.pool(), handed_over)


def _run_threads(targets: list[Target], wave: Wave, jobs: int) -> list[Target]:
    """Migrate ``targets`` in threads; return those that need Alembic online (handed over)."""
    halt = wave.halt
    queue = list(reversed(targets))
    handed_over: list[Target] = []
    running: dict[Future[InstanceResult], Target] = {}
    if not targets:
        return handed_over
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="migrate")
    try:
        while queue or running:
            while queue and len(running) < jobs and not halt.reason:
                target = wave.next_ready(queue)
                if target is None:
                    break  # every queued instance's server is busy: wait for one to finish
                wave.started(target)
                kept = wave.kept_connection(target)
                look = wave.looks.get(target.name)
                future = pool.submit(
                    migrate, target, wave.spec, wave.goal, means=IN_A_THREAD, kept=kept, look=look
                )
                running[future] = target
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                target = running.pop(future)
                wave.slots.give_back(target)
                _collect_thread(future, target, wave, handed_over)
    except KeyboardInterrupt as exc:
        halt.interrupt(exit_code_of(exc))
        # Threads cannot be signalled: they see the flag between revisions, and
        # their running statements are cancelled so that each rolls back now.
        interrupt_threads(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
        cancel_open_sessions()
        for future, target in running.items():
            _collect_thread(future, target, wave, handed_over)
    finally:
        pool.shutdown(wait=True)
        clear_thread_interrupt()
    for target in reversed(queue):
        wave.finish(target, halt.skip(target))
    # After an interruption the caller skips them too: halt.reason is set.
    return handed_over


def _collect_thread(
    future: Future[InstanceResult], target: Target, wave: Wave, handed_over: list[Target]
) -> None:
    try:
        result = future.result()
    except NeedsAlembic:
        if wave.halt.interrupted:
            result = wave.halt.skip(target, "interrupted")
        else:
            handed_over.append(target)
            return
    wave.halt.record(result)
    wave.finish(target, result)


def _run_here(targets: list[Target], wave: Wave) -> None:
    halt = wave.halt
    for target in targets:
        if halt.reason:
            wave.finish(target, halt.skip(target))
            continue
        wave.started(target)
        kept = wave.kept_connection(target)
        try:
            result = migrate(target, wave.spec, wave.goal, kept=kept, look=wave.looks.get(target.name))
        except KeyboardInterrupt as exc:
            halt.interrupt(exit_code_of(exc))
            result = halt.skip(target, "interrupted", ExitCode.SIGINT)
        finally:
            if kept is not None:
                wave.slots.give_back(target)  # held since its first look
        halt.record(result)
        wave.finish(target, result)


def _run_pool(
    targets: list[Target], wave: Wave, jobs: int, pool: ProcessPoolExecutor, handed_over: list[Target]
) -> None:
    halt = wave.halt
    queue = list(reversed(targets))
    running: dict[Future[InstanceResult], Target] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs and not halt.reason:
                target = wave.next_ready(queue)
                if target is None:
                    break  # every queued instance's server is busy: wait for one to finish
                wave.started(target)
                unused = wave.kept_connection(target)
                if unused is not None:
                    unused.close()  # a worker process opens its own; the slot stays held until it ends
                if target in handed_over:
                    # The thread moved the instance on since its look: what the look read is stale.
                    future = pool.submit(migrate, target, wave.spec, wave.goal, means=HANDED_OVER)
                else:
                    # The look tells the worker whether this server is PostgreSQL itself (no
                    # witness opened ahead) and whether the instance is new (no read bound to fail).
                    look = wave.looks.get(target.name)
                    future = pool.submit(migrate, target, wave.spec, wave.goal, means=IN_A_PROCESS, look=look)
                running[future] = target
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                target = running.pop(future)
                wave.slots.give_back(target)
                _collect(future, target, halt, wave.finish)
    except KeyboardInterrupt as exc:
        halt.interrupt(exit_code_of(exc))
        _stop_workers(pool)
        for future, target in running.items():
            _collect(future, target, halt, wave.finish)
    for target in reversed(queue):
        wave.finish(target, halt.skip(target))


def _collect(future: Future[InstanceResult], target: Target, halt: Halt, finish: Finish) -> None:
    try:
        result = future.result()
    except BrokenProcessPool:
        code = halt.interrupted or ExitCode.INTERNAL
        result = InstanceResult.of(
            target,
            Outcome.FAILED,
            exit_code=code,
            error=(
                f"{target.name}: its worker process ended abruptly; "
                "run `ophelia-db status` to see where it stands"
            ),
        )
    halt.record(result)
    finish(target, result)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Forward the interruption: each worker rolls back its current revision and unlocks."""
    for pid in list(getattr(pool, "_processes", {}) or {}):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
