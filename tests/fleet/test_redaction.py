"""redact(): URL passwords, password params, JWTs and registered secrets are masked. No database."""

from __future__ import annotations

import uuid

import pytest

from ophelia_db.errors import ConfigError, OpheliaError, UnreachableError
from ophelia_db.redaction import MASK, redact, register_secret

PW = "Hunter22-redact"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ"
    ".dc_X5xWJ-9sFZyJ4zvWBqkM0Eu9tJ8x1wK2Rr0n3o4Q"
)


def unique(prefix: str) -> str:
    """A secret no other test has registered (the registry is process-wide)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def test_mask() -> None:
    assert MASK == "***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"could not connect to postgresql://ophelia:{PW}@db.internal:5432/corte: timeout",
            "could not connect to postgresql://ophelia:***@db.internal:5432/corte: timeout",
        ),
        (f"postgres://ophelia:{PW}@db.internal/corte", "postgres://ophelia:***@db.internal/corte"),
        (f"postgresql+psycopg://ophelia:{PW}@h/corte", "postgresql+psycopg://ophelia:***@h/corte"),
        (f"postgresql://ophelia:{PW}@h", "postgresql://ophelia:***@h"),
        (f"postgresql://ophelia:{PW}@/corte?host=/tmp", "postgresql://ophelia:***@/corte?host=/tmp"),
        (f"postgresql://ophelia:{PW}@[::1]:5432/corte", "postgresql://ophelia:***@[::1]:5432/corte"),
        (
            f"postgresql://ophelia:{PW}@h1:5432,h2:5433/corte",
            "postgresql://ophelia:***@h1:5432,h2:5433/corte",
        ),
        ("postgresql://ophelia:p%40ss%2Fw%3F0rd@h:5432/corte", "postgresql://ophelia:***@h:5432/corte"),
        ("postgresql://ophelia:p@ss:w#?&rd@h:5432/corte", "postgresql://ophelia:***@h:5432/corte"),
        (
            f"a postgresql://a:{PW}@h1/x and postgresql://b:{PW}x@h2/y",
            "a postgresql://a:***@h1/x and postgresql://b:***@h2/y",
        ),
    ],
)
def test_url_passwords_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"host=h dbname=corte password={PW} user=u", "host=h dbname=corte password=*** user=u"),
        (f"host=h password='{PW} with spaces' dbname=d", "host=h password=*** dbname=d"),
        (f'password="{PW}"', "password=***"),
        (
            f"postgresql://u@h/d?sslmode=require&password={PW}&x=1",
            "postgresql://u@h/d?sslmode=require&password=***&x=1",
        ),
        (f"PASSWORD = {PW}", "PASSWORD = ***"),
        (f"sslpassword={PW}", "sslpassword=***"),
        (f"apikey={PW}; next", "apikey=***; next"),
        (f"service_role_key: {PW}", "service_role_key: ***"),
    ],
)
def test_password_params_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_jwt_looking_tokens_are_masked() -> None:
    assert redact(f"anon key {JWT} stored") == "anon key *** stored"
    assert redact(f"Authorization: Bearer {JWT}") == "Authorization: Bearer ***"
    assert JWT not in redact(f'{{"key": "{JWT}"}}')


@pytest.mark.parametrize(
    "secret",
    ["p@:/#%?&w0rd", "a@b:c/d#e%f?g&h", "only%percent"],
)
def test_registered_secret_with_special_characters(secret: str) -> None:
    secret = unique(secret)
    register_secret(secret)
    assert redact(f"postgresql://ophelia:{secret}@db.internal:5432/corte") == (
        "postgresql://ophelia:***@db.internal:5432/corte"
    )
    assert redact(f"the server echoed {secret} back") == "the server echoed *** back"
    assert redact(f"{secret}{secret}") == "******"


def test_registered_percent_encoded_secret_masks_its_decoded_form_too() -> None:
    encoded = unique("p%40ss%2Fw0rd%23")
    decoded = encoded.replace("%40", "@").replace("%2F", "/").replace("%23", "#")
    register_secret(encoded)
    assert redact(f"raw {encoded} end") == "raw *** end"
    assert redact(f"decoded {decoded} end") == "decoded *** end"


def test_registered_whole_url_is_masked_anywhere() -> None:
    url = f"postgresql://ophelia:{unique('w')}@db.internal:5432/corte"
    register_secret(url)
    assert redact(f"dsn={url};") == "dsn=***;"
    assert redact(url.upper()) != url.upper()  # not registered, but still a URL with a password


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    register_secret("")
    register_secret(None)
    assert redact("about abstract labs") == "about abstract labs"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "instance corte is at 0003, 2 pending (0004, 0105)",
        'password authentication failed for user "ophelia"',
        "connection to server at 127.0.0.1:5432 failed: Connection refused",
        "postgresql://ophelia@db.internal:5432/corte?sslmode=require",
        "postgresql:///corte?host=/var/run/postgresql",
        "see https://supabase.com/docs:8080/path and mail admin@example.com",
        "meeting at 10:30, ratio 3:4, lock_timeout=5s statement_timeout=15min",
        "holds a password; secrets never live in fleet.toml: put the URL in url_env",
        "eyJ is not a token on its own",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_opheliaerror_stores_the_redacted_message() -> None:
    error = OpheliaError(
        f"cannot reach postgresql://ophelia:{PW}@db.internal:5432/corte, password={PW}, retrying"
    )
    expected = "cannot reach postgresql://ophelia:***@db.internal:5432/corte, password=***, retrying"
    assert error.message == expected
    assert str(error) == expected
    assert error.args == (expected,)
    assert PW not in repr(error)


def test_subclasses_redact_too() -> None:
    secret = unique("Vault-")
    register_secret(secret)
    for cls in (ConfigError, UnreachableError):
        error = cls(f"bad value {secret} with token {JWT}")
        assert error.message == "bad value *** with token ***"
