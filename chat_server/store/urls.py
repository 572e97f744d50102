"""Map the contract's `DATABASE_URL` forms to SQLAlchemy async engine URLs."""

from __future__ import annotations

import pathlib

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+aiosqlite"})
# `postgres://` is the form Heroku puts in DATABASE_URL; SQLAlchemy dropped that alias.
_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+asyncpg"})
# Query options of a PostgreSQL URL: libpq's `sslmode` (or asyncpg's own `ssl`), libpq's
# `target_session_attrs`, and `host`/`port` (a unix socket dir: `postgresql:///chat?host=/run/pg`).
_POSTGRES_OPTIONS = frozenset({"sslmode", "ssl", "target_session_attrs", "host", "port"})
_EXPECTED = (
    "expected sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgres://... or postgresql://..."
)


def _parse(database_url: str) -> URL:
    try:
        return make_url(database_url)
    except ArgumentError as exc:
        raise ValueError(f"unsupported DATABASE_URL: {_EXPECTED}") from exc


def _sqlite_file(url: URL) -> str:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        # Each pooled connection would see its own private database: nothing would be shared.
        raise ValueError(f"a SQLite DATABASE_URL must name a file: {_EXPECTED}")
    if url.host or url.username or url.port:
        raise ValueError(f"a SQLite DATABASE_URL has no host part: {_EXPECTED}")
    if url.query:
        raise ValueError(f"a SQLite DATABASE_URL takes no query options: {_EXPECTED}")
    return database


def engine_url(database_url: str) -> str:
    """The SQLAlchemy URL (aiosqlite or asyncpg driver) for a contract `DATABASE_URL`."""
    url = _parse(database_url)
    scheme = url.drivername.lower()
    if scheme in _SQLITE_SCHEMES:
        _sqlite_file(url)
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if scheme in _POSTGRES_SCHEMES:
        if not url.database:
            raise ValueError(f"a PostgreSQL DATABASE_URL must name a database: {_EXPECTED}")
        query = dict(url.query)
        # Anything else would reach asyncpg.connect() as an unknown keyword, a TypeError at the
        # first request instead of a clear refusal at start.
        unsupported = sorted(set(query) - _POSTGRES_OPTIONS)
        if unsupported:
            raise ValueError(
                f"unsupported PostgreSQL DATABASE_URL option(s) {', '.join(unsupported)}: "
                f"only {', '.join(sorted(_POSTGRES_OPTIONS))} are understood"
            )
        # libpq spells it `sslmode` (Heroku and most providers do too); asyncpg calls it `ssl`.
        if "sslmode" in query:
            query["ssl"] = query.pop("sslmode")
        url = url.set(drivername="postgresql+asyncpg", query=query)
        return url.render_as_string(hide_password=False)
    raise ValueError(f"unsupported DATABASE_URL scheme {url.drivername!r}: {_EXPECTED}")


def sqlite_path(database_url: str) -> pathlib.Path | None:
    """The database file of a SQLite URL, None for PostgreSQL; ValueError like `engine_url`."""
    url = make_url(engine_url(database_url))
    if url.drivername == "sqlite+aiosqlite":
        return pathlib.Path(_sqlite_file(url))
    return None
