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

The names below load on first use: `status` must not pay for importing
`upgrade`, `downgrade` and the batch code it never calls (≈ 30 ms of a
0.4 s command). The commands named like their module (``status``,
``upgrade``, ``downgrade``, ``sync``) are not among them: importing a
submodule sets the package's attribute of that name to the module, so the
name would be a function or a module depending on what was imported first.
They are ``ophelia_db.status`` and so on, or ``ophelia_db.run.upgrade.upgrade``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ophelia_db._lazy import lazy_names

if TYPE_CHECKING:
    from ophelia_db.run.downgrade import DowngradePlan, plan_downgrade
    from ophelia_db.run.offline import offline_sql
    from ophelia_db.run.runs import resume, show_run
    from ophelia_db.run.selection import select_shard
    from ophelia_db.run.status import history, probe_all
    from ophelia_db.run.upgrade import Resumption

_WHERE = {
    "DowngradePlan": "ophelia_db.run.downgrade",
    "plan_downgrade": "ophelia_db.run.downgrade",
    "offline_sql": "ophelia_db.run.offline",
    "resume": "ophelia_db.run.runs",
    "show_run": "ophelia_db.run.runs",
    "select_shard": "ophelia_db.run.selection",
    "history": "ophelia_db.run.status",
    "probe_all": "ophelia_db.run.status",
    "Resumption": "ophelia_db.run.upgrade",
}

__all__ = [
    "DowngradePlan",
    "Resumption",
    "history",
    "offline_sql",
    "plan_downgrade",
    "probe_all",
    "resume",
    "select_shard",
    "show_run",
]

__getattr__ = lazy_names(__name__, _WHERE, globals())
