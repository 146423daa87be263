"""The command line: the only area that uses typer and rich.

It parses arguments, calls one library function per command, renders the
result (tables, plain lines or JSON) and turns library errors into
``error: ...`` on stderr plus their exit code. It holds no SQL and makes no
decision the library should make.
"""

from __future__ import annotations

import gc
import sys

from ophelia_db._version import __version__


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
