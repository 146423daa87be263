"""Command-line commands for the trust features, registered on the main app by cli.py."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to ``app``."""
