"""The command line: the only area that uses typer and rich.

It parses arguments, calls one library function per command, renders the
result (tables, plain lines or JSON) and turns library errors into
``error: ...`` on stderr plus their exit code. It holds no SQL and makes no
decision the library should make.
"""

from __future__ import annotations

import contextlib
import gc
import sys

from ophelia_db._version import __version__
from ophelia_db.cli.words import command_name, option_values


def main() -> None:
    """Entry point of the ``ophelia-db`` script."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"ophelia-db {__version__}\n")
        return
    # A command is a short process whose imports (typer, pydantic, psycopg)
    # make some 200 000 objects that live until it exits. At the default
    # threshold the collector walks them some 140 times: ≈ 20 ms of a 0.4 s
    # `status`. Garbage cycles wait for 50 000 allocations instead: a few MB.
    gc.set_threshold(50_000, 10, 10)
    # Only an optimisation: whatever goes wrong there, the command connects as it always did.
    with contextlib.suppress(Exception):
        _connect_ahead(sys.argv[1:])
    # Imported here: typer, rich and pydantic cost a third of a second, which
    # `ophelia-db --version` (a deployment script's first check) never needs.
    from ophelia_db.cli.app import main as run

    try:
        run()
    finally:
        # At exit the interpreter's collections walk every object again:
        # ≈ 40 ms. Frozen objects are skipped, and nothing needs collecting
        # once the command has returned: its files and connections are closed.
        gc.freeze()


def _connect_ahead(args: list[str]) -> None:
    """Start connecting to the databases a `status` or an `upgrade` reads first, while the rest of
    the command loads (fleet/ahead.py): the hub, and the instances named, or all of them with
    ``--all`` (and `status` without a selection). Of a selection this cannot tell without the
    fleet's validation (tags, shards, a resumed run), only the hub."""
    command = command_name(args)
    if command not in ("status", "upgrade") or "--help" in args:
        return
    values = option_values(args)
    named = values.get("--instance", []) + values.get("-i", [])
    unknowable = bool({"--tag", "--shard", "--resume"} & values.keys())
    instances: list[str] | None
    # The hub: its registry's read (status) or the reports' connection (upgrade), and its own
    # look when the selection is the whole fleet.
    if unknowable:
        instances, hub = [], 1
    elif "--all" in args or (command == "status" and not named):
        instances, hub = None, 2
    else:
        instances, hub = named, 1
    fleet = values.get("--fleet", [None])[-1]
    # Imported here, as the app below is: `--version` needs neither psycopg nor the fleet file.
    from ophelia_db.fleet import ahead

    ahead.start(fleet, instances, hub)
