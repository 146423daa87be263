"""The instance vault of a live instance: `config list|get|set|unset` on ``instance_config``.

This module owns reading and changing keys on a live instance (the seed
written at provisioning is ``seed``'s, docs/design.md §6). Values
are JSON; a plain string is stored as a JSON string. An unrevealed secret
value never leaves the database (the query masks it), and a secret being
written is registered for redaction first, so no error can show it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ophelia_db.errors import ConfigError, ExitCode, OpheliaError
from ophelia_db.fleet.connections import Connection, connect, describe_error, sqlstate_of
from ophelia_db.instances.seed import check_key
from ophelia_db.redaction import MASK, register_secret
from ophelia_db.results import Record

_LOOKS_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)")

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Target


@dataclass(frozen=True)
class ConfigEntry:
    """One vault row as read; ``value`` is ``None`` for a secret that was not revealed."""

    key: str
    value: Any
    category: str
    description: str | None
    is_secret: bool
    is_public: bool
    version: int
    updated_at: datetime | None
    revealed: bool = False
    # A digest of the stored value, so that secrets are compared across
    # instances without their values ever leaving the database; never shown.
    digest: str = ""

    @property
    def shown(self) -> str:
        """The value as JSON text, or the mask for an unrevealed secret."""
        if self.is_secret and not self.revealed:
            return MASK
        return json.dumps(self.value, ensure_ascii=False)

    def as_record(self) -> dict[str, Any]:
        masked = self.is_secret and not self.revealed
        return {
            "key": self.key,
            "value": MASK if masked else self.value,
            "category": self.category,
            "description": self.description,
            "is_secret": self.is_secret,
            "is_public": self.is_public,
            "version": self.version,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(frozen=True)
class SetResult(Record):
    json_hidden: ClassVar[frozenset[str]] = frozenset({"warning"})

    instance: str
    key: str
    created: bool
    changed: bool
    version: int
    is_secret: bool
    is_public: bool
    warning: str | None = None


@dataclass(frozen=True)
class InstanceConfig(Record):
    """One instance's answer in a fleet-wide read: its entries, or why it could not be read."""

    json_hidden: ClassVar[frozenset[str]] = frozenset({"exit_code"})

    instance: str
    entries: tuple[ConfigEntry, ...] = ()
    error: str | None = None
    exit_code: int = ExitCode.OK

    def get(self, key: str) -> ConfigEntry | None:
        return next((e for e in self.entries if e.key == key), None)

    def shown(self, key: str, *, missing: str = "-", failed: str = "?") -> str:
        entry = self.get(key)
        return failed if self.error else entry.shown if entry else missing

    def identity(self, key: str) -> str:
        """What tells this instance's value of ``key`` apart: its digest, never the value."""
        entry = self.get(key)
        return "error" if self.error else f"value {entry.digest}" if entry else "missing"


def compare(
    configs: Sequence[InstanceConfig], key: str, *, missing: str = "-", failed: str = "?"
) -> tuple[list[str], int]:
    """What each instance shows for ``key`` (secrets masked), in order, and how many different
    values there are, secrets compared by their stored values."""
    shown = [config.shown(key, missing=missing, failed=failed) for config in configs]
    return shown, len({config.identity(key) for config in configs})


_SELECT = """SELECT key, CASE WHEN is_secret AND NOT %(reveal)s THEN NULL ELSE value END,
  category, description, is_secret, is_public, version, updated_at,
  encode(sha256(convert_to(value::text, 'UTF8')), 'hex')
FROM public.instance_config WHERE %(key)s::text IS NULL OR key = %(key)s ORDER BY category, key"""

_UPSERT = """INSERT INTO public.instance_config AS c (key, value, category, description, is_secret, is_public)
VALUES (%(key)s, %(value)s::jsonb, COALESCE(%(category)s, 'general'), %(description)s,
  %(secret)s, %(public)s)
ON CONFLICT (key) DO UPDATE SET
  value = EXCLUDED.value,
  category = COALESCE(%(category)s, c.category),
  description = COALESCE(%(description)s, c.description),
  is_secret = EXCLUDED.is_secret,
  is_public = EXCLUDED.is_public
WHERE (c.value, c.category, c.description, c.is_secret, c.is_public) IS DISTINCT FROM
  (EXCLUDED.value, COALESCE(%(category)s, c.category), COALESCE(%(description)s, c.description),
   EXCLUDED.is_secret, EXCLUDED.is_public)
RETURNING version"""


_LOOKS_JSON = re.compile(r"^\s*([\[{\"]|-?\d)")


def parse_value(text: str, *, as_string: bool = False) -> Any:
    """A value from the command line: JSON, or a plain word stored as a JSON string.

    Text that starts like JSON (a brace, bracket, quote or number) must be valid
    JSON, so that a typo is refused rather than stored as a string;
    ``as_string`` stores the text as it is.
    """
    if "\x00" in text:
        raise ConfigError("a value cannot contain the NUL character")
    if as_string:
        return text

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        value = json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        if _LOOKS_JSON.match(text):
            raise ConfigError(
                f"not valid JSON ({exc}); fix it, or pass --string to store the text as it is"
            ) from None
        return text
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{text.strip()} is out of range for a JSON number; quote it or pass --string")
    return value


def _vault_error(target: Target, exc: Exception) -> OpheliaError:
    state = sqlstate_of(exc)
    if state is None:
        raise exc
    if state == "42P01":
        return ConfigError(
            f"{target.name}: instance_config does not exist; "
            f"run `ophelia-db upgrade --instance {target.name}` first"
        )
    return ConfigError(f"{target.name}: {describe_error(exc)}")


def _entries(conn: Connection, key: str | None, reveal: bool) -> tuple[ConfigEntry, ...]:
    rows = conn.execute(_SELECT, {"key": key, "reveal": reveal}).fetchall()
    return tuple(
        ConfigEntry(key, value, category, description, secret, public, version, updated, reveal, digest)
        for key, value, category, description, secret, public, version, updated, digest in rows
    )


def find_entry(target: Target, key: str, *, reveal: bool = False) -> ConfigEntry | None:
    """One vault row, or None when the key is not set."""
    with connect(target, autocommit=True) as conn:
        try:
            found = _entries(conn, check_key(key), reveal)
        except OpheliaError:
            raise
        except Exception as exc:
            raise _vault_error(target, exc) from None
    return found[0] if found else None


def get_entry(target: Target, key: str, *, reveal: bool = False) -> ConfigEntry:
    """One vault row; refuse a key that is not set."""
    found = find_entry(target, key, reveal=reveal)
    if found is None:
        raise ConfigError(f"{target.name}: {key} is not set (see `ophelia-db config list -i {target.name}`)")
    return found


def set_entry(
    target: Target,
    key: str,
    value: Any,
    *,
    secret: bool | None = None,
    public: bool | None = None,
    category: str | None = None,
    description: str | None = None,
) -> SetResult:
    """Create or change a key; ``None`` flags keep the row's current ones (new rows: not secret, private).

    A secret is never public: ``secret=True`` makes the row private, and asking
    for both is refused.
    """
    check_key(key)
    if secret and public:
        raise ConfigError(f"{key}: a secret is never public; choose --secret or --public")
    encoded = json.dumps(value, ensure_ascii=False)
    with connect(target) as conn:
        try:
            row, is_secret, is_public, changed, version = _upsert(
                conn, key, value, encoded, secret, public, category, description
            )
            conn.commit()
        except OpheliaError:
            raise
        except Exception as exc:
            raise _vault_error(target, exc) from None
    warning = None
    if row is not None and row[0] and not is_secret:
        warning = (
            f"{key} was secret and is now stored in clear, readable by authenticated (and by anon if "
            "public); its earlier secret value was cleared from previous_value"
        )
    elif not is_secret and _LOOKS_SECRET.search(key):
        warning = f"{key} looks like a secret but is stored in clear; use --secret if it is one"
    return SetResult(
        instance=target.name,
        key=key,
        created=row is None,
        changed=changed,
        version=version,
        is_secret=is_secret,
        is_public=is_public,
        warning=warning,
    )


def _upsert(
    conn: Connection,
    key: str,
    value: Any,
    encoded: str,
    secret: bool | None,
    public: bool | None,
    category: str | None,
    description: str | None,
) -> tuple[Any, bool, bool, bool, int]:
    """Write the row under a row lock: (the row before, secret, public, changed, version)."""
    row = conn.execute(
        "SELECT is_secret, is_public FROM public.instance_config WHERE key = %s FOR UPDATE", (key,)
    ).fetchone()
    was_secret, was_public = row if row else (False, False)
    is_secret = was_secret if secret is None else secret
    is_public = was_public if public is None else public
    if is_secret and public:
        raise ConfigError(f"{key} is secret and a secret is never public; add --no-secret first")
    if is_secret:
        is_public = False
        register_secret(value if isinstance(value, str) else encoded)
    params = {
        "key": key,
        "value": encoded,
        "category": category,
        "description": description,
        "secret": is_secret,
        "public": is_public,
    }
    changed = conn.execute(_UPSERT, params).fetchone()
    if was_secret and not is_secret:
        _forget_secret_history(conn, key)
    if changed is not None:
        return row, is_secret, is_public, True, changed[0]
    current = conn.execute("SELECT version FROM public.instance_config WHERE key = %s", (key,)).fetchone()
    return row, is_secret, is_public, False, current[0] if current else 0


def _forget_secret_history(conn: Connection, key: str) -> None:
    """Clear ``previous_value`` of a key that stops being secret: a secret never becomes readable.

    The vault's trigger keeps ``previous_value`` on every update, so it is set
    aside for this one statement, in this transaction.
    """
    conn.execute("ALTER TABLE public.instance_config DISABLE TRIGGER instance_config_touch")
    conn.execute("UPDATE public.instance_config SET previous_value = NULL WHERE key = %s", (key,))
    conn.execute("ALTER TABLE public.instance_config ENABLE TRIGGER instance_config_touch")


def unset_entry(target: Target, key: str) -> bool:
    """Delete a key; return whether it existed."""
    check_key(key)
    with connect(target, autocommit=True) as conn:
        try:
            cursor = conn.execute("DELETE FROM public.instance_config WHERE key = %s", (key,))
        except Exception as exc:
            raise _vault_error(target, exc) from None
        return cursor.rowcount > 0


def read_fleet(
    targets: Sequence[Target], key: str | None = None, *, reveal: bool = False
) -> list[InstanceConfig]:
    """Read one key (or the whole vault) on every target at once; failures come back as values."""
    if key is not None:
        check_key(key)

    def read(target: Target) -> InstanceConfig:
        try:
            with connect(target, autocommit=True) as conn:
                try:
                    return InstanceConfig(target.name, _entries(conn, key, reveal))
                except Exception as exc:
                    raise _vault_error(target, exc) from None
        except OpheliaError as error:
            return InstanceConfig(target.name, error=error.message, exit_code=error.exit_code)

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
        return list(pool.map(read, targets))
