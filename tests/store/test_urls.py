"""`DATABASE_URL` forms map to the async drivers' URLs; anything else is refused clearly."""

from __future__ import annotations

import pathlib

import pytest

from chat_server.store.urls import engine_url, sqlite_path


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///chat.db", "sqlite+aiosqlite:///chat.db"),
        ("sqlite:///data/chat.db", "sqlite+aiosqlite:///data/chat.db"),
        ("sqlite:////var/lib/chat/chat.db", "sqlite+aiosqlite:////var/lib/chat/chat.db"),
        ("sqlite+aiosqlite:///chat.db", "sqlite+aiosqlite:///chat.db"),
        (
            "postgres://user:secret@db.example.com:5432/chat",
            "postgresql+asyncpg://user:secret@db.example.com:5432/chat",
        ),
        ("postgresql://user@localhost/chat", "postgresql+asyncpg://user@localhost/chat"),
        ("postgresql+asyncpg://user@localhost/chat", "postgresql+asyncpg://user@localhost/chat"),
        ("postgres://u:p%40ss@h/chat", "postgresql+asyncpg://u:p%40ss@h/chat"),
        ("postgres://u@h/chat?sslmode=require", "postgresql+asyncpg://u@h/chat?ssl=require"),
    ],
)
def test_contract_forms_map_to_async_drivers(given: str, expected: str) -> None:
    assert engine_url(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "chat.db",
        "mysql://user@localhost/chat",
        "redis://localhost:6379/0",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite://host/chat.db",
        "sqlite:///chat.db?mode=ro",
        "postgres://user@localhost",
    ],
)
def test_other_urls_are_refused_with_a_clear_message(given: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL"):
        engine_url(given)
    with pytest.raises(ValueError, match="DATABASE_URL"):
        sqlite_path(given)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///chat.db", pathlib.Path("chat.db")),
        ("sqlite:///data/chat.db", pathlib.Path("data/chat.db")),
        ("sqlite:////var/lib/chat/chat.db", pathlib.Path("/var/lib/chat/chat.db")),
        ("postgres://user@localhost/chat", None),
        ("postgresql://user@localhost/chat", None),
    ],
)
def test_sqlite_path_names_the_database_file(given: str, expected: pathlib.Path | None) -> None:
    assert sqlite_path(given) == expected


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_libpq_sslmode_becomes_asyncpgs_ssl_argument(mode: str) -> None:
    # Heroku-style URLs spell it `sslmode`; asyncpg takes the same modes as `ssl`.
    assert engine_url(f"postgres://u:p@db.example.com:5432/d?sslmode={mode}") == (
        f"postgresql+asyncpg://u:p@db.example.com:5432/d?ssl={mode}"
    )


def test_other_postgres_options_pass_through() -> None:
    assert engine_url("postgresql://u@/chat?host=/run/postgresql&port=5433") == (
        "postgresql+asyncpg://u@/chat?host=%2Frun%2Fpostgresql&port=5433"
    )
    assert engine_url("postgres://u@h/chat?target_session_attrs=read-write&sslmode=require") == (
        "postgresql+asyncpg://u@h/chat?ssl=require&target_session_attrs=read-write"
    )


@pytest.mark.parametrize(
    "option", ["connect_timeout=10", "application_name=x", "sslrootcert=/etc/ca.pem", "foo=bar"]
)
def test_postgres_options_asyncpg_would_not_take_are_refused_up_front(option: str) -> None:
    # Before: a TypeError from asyncpg.connect() at the first request (a 500), not at start.
    with pytest.raises(ValueError, match="unsupported PostgreSQL DATABASE_URL option"):
        engine_url(f"postgres://u@h/chat?sslmode=require&{option}")
