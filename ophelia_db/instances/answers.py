"""`provision`'s answers: one model for every answer, wherever it comes from.

This module owns the one pydantic model every provisioning answer goes
through (``Answers``; its JSON schema is ``instances/instance-schema.json``),
where answers come from (``gather``: the prompts, an answers file with flags
over it, or flags alone), the subdomain proposed from a community name,
reading ``instances/<subdomain>.json`` (never a secret) and resolving the
secret answers from the prompt or the environment. The files are written by
``files``, the live path is ``apply``. It never prints, prompts or exits.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_args

from dotenv import set_key
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from ophelia_db.errors import ConfigError
from ophelia_db.fleet.config import CommunityType
from ophelia_db.instances import seed
from ophelia_db.redaction import register_secret

SECRET_FIELDS = frozenset({"supabase_anon_key", "api_keys"})
SCHEMA_FILE = "instance-schema.json"


def _matching(pattern: str, what: str, *, upper: bool = False, echo: bool = True) -> Any:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        value = value.strip().upper() if upper else value.strip()
        if not compiled.match(value):
            # A URL may carry credentials: it is never repeated in the message.
            raise ValueError(f"{value!r} is not {what}" if echo else f"not {what}")
        return value

    return AfterValidator(check)


def _one_line(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("cannot be empty")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise ValueError("must be one line, without control characters")
    return value


def _no_trailing_slash(value: str) -> str:
    return value.rstrip("/")


def _coordinates(value: Any) -> Any:
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,;\s]+", value.strip()) if p]
        if len(parts) != 2:
            raise ValueError("give the map centre as 'latitude, longitude', e.g. '42.3061, 9.1500'")
        return parts
    return value


# https only: the app sends the anon key to this URL.
_URL = r"^https://[A-Za-z0-9.-]+(:\d{1,5})?(/[^\s@]*)?$"
_EMAIL = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
# A DNS label: no leading or trailing '-', no '--' (reserved for punycode).
_SUBDOMAIN = r"^(?!.*--)[a-z0-9](?:[a-z0-9-]{0,18}[a-z0-9])?$"
_ENV = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
Line = Annotated[str, Field(min_length=1, max_length=120), AfterValidator(_one_line)]
Subdomain = Annotated[
    str,
    _matching(_SUBDOMAIN, "a subdomain (lowercase letters, digits and inner '-', at most 20)"),
    WithJsonSchema({"type": "string", "pattern": _SUBDOMAIN}),
]
Code = Annotated[
    str,
    _matching(r"^[0-9A-Z]{1,20}$", "an official code (letters and digits)", upper=True),
    WithJsonSchema({"type": "string", "pattern": "^[0-9A-Za-z]{1,20}$"}),
]
RegionCode = Annotated[
    str,
    _matching(r"^[0-9A-Z]{1,10}$", "a region code (letters and digits)", upper=True),
    WithJsonSchema({"type": "string", "pattern": "^[0-9A-Za-z]{1,10}$"}),
]
Email = Annotated[
    str,
    Field(max_length=254),
    _matching(_EMAIL, "an email address"),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254}),
]
EnvName = Annotated[
    str,
    _matching(_ENV, "an environment variable name"),
    WithJsonSchema({"type": "string", "pattern": _ENV}),
]
HttpUrl = Annotated[
    str,
    _matching(_URL, "an https URL without credentials, e.g. https://abcd.supabase.co", echo=False),
    AfterValidator(_no_trailing_slash),
    WithJsonSchema({"type": "string", "pattern": _URL}),
]
VaultKey = Annotated[str, _matching(seed.KEY_PATTERN, "an UPPER_SNAKE_CASE vault key")]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
MapCenter = Annotated[tuple[Latitude, Longitude], BeforeValidator(_coordinates)]
# A department (01-95 but 20, 2A/2B, or 971-976) then a commune number from 001.
_INSEE = re.compile(r"^(?:(?:0[1-9]|1\d|[3-8]\d|9[0-5])\d|2[AB]\d|97[1-6])(?!00$)\d{2}$")
_UAI = re.compile(r"^\d{7}[A-Z]$")


class Answers(BaseModel):
    """The answers of provisioning, as instances/<subdomain>.json holds them (never a secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Ophélia instance")

    community_type: CommunityType = Field(
        description="municipality, intercommunality, university, association or region."
    )
    community_name: Line = Field(
        description="The community's name as people write it, e.g. \"L'Île-Rousse\"."
    )
    city: Line = Field(description="The city the community is in (its seat).")
    subdomain: Subdomain = Field(
        description="Name of the instance in fleet.toml and the hub; proposed from community_name if absent."
    )
    code: Code | None = Field(
        None,
        description="Official code: INSEE for a municipality (e.g. 2B096), UAI for a university (e.g. "
        "0200860D), any code of letters and digits otherwise.",
    )
    region_code: RegionCode = Field("COR", description="Region code.")
    region_name: Line = Field("Corse", description="Region name.")
    contact_email: Email = Field(description="Contact of the community's administrators (not public).")
    map_center: MapCenter = Field(description="Map centre as [latitude, longitude].")
    database_url_env: EnvName = Field(
        description="Name of the environment variable holding the instance's database URL (never the URL)."
    )
    supabase_url: HttpUrl | None = Field(None, description="Supabase project URL (Settings > API).")
    supabase_anon_key_env: EnvName | None = Field(
        None, description="Name of the environment variable holding the project's anon key."
    )
    api_key_envs: dict[VaultKey, EnvName] = Field(
        default_factory=dict,
        description="Optional API keys stored as vault secrets: vault key -> environment variable name.",
    )
    # Typed in at the prompt; never serialised, so never written to a file.
    supabase_anon_key: SecretStr | None = Field(None, exclude=True)
    api_keys: dict[VaultKey, SecretStr] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _propose_subdomain(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and not data.get("subdomain")
            and isinstance(data.get("community_name"), str)
        ):
            proposal = propose_subdomain(data["community_name"])
            if proposal:
                data = {**data, "subdomain": proposal}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Answers:
        if self.code:
            check_code(self.community_type, self.code)
        clash = sorted((set(self.api_key_envs) | set(self.api_keys)) & seed.SEED_KEYS)
        if clash:
            raise ValueError(f"api keys {', '.join(clash)} would overwrite seeded vault keys")
        return self

    @property
    def api_key_names(self) -> list[str]:
        return sorted(set(self.api_keys) | set(self.api_key_envs))


def check_code(community_type: str, code: str) -> str:
    """A municipality's code is an INSEE commune code, a university's a UAI; others are free."""
    if community_type == "municipality" and not _INSEE.match(code):
        raise ValueError(f"code: {code!r} is not an INSEE commune code (5 characters, e.g. 2B096)")
    if community_type == "university" and not _UAI.match(code):
        raise ValueError(f"code: {code!r} is not a UAI code (7 digits and a letter, e.g. 0200860D)")
    return code


_LIGATURES = str.maketrans({"œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ß": "ss"})


def propose_subdomain(name: str) -> str:
    """``"L'Île-Rousse"`` → ``"l-ile-rousse"``: lowercase, accents removed, ``[a-z0-9-]``, ≤ 20."""
    text = unicodedata.normalize("NFKD", name.translate(_LIGATURES))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:20].rstrip("-")


def default_url_env(subdomain: str) -> str:
    return f"OPHELIA_{subdomain.upper().replace('-', '_')}_URL"


def _describe(exc: ValidationError, where: str = "") -> str:
    """Every problem of the answers, in one line: an operator fixes them all in one go."""
    prefix = f"{where}: " if where else ""
    return prefix + "; ".join(_problem(error) for error in exc.errors())


# Where pydantic says "map_center.0", the operator reads "latitude".
_COORDINATES = {"map_center.0": "map_center latitude", "map_center.1": "map_center longitude"}


def _problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    location = _COORDINATES.get(location, location)
    if error["type"] in ("less_than_equal", "greater_than_equal", "finite_number"):
        # A number out of bounds (the map centre) is never a secret: say which number.
        message = str(error["msg"]).replace("Input should be", f"{error['input']} should be")
    elif error["type"] == "missing":
        message = "missing"
    elif error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(location, [*Answers.model_fields], n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see instances/instance-schema.json"
        message = f"not an answer of provisioning; {hint}"
    elif error["type"] == "literal_error":
        # Only community_type is a choice; its value is never a secret, so it may be echoed.
        choices = ", ".join(str(choice) for choice in get_args(CommunityType))
        message = f"{error['input']!r} is not one of {choices}"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def check_answer(name: str, value: Any) -> Any:
    """Validate one answer alone (for prompts), with the model's own rules for that field."""
    info = Answers.model_fields[name]
    annotated: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(annotated)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def build_answers(data: Mapping[str, Any], where: str = "") -> Answers:
    """Validate a whole set of answers; any problem is one ``ConfigError`` line."""
    try:
        return Answers.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from None


def load_answers(path: Path, overrides: Mapping[str, Any] | None = None) -> Answers:
    """Read ``instances/<name>.json``; ``overrides`` (flags) win over the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of answers")
    leaked = sorted(SECRET_FIELDS & data.keys())
    if leaked:
        raise ConfigError(
            f"{path}: {', '.join(leaked)} would put a secret in a file; name an environment variable "
            "instead (supabase_anon_key_env, api_key_envs)"
        )
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return build_answers(data, str(path))


def answers_json(answers: Answers) -> str:
    return json.dumps(answers.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def instance_schema() -> dict[str, Any]:
    """The JSON schema of ``instances/<name>.json``, generated from ``Answers``."""
    schema = Answers.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            "Generated from ophelia_db.instances.answers.Answers by `ophelia-db provision`; do not edit."
        ),
        **schema,
    }


def schema_text() -> str:
    return json.dumps(instance_schema(), indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Secrets:
    """Secret answers resolved from the prompt or the environment; ``unset`` names missing variables."""

    anon_key: str | None
    api_keys: Mapping[str, str]
    unset: tuple[str, ...] = ()


def resolve_secrets(answers: Answers, env: Mapping[str, str]) -> Secrets:
    unset: list[str] = []
    anon = answers.supabase_anon_key.get_secret_value() if answers.supabase_anon_key else None
    if anon is None and answers.supabase_anon_key_env:
        anon = env.get(answers.supabase_anon_key_env) or None
        if anon is None:
            unset.append(answers.supabase_anon_key_env)
    keys = {key: value.get_secret_value() for key, value in answers.api_keys.items()}
    for key, variable in answers.api_key_envs.items():
        if key not in keys:
            if env.get(variable):
                keys[key] = env[variable]
            else:
                unset.append(variable)
    for value in (anon, *keys.values()):
        register_secret(value)
    return Secrets(anon, keys, tuple(unset))


Ask = Callable[[dict[str, Any]], "Answers"]


def gather(from_: Path | None, flags: Mapping[str, Any], ask: Ask | None = None) -> Answers:
    """The answers: asked (the file's, then the flags', as defaults), else the file with the
    flags over it, else the flags alone."""
    given = {key: value for key, value in flags.items() if value is not None}
    if ask is not None:
        defaults = load_answers(from_).model_dump() if from_ is not None else {}
        return ask({**defaults, **given})
    if from_ is not None:
        return load_answers(from_, flags)
    if not given:
        raise ConfigError(
            "nothing to provision: pass --from instances/<name>.json or the answers as flags "
            "(see --help), or run it on a terminal to be asked"
        )
    return build_answers(given)


def keep_typed_secrets(answers: Answers, env_file: Path) -> tuple[Answers, tuple[str, ...]]:
    """Secrets typed at the prompts go to ``env_file`` (mode 0600) and the answers name them.

    So that ``provision --from instances/<name>.json --apply`` later finds them
    instead of losing them: the answers file itself never holds a secret.
    """
    prefix = default_url_env(answers.subdomain).removesuffix("_URL")
    typed: dict[str, str] = {}
    anon_env = answers.supabase_anon_key_env
    if answers.supabase_anon_key is not None:
        anon_env = f"{prefix}_ANON_KEY"
        typed[anon_env] = answers.supabase_anon_key.get_secret_value()
    key_envs = dict(answers.api_key_envs)
    for key, secret in answers.api_keys.items():
        key_envs[key] = f"{prefix}_{key}"
        typed[key_envs[key]] = secret.get_secret_value()
    if not typed:
        return answers, ()
    env_file.touch(mode=0o600, exist_ok=True)
    env_file.chmod(0o600)
    for name, value in typed.items():
        set_key(str(env_file), name, value, quote_mode="always")
    kept = answers.model_copy(
        update={
            "supabase_anon_key": None,
            "api_keys": {},
            "supabase_anon_key_env": anon_env,
            "api_key_envs": key_envs,
        }
    )
    return kept, tuple(typed)
