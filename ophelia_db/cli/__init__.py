"""The command line: the only area that uses typer and rich.

It parses arguments, calls one library function per command, renders the
result (tables, plain lines or JSON) and turns library errors into
``error: ...`` on stderr plus their exit code. It holds no SQL and makes no
decision the library should make.
"""

from ophelia_db.cli.app import app, main

__all__ = ["app", "main"]
