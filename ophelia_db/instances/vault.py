"""The instance vault: ``instance_config`` rows, the keys provisioning seeds, and ``config`` commands.

This module owns what goes into an instance's vault (DESIGN §6): the seed
rows written from the provisioning answers (identity, branding, map, the
per-community-type wording, API keys as secrets), and reading and changing
keys on a live instance for ``ophelia-db config list|get|set|unset``. Values
are JSON; a plain string is stored as a JSON string. An unrevealed secret
value never leaves the database (the query masks it), and a secret being
written is registered for redaction first, so no error can show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from ophelia_db.errors import ConfigError, ExitCode, OpheliaError
from ophelia_db.fleet.connections import Connection, connect, describe_error
from ophelia_db.redaction import MASK, register_secret
from ophelia_db.results import Record

if TYPE_CHECKING:
    from ophelia_db.fleet.config import Target
    from ophelia_db.instances.answers import Answers

KEY_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"
_KEY = re.compile(KEY_PATTERN)
_LOOKS_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)")
BOT_NAME = "Ophélia"

# How each kind of community names its bodies and acts; the app words its answers with these.
WORDING: dict[str, dict[str, str]] = {
    "municipality": {
        "GOVERNING_BODY": "conseil municipal",
        "DECISION_TERM": "délibération",
        "MEMBERS_TERM": "conseillers municipaux",
        "LEADER_TITLE": "maire",
        "AUDIENCE_TERM": "habitants",
    },
    "intercommunality": {
        "GOVERNING_BODY": "conseil communautaire",
        "DECISION_TERM": "délibération",
        "MEMBERS_TERM": "conseillers communautaires",
        "LEADER_TITLE": "président",
        "AUDIENCE_TERM": "habitants",
    },
    "university": {
        "GOVERNING_BODY": "conseil d'administration",
        "DECISION_TERM": "délibération",
        "MEMBERS_TERM": "administrateurs",
        "LEADER_TITLE": "président",
        "AUDIENCE_TERM": "étudiants et personnels",
    },
    "association": {
        "GOVERNING_BODY": "assemblée générale",
        "DECISION_TERM": "résolution",
        "MEMBERS_TERM": "membres du bureau",
        "LEADER_TITLE": "président",
        "AUDIENCE_TERM": "adhérents",
    },
    "region": {
        "GOVERNING_BODY": "assemblée régionale",
        "DECISION_TERM": "délibération",
        "MEMBERS_TERM": "conseillers régionaux",
        "LEADER_TITLE": "président",
        "AUDIENCE_TERM": "habitants",
    },
}
MAP_ZOOM = {"municipality": 14, "intercommunality": 11, "university": 16, "association": 13, "region": 8}
# The keys the Ophelia app reads through the anon key before anyone logs in (doctor checks them).
APP_PUBLIC_KEYS = ("COMMUNITY_NAME", "COMMUNITY_TYPE", "SUBDOMAIN", "BOT_NAME", "MAP_CENTER")
SEED_KEYS = frozenset(
    {
        "COMMUNITY_NAME", "COMMUNITY_TYPE", "CITY", "SUBDOMAIN", "COMMUNITY_CODE", "REGION_CODE",
        "REGION_NAME", "CONTACT_EMAIL", "BOT_NAME", "WELCOME_MESSAGE", "MAP_CENTER", "MAP_ZOOM",
        "SUPABASE_URL", *WORDING["municipality"],
    }
)  # fmt: skip


@dataclass(frozen=True)
class SeedRow:
    """One vault row written by provisioning.

    ``overwrite`` rows follow the answers on every run; the others are
    defaults written once, so that an operator's later ``config set`` wins.
    """

    key: str
    value: Any
    category: str
    description: str
    is_public: bool = False
    is_secret: bool = False
    overwrite: bool = True


def seed_rows(answers: Answers, api_keys: Mapping[str, str] | None = None) -> list[SeedRow]:
    """The vault rows for an instance: identity, branding, map, wording, then API keys (secret)."""
    kind = answers.community_type
    rows = [
        SeedRow("COMMUNITY_NAME", answers.community_name, "identity", "Community name", True),
        SeedRow("COMMUNITY_TYPE", kind, "identity", "Community type", True),
        SeedRow("CITY", answers.city, "identity", "City", True),
        SeedRow("SUBDOMAIN", answers.subdomain, "identity", "Instance subdomain", True),
    ]
    if answers.code:
        rows.append(SeedRow("COMMUNITY_CODE", answers.code, "identity", "INSEE/UAI code", True))
    rows += [
        SeedRow("REGION_CODE", answers.region_code, "identity", "Region code", True),
        SeedRow("REGION_NAME", answers.region_name, "identity", "Region name", True),
        SeedRow("CONTACT_EMAIL", answers.contact_email, "identity", "Contact email (not public)"),
        SeedRow("BOT_NAME", BOT_NAME, "branding", "Assistant name", True, overwrite=False),
        SeedRow(
            "WELCOME_MESSAGE",
            f"Bonjour, je suis {BOT_NAME}, l'assistante de {answers.community_name}.",
            "branding",
            "First message of the assistant",
            True,
            overwrite=False,
        ),
        SeedRow("MAP_CENTER", list(answers.map_center), "map", "Map centre [lat, lon]", True),
        SeedRow("MAP_ZOOM", MAP_ZOOM[kind], "map", "Initial map zoom", True, overwrite=False),
    ]
    if answers.supabase_url:
        rows.append(SeedRow("SUPABASE_URL", answers.supabase_url, "supabase", "Supabase project URL", True))
    for key, text in WORDING[kind].items():
        rows.append(SeedRow(key, text, "wording", f"Wording for a {kind}", True, overwrite=False))
    for key, secret in sorted((api_keys or {}).items()):
        register_secret(secret)
        rows.append(SeedRow(key, secret, "api", "API key", is_secret=True))
    return rows


# --- the vault of a live instance --------------------------------------------------------------


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


_SELECT = """SELECT key, CASE WHEN is_secret AND NOT %(reveal)s THEN NULL ELSE value END,
  category, description, is_secret, is_public, version, updated_at
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


def check_key(key: str) -> str:
    """Refuse a key that is not UPPER_SNAKE_CASE (at most 64 characters)."""
    if not _KEY.match(key):
        raise ConfigError(f"invalid key {key!r}: use UPPER_SNAKE_CASE, e.g. MAP_ZOOM (at most 64 characters)")
    return key


def parse_value(text: str) -> Any:
    """A value from the command line: JSON if it parses as JSON, else the plain string."""
    if "\x00" in text:
        raise ConfigError("a value cannot contain the NUL character")

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def _vault_error(target: Target, exc: Exception) -> OpheliaError:
    state = getattr(exc, "sqlstate", None)
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
        ConfigEntry(key, value, category, description, secret, public, version, updated, reveal)
        for key, value, category, description, secret, public, version, updated in rows
    )


def list_entries(target: Target, *, reveal: bool = False) -> tuple[ConfigEntry, ...]:
    """Every vault row of ``target``, secrets masked unless ``reveal``."""
    with connect(target, autocommit=True) as conn:
        try:
            return _entries(conn, None, reveal)
        except Exception as exc:
            raise _vault_error(target, exc) from None


def get_entry(target: Target, key: str, *, reveal: bool = False) -> ConfigEntry:
    """One vault row; refuse a key that is not set."""
    with connect(target, autocommit=True) as conn:
        try:
            found = _entries(conn, check_key(key), reveal)
        except OpheliaError:
            raise
        except Exception as exc:
            raise _vault_error(target, exc) from None
    if not found:
        raise ConfigError(f"{target.name}: {key} is not set (see `ophelia-db config list -i {target.name}`)")
    return found[0]


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
            if changed is None:
                changed_row = None
                current = conn.execute(
                    "SELECT version FROM public.instance_config WHERE key = %s", (key,)
                ).fetchone()
                version = current[0] if current else 0
            else:
                changed_row, version = changed, changed[0]
            conn.commit()
        except OpheliaError:
            raise
        except Exception as exc:
            raise _vault_error(target, exc) from None
    warning = None
    if not is_secret and _LOOKS_SECRET.search(key):
        warning = f"{key} looks like a secret but is stored in clear; use --secret if it is one"
    return SetResult(
        instance=target.name,
        key=key,
        created=row is None,
        changed=changed_row is not None,
        version=version,
        is_secret=is_secret,
        is_public=is_public,
        warning=warning,
    )


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
