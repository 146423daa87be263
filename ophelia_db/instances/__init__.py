"""Instances: bringing a new instance into the fleet and looking after it.

It owns provisioning (``answers``: the one model of every answer and where
answers come from; ``files``/``sql``: the files operators paste; ``seed``:
what goes into a new vault; ``apply``: the live, resumable path), the vault
of a live instance (``vault``: ``config list|get|set|unset``), the lifecycle
as the hub sees it (``lifecycle``: archive, suspend, activate, the
``instances`` listing) and ``doctor`` (an instance checked as the app sees it).
"""

from ophelia_db.instances.answers import Answers, gather
from ophelia_db.instances.apply import ApplyReport, apply
from ophelia_db.instances.doctor import DoctorReport, doctor
from ophelia_db.instances.files import Outputs, write_outputs
from ophelia_db.instances.lifecycle import InstancesReport, StatusChange, instances, set_status

__all__ = [
    "Answers",
    "ApplyReport",
    "DoctorReport",
    "InstancesReport",
    "Outputs",
    "StatusChange",
    "apply",
    "doctor",
    "gather",
    "instances",
    "set_status",
    "write_outputs",
]
