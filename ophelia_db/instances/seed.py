"""What provisioning seeds into an instance's vault: identity, branding, map, wording, API keys.

The seed rows are derived from the provisioning answers (docs/design.md §6):
identity and map keys follow the answers on every run, branding and wording
are defaults written once so that an operator's later ``config set`` wins,
and API keys are secrets. ``APP_PUBLIC_KEYS`` are the keys the app reads
through ``anon`` before login.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import CommunityType
from ophelia_db.redaction import register_secret


class SeedAnswers(Protocol):
    """The provisioning answers the seed reads (``answers.Answers`` has them)."""

    community_type: CommunityType
    community_name: str
    city: str
    subdomain: str
    code: str | None
    region_code: str
    region_name: str
    contact_email: str
    map_center: tuple[float, float]
    supabase_url: str | None


KEY_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"
_KEY = re.compile(KEY_PATTERN)
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


def seed_rows(answers: SeedAnswers, api_keys: Mapping[str, str] | None = None) -> list[SeedRow]:
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


def check_key(key: str) -> str:
    """Refuse a key that is not UPPER_SNAKE_CASE (at most 64 characters)."""
    if not _KEY.match(key):
        raise ConfigError(f"invalid key {key!r}: use UPPER_SNAKE_CASE, e.g. MAP_ZOOM (at most 64 characters)")
    return key
