"""ophelia-db: one Alembic revision chain across a fleet of tenant PostgreSQL databases.

The public library API: load a fleet, then call the function named after the
command you want. Every function returns a result object and never prints.
The names are loaded on first use, so that importing the package (and
``ophelia-db --version``) costs nothing until something is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophelia_db._lazy import lazy_names
from ophelia_db._version import __version__

if TYPE_CHECKING:
    from ophelia_db.errors import ExitCode, OpheliaError
    from ophelia_db.fleet.config import Fleet, Target, load_fleet
    from ophelia_db.run import history, offline_sql, resume, show_run
    from ophelia_db.run.chain import Chain, ChainSpec
    from ophelia_db.run.downgrade import downgrade
    from ophelia_db.run.gate import gate
    from ophelia_db.run.status import status
    from ophelia_db.run.sync import sync
    from ophelia_db.run.upgrade import upgrade

_WHERE = {
    "Chain": "ophelia_db.run.chain",
    "ChainSpec": "ophelia_db.run.chain",
    "ExitCode": "ophelia_db.errors",
    "OpheliaError": "ophelia_db.errors",
    "Fleet": "ophelia_db.fleet.config",
    "Target": "ophelia_db.fleet.config",
    "load_fleet": "ophelia_db.fleet.config",
    "downgrade": "ophelia_db.run.downgrade",
    "gate": "ophelia_db.run.gate",
    "resume": "ophelia_db.run",
    "show_run": "ophelia_db.run",
    "history": "ophelia_db.run",
    "offline_sql": "ophelia_db.run",
    "status": "ophelia_db.run.status",
    "sync": "ophelia_db.run.sync",
    "upgrade": "ophelia_db.run.upgrade",
}

__all__ = [
    "Chain",
    "ChainSpec",
    "ExitCode",
    "Fleet",
    "OpheliaError",
    "Target",
    "__version__",
    "downgrade",
    "gate",
    "history",
    "load_fleet",
    "offline_sql",
    "resume",
    "show_run",
    "status",
    "sync",
    "upgrade",
]

__getattr__ = lazy_names(__name__, _WHERE, globals())
