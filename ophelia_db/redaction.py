"""Redaction of secrets from any text before it is shown or stored.

This module owns the single ``redact()`` every message, log line, result and
hub row goes through, and the process-wide set of secret values read from
the environment (registered the moment they are loaded). It imports nothing
from ophelia_db so that every other module can use it.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote

_lock = threading.Lock()
_known_secrets: set[str] = set()

# userinfo of a URL: scheme://user:password@host — the password may hold any
# character but '@' is taken as the last one before the host part. The scheme
# starts at a word boundary and is short, so that a long run of letters costs
# linear time, not quadratic.
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^:/?#@\s]*:)(?P<pw>\S*?)@"
    r"(?=(?:\[[^\]\s@/]*\]|[^@\s/:?#\[\]]*)(?::\d+)?(?:[/?\s,]|$))"
)
_PARAM_SECRET = re.compile(
    r"(?P<head>\b(?:password|sslpassword|passfile|access_token|apikey|api_key|token|secret|"
    r"service_role(?:_key)?)\s*[=:]\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\s&;,)]+)",
    re.IGNORECASE,
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is masked wherever it appears."""
    if not value or len(value) < 4:
        # Very short values would mask ordinary words; URL masking still covers them.
        return
    with _lock:
        _known_secrets.add(value)
        decoded = unquote(value)
        if decoded != value:
            _known_secrets.add(decoded)


def redact(text: str) -> str:
    """Return ``text`` with passwords, keys, tokens and known secrets masked."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _PARAM_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)
    return _JWT.sub(MASK, text)
