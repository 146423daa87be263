"""Many rows in one upsert: which rows may share a statement.

The hub's writes go as one ``INSERT ... SELECT FROM jsonb_to_recordset(...)
ON CONFLICT`` per table rather than one statement per row. One such statement
cannot touch a row twice (PostgreSQL refuses it: "ON CONFLICT DO UPDATE
command cannot affect row a second time"), and the later of two writes to a
row must win: a run of writes ends where a key comes again.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Kind = TypeVar("Kind")


def runs_without_repeats(
    items: Iterable[Item], key: Callable[[Item], Hashable], kind: Callable[[Item], Kind]
) -> Iterator[tuple[Kind, list[Item]]]:
    """Consecutive ``items`` of one ``kind`` (one statement each), in order; a run ends where
    an item's ``key`` (the row it writes) comes again, or the kind changes."""
    run: list[Item] = []
    keys: set[Hashable] = set()
    for item in items:
        if run and (kind(item) != kind(run[0]) or key(item) in keys):
            yield kind(run[0]), run
            run, keys = [], set()
        run.append(item)
        keys.add(key(item))
    if run:
        yield kind(run[0]), run
