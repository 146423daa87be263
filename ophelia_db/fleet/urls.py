"""Connection URLs as users write them, and how they are shown.

This module owns reading a libpq URL (``postgresql://`` with user, password,
host, port and database, ``postgres://``, ``postgresql+psycopg://``, ``?host=/socket`` forms, or a
``key=value`` conninfo string) without connecting: whether it carries a
password, the masked form shown to people, and whether it points at a
transaction-mode pooler, which migrations must never use.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

_SCHEME = re.compile(r"^(postgres|postgresql)(\+[a-z0-9]+)?://", re.IGNORECASE)
# Users paste passwords unescaped: ``user:p/ss?w#rd@host``. The password runs
# up to the '@' that is followed by a host (and port) and then the path,
# query or end, as in redaction's URL pattern.
_HOST = r"(?:\[[^\]\s@/]*\]|[^@\s/:?#,\[\]]*)(?::\d+)?"
_USERINFO = re.compile(
    rf"^(?P<scheme>[^:]+://)(?P<user>[^:/?#@\s]*):(?P<pw>.*?)@(?={_HOST}(?:,{_HOST})*(?:[/?#]|$))",
    re.DOTALL,
)
TRANSACTION_POOLER_PORT = 6543


@dataclass(frozen=True)
class UrlParts:
    user: str | None
    password: str | None
    host: str | None
    port: int | None
    dbname: str | None
    params: dict[str, str]
    # Every host[:port] of a multi-host URL (libpq tries them in order).
    endpoints: tuple[tuple[str | None, int | None], ...] = field(default=())

    def effective_endpoints(self, environ: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
        """Where libpq will connect: each endpoint, PGHOST/PGPORT filling what the URL leaves out."""
        env = os.environ if environ is None else environ
        default_port = int(env["PGPORT"]) if env.get("PGPORT", "").isdigit() else 5432
        found = self.endpoints or ((self.host, self.port),)
        return [(host or env.get("PGHOST") or "localhost", port or default_port) for host, port in found]


def normalise(url: str) -> str:
    """Return a libpq-compatible URL: the tool, not the user, picks the driver, and a password
    pasted raw (``p@ss:/#%?&w``, as Supabase shows it) is percent-encoded for libpq."""
    text = _SCHEME.sub("postgresql://", url.strip(), count=1)
    return _escape_userinfo(text) if _SCHEME.match(text) else text


def parse(url: str) -> UrlParts:
    """Split a URL or conninfo string into its parts (no validation of values)."""
    text = url.strip()
    if not _SCHEME.match(text):
        return _parse_conninfo(text)
    split = urlsplit(_escape_userinfo(normalise(text)))
    params = {key: values[-1] for key, values in parse_qs(split.query).items()}
    try:
        port = split.port
    except ValueError:
        port = None
    host = unquote(split.hostname) if split.hostname else None
    if "host" in params:
        host = params.pop("host")
    if "port" in params and params["port"].isdigit():
        port = int(params.pop("port"))
    password = unquote(split.password) if split.password is not None else params.get("password")
    endpoints = _endpoints(split.netloc.rpartition("@")[2])
    if len(endpoints) > 1:
        host, port = endpoints[0]
    return UrlParts(
        user=unquote(split.username) if split.username else params.get("user"),
        password=password,
        host=host,
        port=port,
        dbname=unquote(split.path.lstrip("/")) or params.get("dbname"),
        params=params,
        endpoints=endpoints if len(endpoints) > 1 else (),
    )


def _endpoints(hosts: str) -> tuple[tuple[str | None, int | None], ...]:
    """``host1:5432,host2:6543`` (a multi-host URL's netloc, userinfo removed) as pairs."""
    found: list[tuple[str | None, int | None]] = []
    for item in hosts.split(","):
        match = re.fullmatch(r"\[?(?P<host>[^\]]*?)\]?(?::(?P<port>\d+))?", item.strip())
        if match:
            port = match.group("port")
            found.append((unquote(match.group("host")) or None, int(port) if port else None))
    return tuple(found)


def _escape_userinfo(url: str) -> str:
    """Percent-encode the characters of a raw password that would end the userinfo.

    A ``%`` that does not start a percent-escape is a character of the password
    as pasted, so it is encoded too; an already encoded password is left alone.
    """
    match = _USERINFO.match(url)
    if not match:
        return url
    password = re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", match.group("pw"))
    for char, code in (("/", "%2F"), ("?", "%3F"), ("#", "%23"), ("@", "%40")):
        password = password.replace(char, code)
    return f"{match.group('scheme')}{match.group('user')}:{password}@{url[match.end() :]}"


def _parse_conninfo(text: str) -> UrlParts:
    pairs: dict[str, str] = {}
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for word in words:
        key, _, value = word.partition("=")
        pairs[key.strip()] = value
    port = pairs.get("port", "")
    return UrlParts(
        user=pairs.get("user"),
        password=pairs.get("password"),
        host=pairs.get("host"),
        port=int(port) if port.isdigit() else None,
        dbname=pairs.get("dbname"),
        params=pairs,
    )


_ANY_USERINFO_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:[^@\s]+@")


def url_has_password(url: str) -> bool:
    """Tell whether the URL carries a password (in userinfo, whatever the scheme, or as a parameter)."""
    if _ANY_USERINFO_PASSWORD.match(url.strip()):
        return True
    try:
        return bool(parse(url).password)
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a PostgreSQL connection string, or ``None`` when it can."""
    text = url.strip()
    if not text:
        return "is empty"
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and not _SCHEME.match(text):
        return f"is a {scheme.group(1)}:// URL; give a postgresql:// URL (or a libpq key=value string)"
    if not scheme and "=" not in text:
        return "is neither a postgresql:// URL nor a libpq key=value string"
    try:
        parse(text)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    return None


def describe_url(url: str) -> str:
    """Show a URL as ``postgresql://user:***@host:port/db``, never with its password."""
    parts = parse(url)
    user = parts.user or ""
    secret = ":***" if parts.password else ""
    userinfo = f"{user}{secret}@" if user or secret else ""
    host = parts.host or "localhost"
    if host.startswith("/"):
        where = f"/{parts.dbname or ''}?host={host}"
        return f"postgresql://{userinfo}{where}"
    endpoints = parts.endpoints or ((parts.host, parts.port),)
    hosts = ",".join(_endpoint(name or "localhost", port) for name, port in endpoints)
    return f"postgresql://{userinfo}{hosts}/{parts.dbname or ''}"


def _endpoint(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host  # IPv6, as libpq writes it
    return f"{shown}:{port}" if port else shown


def transaction_pooler_reason(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Return why this URL is a transaction-mode pooler, or ``None`` if it is not.

    Every host of a multi-host URL counts, and so do PGHOST/PGPORT where the URL
    gives no host or port. A pooler on another port is caught by behaviour
    instead, once connected (``connections.session_lock``).
    """
    for host, port in parse(url).effective_endpoints(environ):
        if port != TRANSACTION_POOLER_PORT:
            continue
        if host.lower().endswith("pooler.supabase.com"):
            return f"{host}:{TRANSACTION_POOLER_PORT} is Supabase's transaction-mode pooler"
        return f"port {TRANSACTION_POOLER_PORT} is the transaction-mode pooler port"
    return None
