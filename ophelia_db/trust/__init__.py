"""Trust: checking, and deliberately changing, what an instance's history says.

It owns ``validate`` (history against the chain, read-only), ``repair``
(re-accept a checksum, rebuild the mirror; logged in ``ophelia_repairs``), ``resolve``
(the decision about an interrupted non-transactional section),
``adopt`` (stamp a hand-migrated database after comparing its schema with
references), ``drift`` (live schemas against those references, grouped by
fingerprint), the references themselves (``reference``: the chain applied
revision by revision to a scratch database) and ``lint`` (revisions rendered
to SQL and checked for blocking DDL, offline).
"""

from ophelia_db.trust.adopt import AdoptionPlan, adopt, examine, plan_adoption
from ophelia_db.trust.drift import DriftReport, drift
from ophelia_db.trust.lint import lint
from ophelia_db.trust.reference import References, build_references
from ophelia_db.trust.repair import RepairPlan, RepairRequest, plan_repair, repair
from ophelia_db.trust.resolve import Decision, Resolution, resolve
from ophelia_db.trust.validate import ValidationReport, validate

__all__ = [
    "AdoptionPlan",
    "Decision",
    "DriftReport",
    "References",
    "RepairPlan",
    "RepairRequest",
    "Resolution",
    "ValidationReport",
    "adopt",
    "build_references",
    "drift",
    "examine",
    "lint",
    "plan_adoption",
    "plan_repair",
    "repair",
    "resolve",
    "validate",
]
