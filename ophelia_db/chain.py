"""The revision chain: which revisions the code knows, in order, with checksums.

This module owns reading the Alembic script directory once per run (the
expensive part of Alembic's start-up), the single-head rule, each revision
file's ``sha256:`` checksum with line endings normalised, and building the
Alembic ``Config`` the runner hands to ``alembic/env.py``. It never connects
to a database.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ophelia_db.errors import ConfigError, IntegrityRefusal

if TYPE_CHECKING:
    from alembic.config import Config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def file_checksum(path: Path) -> str:
    """Return ``sha256:<hex>`` of a file, ignoring a BOM and CRLF/CR line endings."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Revision:
    id: str
    name: str
    path: Path
    checksum: str
    down_revision: str | None


@dataclass(frozen=True)
class ChainSpec:
    """Where a chain lives; small and picklable so worker processes can rebuild it."""

    alembic_ini: Path
    version_locations: str | None = None

    @classmethod
    def default(cls) -> ChainSpec:
        """The project's chain, or the one ``$OPHELIA_ALEMBIC_INI``/``$OPHELIA_VERSION_LOCATIONS`` name."""
        ini = Path(os.environ.get("OPHELIA_ALEMBIC_INI") or PROJECT_ROOT / "alembic.ini")
        return cls(alembic_ini=ini.resolve(), version_locations=os.environ.get("OPHELIA_VERSION_LOCATIONS"))

    def config(self) -> Config:
        """Return a fresh Alembic ``Config`` for this chain."""
        from alembic.config import Config

        if not self.alembic_ini.is_file():
            raise ConfigError(f"alembic.ini not found at {self.alembic_ini}; set OPHELIA_ALEMBIC_INI")
        config = Config(str(self.alembic_ini))
        if self.version_locations:
            config.set_main_option("version_locations", self.version_locations)
        return config


class Chain:
    """The ordered, single-headed list of revisions the code knows."""

    def __init__(self, spec: ChainSpec, revisions: list[Revision]) -> None:
        self.spec = spec
        self.revisions = tuple(revisions)
        self._position = {rev.id: index for index, rev in enumerate(self.revisions)}

    @classmethod
    def load(cls, spec: ChainSpec | None = None) -> Chain:
        """Read the script directory and compute every checksum once."""
        from alembic.script import ScriptDirectory

        spec = spec or ChainSpec.default()
        script_dir = ScriptDirectory.from_config(spec.config())
        heads = script_dir.get_heads()
        if len(heads) > 1:
            raise IntegrityRefusal(
                f"the revision chain has {len(heads)} heads ({', '.join(sorted(heads))}); "
                "merge them (alembic merge heads) before running"
            )
        ordered = list(reversed(list(script_dir.walk_revisions("base", "heads"))))
        revisions = [
            Revision(
                id=script.revision,
                name=(script.doc or script.revision).strip().splitlines()[0][:255],
                path=Path(script.path),
                checksum=file_checksum(Path(script.path)),
                down_revision=_single(script.down_revision),
            )
            for script in ordered
        ]
        return cls(spec, revisions)

    @cached_property
    def head(self) -> str | None:
        return self.revisions[-1].id if self.revisions else None

    def knows(self, revision: str) -> bool:
        return revision in self._position

    def get(self, revision: str) -> Revision:
        return self.revisions[self._position[revision]]

    def resolve(self, target: str) -> str | None:
        """Turn ``head``/``base``/an id (or unique prefix) into an id; ``None`` is base."""
        if target in ("head", "heads"):
            return self.head
        if target == "base":
            return None
        if target in self._position:
            return target
        matches = [rev.id for rev in self.revisions if rev.id.startswith(target)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(rev.id for rev in self.revisions) or "none"
        raise ConfigError(f"unknown revision '{target}' (known: {known}, head, base)")

    def between(self, current: str | None, target: str | None) -> list[str]:
        """Return the revisions to apply going up from ``current`` to ``target``."""
        start = -1 if current is None else self._position[current]
        end = -1 if target is None else self._position[target]
        return [rev.id for rev in self.revisions[start + 1 : end + 1]]

    def applied_through(self, current: str | None) -> list[str]:
        """Return every revision from base up to and including ``current``."""
        if current is None:
            return []
        return [rev.id for rev in self.revisions[: self._position[current] + 1]]

    def is_after(self, first: str | None, second: str | None) -> bool:
        """Tell whether ``first`` comes strictly after ``second`` in the chain."""
        return self._index(first) > self._index(second)

    def _index(self, revision: str | None) -> int:
        return -1 if revision is None else self._position[revision]


def _single(down: str | tuple[str, ...] | list[str] | None) -> str | None:
    if down is None or isinstance(down, str):
        return down
    return down[0] if down else None
