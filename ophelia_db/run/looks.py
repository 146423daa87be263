"""An upgrade's first looks: every selected instance's state, read in the background from the run's start.

This module owns when the first looks start, which of their connections are
kept for the migration (``session.KeptLooks``), and waiting for the states a
wave needs. The looks start with the run, before the hub registry's read that
leaves archived and suspended instances out (≈ 2–3 round trips on the hub):
an instance left out was looked at, read-only, as ``status`` does, but is never
kept, migrated or waited for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future

from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import Connection
from ophelia_db.fleet.hosts import HostSlots
from ophelia_db.run.session import KEPT_LIMIT, KeptLooks
from ophelia_db.run.state import InstanceState
from ophelia_db.run.status import Look, in_daemon, probe_all

# Whether an instance has work, from its first look (its connection is then worth keeping).
HasWork = Callable[[Target, InstanceState], bool]
Seen = Callable[[Target, Look], None]


class FirstLooks:
    """The first looks of one run, each probe over its targets in a background thread."""

    def __init__(self, jobs: int, per_host: int, has_work: HasWork | None, seen: Seen | None) -> None:
        """``has_work``: None for a dry run (nothing is kept); ``seen`` hears of each state as it comes."""
        self.kept = KeptLooks(max(jobs, KEPT_LIMIT), HostSlots(per_host))
        self.states: dict[str, Look] = {}
        self._has_work = has_work
        self._seen = seen
        self._changed = threading.Condition()
        # The instances whose connections may be kept; None until the selection is settled.
        self._selected: set[str] | None = None
        self._probes: list[Future[dict[str, Look]]] = []
        # The names of every target a probe was started for.
        self.started: set[str] = set()

    def start(self, targets: list[Target]) -> None:
        """Start reading ``targets``' states, in one probe over them all (at most ``per_host`` of one
        server at once)."""
        if targets:
            self.started.update(t.name for t in targets)
            self.kept.expect(targets)
            keep = self._keep if self._has_work is not None else None
            # Daemon threads: a look still connecting (an instance the run left out) does
            # not hold the command's exit (a pool's threads are joined at exit).
            probe = in_daemon(
                lambda: probe_all(targets, slots=self.kept.slots, on_state=self._saw, keep=keep, daemon=True),
                "looks",
            )
            probe.add_done_callback(self._wake)
            self._probes.append(probe)

    def settle(self, selected: Collection[Target]) -> None:
        """The run's selection is known: close what was kept for instances it left out."""
        with self._changed:
            self._selected = {t.name for t in selected}
            self.kept.drop_all_but(self._selected)

    def wait_for(self, targets: list[Target]) -> None:
        """Wait for ``targets``' states only: an instance the run left out may still be connecting."""
        names = {t.name for t in targets}
        with self._changed:
            while not names <= self.states.keys() and not all(p.done() for p in self._probes):
                self._changed.wait()
        for probe in self._probes:
            if probe.done():
                probe.result()  # a probe's own failure (a bug) is raised here

    def close(self) -> None:
        """Keep nothing more and close what no migration took. A look still connecting (to an
        instance left out, or in a run that failed early) is not waited for: it closes its own."""
        with self._changed:
            self._selected = set()
        self.kept.close()

    def _keep(self, target: Target, state: InstanceState, conn: Connection) -> bool:
        assert self._has_work is not None
        with self._changed:
            if self._selected is not None and target.name not in self._selected:
                return False
            ahead = target.role == "hub"  # its migration is the first, and every other one waits for it
            return self._has_work(target, state) and self.kept.offer(target, conn, ahead=ahead)

    def _saw(self, target: Target, state: Look) -> None:
        self.kept.looked(target)  # when no offer said so already
        with self._changed:
            self.states[target.name] = state
            self._changed.notify_all()
        if self._seen is not None:
            self._seen(target, state)

    def _wake(self, _: Future[dict[str, Look]]) -> None:
        with self._changed:
            self._changed.notify_all()
