"""`downgrade`: one instance down the chain, after saying what that destroys.

The reverted revisions' own SQL (rendered offline, never run for this) tells
which tables, views, functions and types they drop; the tables' rows are
counted. ``plan_downgrade`` shows that; ``downgrade`` refuses to drop rows
unless ``yes`` (the CLI asks on a terminal), and takes the hub below its
registry revision only then, saying the registry goes with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import connect, sql_identifier
from ophelia_db.fleet.hub_writer import HubReporter
from ophelia_db.results import Record, RunReport
from ophelia_db.run import driver
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.instance import migrate
from ophelia_db.run.journal import RunJournal, identify, reporter_for
from ophelia_db.run.script import statements
from ophelia_db.run.state import read_state
from ophelia_db.run.upgrade import registry_update, with_hub_state

_DROP = re.compile(
    r"^DROP\s+(TABLE|VIEW|MATERIALIZED\s+VIEW|FUNCTION|TYPE|SEQUENCE)\s+(?:IF\s+EXISTS\s+)?([\w.\"]+)",
    re.IGNORECASE,
)
REGISTRY = "public.instance_registry"
# The chain's own bookkeeping: going down to base takes its history with it by design.
_JOURNAL = "public.ophelia_runs"
_VERSION_TABLES = frozenset({"public.schema_migrations", "public.schema_version"})


@dataclass(frozen=True)
class Drop(Record):
    kind: str
    name: str
    rows: int | None = None

    def describe(self) -> str:
        rows = "" if self.rows is None else f" ({self.rows} row{'' if self.rows == 1 else 's'})"
        return f"{self.kind} {self.name}{rows}"


@dataclass(frozen=True)
class DowngradePlan(Record):
    instance: str
    current: str | None
    goal: str | None
    reverted: tuple[str, ...]
    drops: tuple[Drop, ...]

    @property
    def rows_lost(self) -> int:
        """Rows of data (not the version history) the downgrade drops."""
        return sum(drop.rows or 0 for drop in self.drops if drop.name not in _VERSION_TABLES)

    @property
    def loses_registry(self) -> bool:
        return any(drop.name == REGISTRY for drop in self.drops)


def _silent(**_: object) -> None:
    """A version hook that writes nothing: the rendered SQL is only read."""


def plan_downgrade(target: Target, *, to: str, chain: Chain | None = None) -> DowngradePlan:
    """What taking ``target`` down to ``to`` would drop, with row counts; changes nothing."""
    chain = chain or chain_for()
    goal = chain.resolve(to)
    with connect(target, autocommit=True) as conn:
        current = read_state(conn).revision
        if current is None or not chain.knows(current) or not chain.is_after(current, goal):
            return DowngradePlan(target.name, current, goal, (), ())
        sql = driver.render_downgrade_sql(chain.spec, current, goal, hook=_silent)
        found: dict[str, Drop] = {}
        for statement in statements(sql):
            match = _DROP.match(statement.text)
            if match:
                kind, name = " ".join(match.group(1).lower().split()), match.group(2).replace('"', "")
                name = name if "." in name else f"public.{name}"
                found.setdefault(name, Drop(kind, name, _rows(conn, name) if kind == "table" else None))
    reverted = tuple(reversed(chain.between(goal, current)))
    return DowngradePlan(target.name, current, goal, reverted, tuple(found.values()))


def _rows(conn: object, name: str) -> int | None:
    row = conn.execute(  # type: ignore[attr-defined]
        f"SELECT count(*) FROM {sql_identifier(*name.split('.', 1))}"  # a table the plan just named
    ).fetchone()
    return int(row[0]) if row else None


def downgrade(
    fleet: Fleet, target: Target, *, to: str, yes: bool = False, chain: Chain | None = None
) -> RunReport:
    """Move one instance down to ``to``, removing the reverted history rows.

    Refused (exit 2, nothing changed) when it would drop rows, or the hub's
    registry, unless ``yes``.
    """
    chain = chain or chain_for()
    plan = plan_downgrade(target, to=to, chain=chain)
    if not yes and (plan.rows_lost or (plan.loses_registry and target.role == "hub")):
        lost = "; ".join(d.describe() for d in plan.drops if d.rows and d.name not in _VERSION_TABLES)
        lost = lost or "the hub's instance_registry, the fleet's registry"
        raise ConfigError(
            f"{target.name}: going down to {plan.goal or 'base'} drops {lost}; nothing was changed. "
            "Pass --yes to drop them (back them up first)"
        )
    identity = identify(None, None)
    # A hub going below the journal's revision takes the journal with it: nothing to write to.
    keeps_journal = not (target.role == "hub" and any(d.name == _JOURNAL for d in plan.drops))
    reporter = reporter_for(fleet, identity) if keeps_journal else HubReporter(fleet.hub)
    journal = RunJournal(reporter, identity, {target.name: 1}, {target.name: 1}) if keeps_journal else None
    if journal:
        journal.begin("downgrade", to, {"instances": [target.name]})
        journal.started(target)
    try:
        result = migrate(target, chain.spec, chain.resolve(to), downgrade=True)
    finally:
        if target.role == "hub" and plan.loses_registry:
            reporter.close()  # what was journalled before; the registry is gone
    if target.role == "hub" and plan.loses_registry:
        # The report would go to the table this run just dropped.
        return RunReport(
            run_id=identity.run_id,
            target=to,
            instances=(result,),
            hub_report="pending",
            hub_error=(
                f"{target.name}: the hub's instance_registry was dropped by this downgrade; upgrade the "
                f"hub (`ophelia-db upgrade --instance {target.name}`), then run `ophelia-db sync --all`"
            ),
        )
    reporter.report(registry_update(result, target))
    report = RunReport(run_id=identity.run_id, target=to, instances=(result,))
    if journal:
        journal.finished(result)
        journal.end(report)
    reporter.close()
    return with_hub_state(report, reporter)
