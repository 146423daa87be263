"""ophelia-db: one Alembic revision chain across a fleet of tenant PostgreSQL databases.

The public library API: load a fleet, then call the function named after the
command you want. Every function returns a result object and never prints.
"""

from ophelia_db._version import __version__
from ophelia_db.errors import ExitCode, OpheliaError
from ophelia_db.fleet.config import Fleet, Target, load_fleet
from ophelia_db.run import downgrade, history, offline_sql, status, sync, upgrade
from ophelia_db.run.chain import Chain, ChainSpec

__all__ = [
    "Chain",
    "ChainSpec",
    "ExitCode",
    "Fleet",
    "OpheliaError",
    "Target",
    "__version__",
    "downgrade",
    "history",
    "load_fleet",
    "offline_sql",
    "status",
    "sync",
    "upgrade",
]
