"""`sql`: the offline SQL an operator pastes by hand, time-boxed and sectioned like a live run."""

from __future__ import annotations

import re

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet.config import Target, Timeouts
from ophelia_db.run import driver
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.mirror import MirrorHook
from ophelia_db.run.script import mark_non_transactional
from ophelia_db.run.status import probe


def offline_sql(
    target: Target | None,
    *,
    start: str | None = None,
    to: str = "head",
    chain: Chain | None = None,
    from_database: bool = True,
) -> str:
    """Render the SQL that moves an instance from ``start`` (default: its current revision) to ``to``."""

    chain = chain or chain_for()
    goal = chain.resolve(to)
    if start is None and target is not None and from_database:
        state = probe(target)
        if isinstance(state, OpheliaError):
            raise state
        start = state.revision
    elif start is not None:
        start = chain.resolve(start)
    if goal is None:
        raise ConfigError("offline SQL goes up the chain; --to base makes no sense here")
    if start is not None and not chain.is_after(goal, start):
        return f"-- {target.name if target else 'instance'} is already at {start}: nothing to apply\n"
    hook = MirrorHook(chain=chain, instance_id=target.name if target else None)
    script = driver.render_sql(chain.spec, start, goal, hook=hook)
    # Statements that cannot run in a transaction become separate, labelled sections.
    timeouts = target.timeouts if target is not None else Timeouts()
    return mark_non_transactional(_with_time_boxes(script, chain, timeouts))


# The first revision's line has no "from": "-- Running upgrade  -> 0001".
_RUNNING = re.compile(r"^-- Running upgrade \S* -> (\S+)\s*$")


def _with_time_boxes(script: str, chain: Chain, timeouts: Timeouts) -> str:
    """Give each revision of pasted SQL the time box the runner would give it (SET LOCAL)."""
    lines = []
    for line in script.splitlines(keepends=True):
        lines.append(line)
        match = _RUNNING.match(line)
        if match and chain.knows(match.group(1)):
            revision = chain.get(match.group(1))
            lock = revision.lock_timeout or timeouts.lock_timeout
            statement = revision.statement_timeout or timeouts.statement_timeout
            lines.append(
                f"SET LOCAL lock_timeout = '{int(lock * 1000)}ms';\n"
                f"SET LOCAL statement_timeout = '{int(statement * 1000)}ms';\n"
            )
    return "".join(lines)
