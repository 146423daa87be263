"""The words of a command line that matter before typer loads: the command, and what it selects.

Read by the entry point (``cli.main``) to start connecting while the rest loads
(fleet/ahead.py), and by ``cli.app`` to build only the command it runs.
"""

from __future__ import annotations


def command_name(args: list[str]) -> str | None:
    """The word naming the command, after the global options (``--fleet PATH``, ``--debug``)."""
    words = iter(args)
    for word in words:
        if word == "--fleet":
            next(words, None)
        elif word == "--debug" or word.startswith("--fleet="):
            continue
        else:
            return None if word.startswith("-") else word
    return None


def option_values(args: list[str]) -> dict[str, list[str]]:
    """The values of the options that take one, as given (``--name VALUE`` or ``--name=VALUE``)."""
    found: dict[str, list[str]] = {}
    for index, word in enumerate(args):
        name, equals, value = word.partition("=")
        if name in ("--fleet", "--instance", "-i", "--tag", "--shard", "--resume"):
            if not equals:
                value = args[index + 1] if index + 1 < len(args) else ""
            found.setdefault(name, []).append(value)
    return found
