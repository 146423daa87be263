"""Running the revision chain: the area that owns Alembic and the version mirror.

It owns reading the chain (``chain``), building every Alembic ``Config``
(``driver``), the per-instance step under the migration lock (``instance``),
its connections (``session``) and its revisions (``revisions``), each sent as
one batch where it can be (``batch``), the fan-out over threads and worker
processes (``fanout``) and signals (``interrupts``), the mirror tables
``schema_migrations``/``schema_version`` (``mirror``, their only writer), and
the commands built on them: ``status``/``history``, ``upgrade``/``downgrade``,
``sync``, the offline ``sql`` and the plain ``alembic -x instance=NAME`` entry
(``plain_alembic``).
"""

from ophelia_db.run.downgrade import DowngradePlan, downgrade, plan_downgrade
from ophelia_db.run.offline import offline_sql
from ophelia_db.run.runs import resume, show_run
from ophelia_db.run.selection import select_shard
from ophelia_db.run.status import history, probe_all, status
from ophelia_db.run.sync import sync
from ophelia_db.run.upgrade import Resumption, upgrade

__all__ = [
    "DowngradePlan",
    "Resumption",
    "downgrade",
    "history",
    "offline_sql",
    "plan_downgrade",
    "probe_all",
    "resume",
    "select_shard",
    "show_run",
    "status",
    "sync",
    "upgrade",
]
