"""Connection URLs: password detection, the masked display form, transaction poolers. No database."""

from __future__ import annotations

import pytest

from ophelia_db.fleet.urls import (
    describe_url,
    normalise,
    parse,
    transaction_pooler_reason,
    url_has_password,
)

SECRET = "Kx9-url-secret"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://ophelia:{SECRET}@db.internal:5432/corte",
        f"postgres://ophelia:{SECRET}@db.internal/corte",
        f"postgresql+psycopg://ophelia:{SECRET}@db.internal/corte",
        "postgresql://ophelia:p%40ss%2Fw0rd@db.internal:5432/corte",
        "postgresql://ophelia:p@ss:w?rd#x/y@db.internal:5432/corte",  # unescaped, as people paste them
        f"postgresql://ophelia:{SECRET}@/corte?host=/var/run/postgresql",
        f"postgresql://ophelia:{SECRET}@[::1]:5432/corte",
        f"postgresql://ophelia@db.internal:5432/corte?sslmode=require&password={SECRET}",
        f"postgresql:///corte?host=/tmp&password={SECRET}",
        f"host=db.internal port=5432 dbname=corte user=ophelia password={SECRET}",
        f"host=db.internal dbname=corte password='{SECRET} with spaces'",
    ],
)
def test_url_has_password(url: str) -> None:
    assert url_has_password(url) is True


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ophelia@db.internal:5432/corte",
        "postgresql://db.internal/corte",
        "postgresql:///corte?host=/var/run/postgresql",
        "postgresql://ophelia@/corte?host=/tmp",
        "postgresql://ophelia:@db.internal/corte",  # empty password
        "postgresql://ophelia@db.internal/corte?application_name=a@b&sslmode=require",
        "host=db.internal dbname=corte user=ophelia",
    ],
)
def test_url_without_password(url: str) -> None:
    assert url_has_password(url) is False


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://ophelia:{SECRET}@db.internal:5432/corte",
            "postgresql://ophelia:***@db.internal:5432/corte",
        ),
        (
            f"postgresql://ophelia:{SECRET}@db.internal:5432/corte?sslmode=require",
            "postgresql://ophelia:***@db.internal:5432/corte",
        ),
        (
            f"postgres://ophelia:{SECRET}@db.internal:5432/corte",
            "postgresql://ophelia:***@db.internal:5432/corte",
        ),
        (
            f"postgresql+psycopg://ophelia:{SECRET}@db.internal:5432/corte",
            "postgresql://ophelia:***@db.internal:5432/corte",
        ),
        (
            "postgresql://ophelia:p@ss:w?rd#x/y@db.internal:5432/corte",
            "postgresql://ophelia:***@db.internal:5432/corte",
        ),
        ("postgresql://ophelia:p%40ss@db.internal/corte", "postgresql://ophelia:***@db.internal/corte"),
        (
            f"postgresql://ophelia@db.internal:5432/corte?password={SECRET}",
            "postgresql://ophelia:***@db.internal:5432/corte",
        ),
        (f"postgresql://ophelia:{SECRET}@/corte?host=/tmp", "postgresql://ophelia:***@/corte?host=/tmp"),
        ("postgresql:///corte?host=/var/run/postgresql", "postgresql:///corte?host=/var/run/postgresql"),
        ("postgresql://ophelia@/corte?host=/tmp", "postgresql://ophelia@/corte?host=/tmp"),
        ("postgresql://ophelia@db.internal:5432/corte", "postgresql://ophelia@db.internal:5432/corte"),
        ("postgresql://db.internal/corte", "postgresql://db.internal/corte"),
        (f"postgresql://ophelia:{SECRET}@[::1]:5432/corte", "postgresql://ophelia:***@[::1]:5432/corte"),
        (
            f"host=db.internal port=5433 dbname=corte user=ophelia password={SECRET}",
            "postgresql://ophelia:***@db.internal:5433/corte",
        ),
    ],
)
def test_describe_url(url: str, shown: str) -> None:
    assert describe_url(url) == shown
    for fragment in (SECRET, "p@ss", "w?rd", "p%40ss"):
        assert fragment not in shown


@pytest.mark.parametrize(
    ("url", "scheme_free"),
    [
        ("postgres://u@h/d", "postgresql://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql://u@h/d"),
        ("POSTGRESQL+psycopg2://u@h/d", "postgresql://u@h/d"),
        ("  postgresql://u@h/d\n", "postgresql://u@h/d"),
    ],
)
def test_normalise_lets_the_tool_pick_the_driver(url: str, scheme_free: str) -> None:
    assert normalise(url) == scheme_free


def test_parse_socket_forms() -> None:
    bare = parse("postgresql:///ophelia_corte?host=/var/run/postgresql")
    assert (bare.user, bare.password, bare.host, bare.port, bare.dbname) == (
        None,
        None,
        "/var/run/postgresql",
        None,
        "ophelia_corte",
    )
    with_user = parse("postgresql://ophelia@/corte?host=/tmp&port=5433")
    assert (with_user.user, with_user.host, with_user.port, with_user.dbname) == (
        "ophelia",
        "/tmp",
        5433,
        "corte",
    )


def test_parse_percent_decodes_userinfo() -> None:
    parts = parse("postgresql://op%40x:p%40ss%3Aw@h:5432/my%20db")
    assert (parts.user, parts.password, parts.host, parts.port, parts.dbname) == (
        "op@x",
        "p@ss:w",
        "h",
        5432,
        "my db",
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://postgres@db.internal:6543/postgres", "port 6543 is the transaction-mode pooler port"),
        (
            f"postgresql://postgres.abcd:{SECRET}@aws-0-eu-west-3.pooler.supabase.com:6543/postgres",
            "aws-0-eu-west-3.pooler.supabase.com:6543 is Supabase's transaction-mode pooler",
        ),
        ("host=db.internal port=6543 dbname=postgres", "port 6543 is the transaction-mode pooler port"),
        (
            "postgresql://postgres@/postgres?host=/tmp&port=6543",
            "port 6543 is the transaction-mode pooler port",
        ),
    ],
)
def test_transaction_pooler_is_flagged(url: str, reason: str) -> None:
    assert transaction_pooler_reason(url) == reason
    assert SECRET not in reason


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres.abcd@aws-0-eu-west-3.pooler.supabase.com:5432/postgres",  # session pooler
        "postgresql://postgres@db.abcd.supabase.co:5432/postgres",
        "postgresql://postgres@db.internal/postgres",
        "postgresql:///postgres?host=/var/run/postgresql",
    ],
)
def test_direct_and_session_connections_are_not_flagged(url: str) -> None:
    assert transaction_pooler_reason(url) is None


@pytest.mark.parametrize(
    ("url", "environ"),
    [
        ("postgresql://postgres@db.example:5432,pooler.example:6543/postgres", {}),
        ("postgresql://postgres@db.example/postgres", {"PGPORT": "6543"}),
        (
            "postgresql://postgres@/postgres",
            {"PGHOST": "aws-0-eu-west-3.pooler.supabase.com", "PGPORT": "6543"},
        ),
    ],
    ids=["multi-host", "PGPORT", "PGHOST+PGPORT"],
)
def test_the_transaction_pooler_port_is_refused_however_it_arrives(url: str, environ: dict[str, str]) -> None:
    assert transaction_pooler_reason(url, environ) is not None
    assert transaction_pooler_reason(url, {}) is None or "," in url


def test_every_host_of_a_multi_host_url_is_shown() -> None:
    shown = describe_url("postgresql://alice:s3cret@db1.example:5432,db2.example:5433/app?sslmode=require")
    assert shown == "postgresql://alice:***@db1.example:5432,db2.example:5433/app"
