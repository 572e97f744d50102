"""The database schema as SQLAlchemy Core tables, and the database-clock expression."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

# Named constraints, so later migrations (and SQLite batch rebuilds) can refer to them.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# BIGINT on PostgreSQL; on SQLite only `INTEGER PRIMARY KEY` is the rowid alias that autoincrements.
IdType = BigInteger().with_variant(Integer(), "sqlite")

rooms = Table(
    "rooms",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=True),
    Column("created_by", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("last_activity_ms", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    # min(a, b) + "\n" + max(a, b) for direct rooms: one 1:1 room per pair, kept by the schema.
    Column("direct_key", Text, nullable=True),
    UniqueConstraint("direct_key"),
    # AUTOINCREMENT on SQLite: ids are never reused, even after the highest row is deleted.
    sqlite_autoincrement=True,
)

room_members = Table(
    "room_members",
    metadata,
    Column("room_id", IdType, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("joined_at_ms", BigInteger, nullable=False),
    # The member's read marker: the highest `seq` they have read or sent; only moves forward.
    # Never below their own last message in the room (the store moves it with every message,
    # and sets it so when a member is added back): what lies above it is others' messages.
    Column("last_read_seq", BigInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("room_id", "user_id"),
    Index(None, "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("room_id", IdType, ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("client_message_id", Text, nullable=True),
    # JSON list of [name, value] pairs; '[]' when the message has none.
    Column("headers", Text, nullable=False, server_default=text("'[]'")),
    Column("created_at_ms", BigInteger, nullable=False),
    # Also the index every history page walks: (room_id, seq) ranges, never a scan.
    UniqueConstraint("room_id", "seq"),
    # Idempotent retries: one row per sender's client message id in a room (NULLs never clash).
    UniqueConstraint("room_id", "sender_id", "client_message_id"),
    sqlite_autoincrement=True,
)


class EpochMillisNow(FunctionElement[int]):
    """The database server's clock in milliseconds since the Unix epoch, as a BIGINT.

    Timestamps come from the database so that every worker and machine agrees on one clock.
    """

    type = BigInteger()
    inherit_cache = True
    name = "epoch_ms_now"


@compiles(EpochMillisNow, "sqlite")
def _epoch_ms_now_sqlite(element: EpochMillisNow, compiler: SQLCompiler, **kw: Any) -> str:
    # julianday('now') has millisecond precision; 2440587.5 is the Julian day of 1970-01-01.
    return "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"


@compiles(EpochMillisNow, "postgresql")
def _epoch_ms_now_postgresql(element: EpochMillisNow, compiler: SQLCompiler, **kw: Any) -> str:
    # clock_timestamp(), not now(): now() is frozen at the start of the transaction.
    return "CAST(extract(epoch from clock_timestamp()) * 1000 AS BIGINT)"


@compiles(EpochMillisNow)
def _epoch_ms_now_other(element: EpochMillisNow, compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(f"EpochMillisNow is not defined for {compiler.dialect.name}")


def db_now_ms() -> EpochMillisNow:
    """`now` in epoch milliseconds, evaluated by the database in the statement that uses it."""
    return EpochMillisNow()
