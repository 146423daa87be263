"""How results look: one entry point, ``emit``, for every report type.

A report is shown as JSON with ``--json`` (stdout carries only the document;
diagnostics go to stderr), otherwise by the renderer registered for its type
(``@renders``): a rich table on a terminal, plain lines otherwise. The
renderers live beside this module, one module per command area. rich is
imported inside the functions that draw on a terminal: its import is
≈ 30 ms, a tenth of `status`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import typer

if TYPE_CHECKING:
    from rich.console import Console

_RENDERERS: dict[str, Callable[..., None]] = {}
_STATE_STYLE = {
    "up-to-date": "green",
    "ok": "green",
    "noop": "green",
    "planned": "cyan",
    "outdated": "yellow",
    "unversioned": "yellow",
    "skipped": "yellow",
    "locked": "magenta",
}


def renders(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the plain renderer of the report type called ``kind``.

    By name, not by class: a renderer module then imports no library module
    (only for type checking), and ``ophelia-db --help`` loads none of them.
    """

    def register(function: Callable[..., None]) -> Callable[..., None]:
        _RENDERERS[kind] = function
        return function

    return register


def show(report: Any, *, as_json: bool, **options: Any) -> None:
    """Print ``report`` as JSON or through its registered renderer (given ``options``)."""
    if as_json:
        emit_json(report.as_record())
    else:
        _RENDERERS[type(report).__name__](report, **options)


def emit(report: Any, *, as_json: bool, code: int | None = None, **options: Any) -> NoReturn:
    """Show ``report`` and exit with ``code`` (default: the report's own exit code)."""
    show(report, as_json=as_json, **options)
    if code is None:
        code = report.exit_code() if callable(report.exit_code) else report.exit_code
    raise typer.Exit(code)


def emit_json(record: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(record, ensure_ascii=False, indent=2, default=str) + "\n")


def shortened(text: str, limit: int, what: str = "characters") -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text) - limit + 1} more {what})"


def plural(count: int, noun: str) -> str:
    """``1 way``, ``2 ways``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    sys.stderr.write(line + "\n")


def is_tty(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def console(stream: TextIO) -> Console:
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=False)


def styled(value: str) -> str:
    """``value`` in its state's colour, as rich markup (a table cell; ``table`` drops it off a terminal)."""
    style = _STATE_STYLE.get(value, "red")
    return f"[{style}]{value}[/{style}]"


_STYLED = re.compile(r"\[(?P<style>[a-z]+)\](?P<value>.*)\[/(?P=style)\]", re.DOTALL)


def unstyled(cell: str) -> str:
    """``cell`` without the markup ``styled`` gave it; any other text as it is."""
    found = _STYLED.fullmatch(cell)
    return found.group("value") if found else cell


def print_table(title: str | None, headers: list[str], rows: list[list[str]], stream: TextIO) -> None:
    """A rich table (cells may carry rich markup, see ``styled``)."""
    from rich.table import Table

    shown = Table(title=title)
    for header in headers:
        shown.add_column(header)
    for row in rows:
        shown.add_row(*row)
    console(stream).print(shown)


def table(title: str | None, headers: list[str], rows: list[list[str]], stream: TextIO | None = None) -> None:
    """A rich table on a terminal, one plain line per row otherwise."""
    stream = stream or sys.stdout
    if is_tty(stream):
        print_table(title, headers, rows, stream)
        return
    for row in rows:
        # Off a terminal the cells' colours (see ``styled``) are left out.
        stream.write("  ".join(unstyled(cell) for cell in row).rstrip() + "\n")
