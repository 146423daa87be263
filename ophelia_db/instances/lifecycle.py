"""The instance lifecycle as the hub sees it: `archive`, `suspend`, `activate`, `instances`.

This module owns changing an instance's ``status`` in the hub registry and
the ``instances`` listing that puts fleet.toml and the registry side by side
and flags what only one of them knows. The SQL is ``fleet.hub``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ophelia_db.errors import ConfigError, ExitCode
from ophelia_db.fleet import hub
from ophelia_db.fleet.config import Fleet
from ophelia_db.fleet.connections import connect
from ophelia_db.results import Record
from ophelia_db.run.state import InstanceState
from ophelia_db.run.status import probe_all


@dataclass(frozen=True)
class StatusChange(Record):
    json_extra: ClassVar[tuple[str, ...]] = ("changed",)

    name: str
    previous: str | None
    status: str

    @property
    def changed(self) -> bool:
        return self.previous != self.status


def set_status(fleet: Fleet, name: str, status: hub.Status) -> StatusChange:
    """Set an instance's status in the hub registry (a fleet.toml instance not yet there is added)."""
    if name == fleet.hub.name:
        raise ConfigError(f"'{name}' is the hub; its status cannot change")
    with connect(fleet.hub, autocommit=True) as conn:
        hub.require_registry(conn, fleet.hub)
        with conn.transaction():
            found = hub.find(conn, name, for_update=True)
            if found is None:
                target = fleet.instances.get(name)
                if target is None:
                    hint = hub.unknown_name_hint(conn, name, list(fleet.instances))
                    raise ConfigError(
                        f"unknown instance '{name}': not in {fleet.path} nor in the hub registry{hint}"
                    )
                hub.insert(conn, target, status)
                return StatusChange(name, None, status)
            if found[0] != status:
                hub.update_status(conn, name, status)
            return StatusChange(name, found[0], status)


@dataclass(frozen=True)
class Member(Record):
    """One line of ``ophelia-db instances``: what fleet.toml and the hub registry say about a name."""

    json_extra: ClassVar[tuple[str, ...]] = ("flag",)

    name: str
    role: str
    community_name: str | None
    community_type: str | None
    status: str | None
    schema_version: str | None
    last_run_status: str | None
    in_fleet: bool
    in_registry: bool
    # With --check: the version the instance itself holds (``None``: not read, or unreachable).
    live_version: str | None = None
    live_read: bool = False

    @property
    def flag(self) -> str | None:
        if not self.in_registry:
            return "in fleet.toml, not in the registry"
        if not self.in_fleet:
            return "in the registry, not in fleet.toml"
        if self.live_read and self.live_version != self.schema_version:
            return (
                f"the registry says {self.schema_version or 'none'}, the instance is at "
                f"{self.live_version or 'base'}: `ophelia-db sync --instance {self.name}` fixes it"
            )
        return None


@dataclass(frozen=True)
class InstancesReport(Record):
    json_names: ClassVar[dict[str, str]] = {"members": "instances"}

    hub: str
    members: tuple[Member, ...]

    def exit_code(self, check: bool = False) -> int:
        """With ``check``, 1 when fleet.toml and the registry disagree."""
        return ExitCode.NOT_AT_HEAD if check and any(m.flag for m in self.members) else ExitCode.OK


def instances(fleet: Fleet, *, live: bool = False) -> InstancesReport:
    """The fleet as the hub registry sees it, each name flagged if only one side knows it.

    With ``live``, each instance is read too, and flagged when its registry
    row holds another version than the instance does.
    """
    with connect(fleet.hub, autocommit=True) as conn:
        hub.require_registry(conn, fleet.hub)
        rows = {row[0]: row for row in conn.execute(hub.ROWS_SQL).fetchall()}
    states = probe_all(list(fleet.members), per_host=fleet.defaults.per_host) if live else {}
    members = []
    for target in fleet.members:
        row = rows.pop(target.name, None)
        state = states.get(target.name)
        read = isinstance(state, InstanceState)
        members.append(
            Member(
                name=target.name,
                role=target.role,
                community_name=row[1] if row else target.community_name,
                community_type=row[2] if row else target.community_type,
                status=row[3] if row else None,
                schema_version=row[4] if row else None,
                last_run_status=row[5] if row else None,
                in_fleet=True,
                in_registry=row is not None,
                live_version=state.revision if isinstance(state, InstanceState) else None,
                live_read=read,
            )
        )
    for name, community, kind, status, version, last, is_hub in rows.values():
        role = "hub" if is_hub else "instance"
        members.append(Member(name, role, community, kind, status, version, last, False, True))
    return InstancesReport(fleet.hub.name, tuple(members))
