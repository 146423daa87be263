"""The hub as a service (`ophelia-db serve`): the fleet page, instance and run pages, the seed's
sync endpoint, ``/api/status``, ``/healthz`` and Prometheus ``/metrics``.

It owns the HTTP side only: ``view`` (the cached fleet snapshot that keeps a
page load from storming the fleet), ``pages`` (what each page shows),
``metrics`` and ``app`` (the Starlette routes). The data comes from the other
areas' library calls: ``run`` (status, history, sync, the journal) and
``instances`` (the vault, masked).
"""

from ophelia_db.serve.app import create_app

__all__ = ["create_app"]
