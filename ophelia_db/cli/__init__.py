"""The command line: the only area that uses typer and rich.

It parses arguments, calls one library function per command, renders the
result (tables, plain lines or JSON) and turns library errors into
``error: ...`` on stderr plus their exit code. It holds no SQL and makes no
decision the library should make.
"""

from __future__ import annotations

import sys

from ophelia_db._version import __version__


def main() -> None:
    """Entry point of the ``ophelia-db`` script."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"ophelia-db {__version__}\n")
        return
    # Imported here: typer, rich and pydantic cost a third of a second, which
    # `ophelia-db --version` (a deployment script's first check) never needs.
    from ophelia_db.cli.app import main as run

    run()
