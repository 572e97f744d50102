"""`SqliteAppends`: the batch append's statements on a plain sqlite3 connection.

Fixed statement texts, so the sqlite3 module prepares each once per connection and reuses it
from its statement cache. Sets of keys travel as one JSON parameter read with `json_each`:
one statement for any batch, where a loop of lookups cost a Python round trip per key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Final

from sqlalchemy.dialects import sqlite as sqlite_dialect

from chat_server import codec
from chat_server.models import RoomId, UserId
from chat_server.store.appends import (
    Member,
    NewRow,
    Position,
    RetryKey,
    StoredRow,
    selected_message_columns,
)
from chat_server.store.schema import db_now_ms

# The one definition of the database's clock (schema.py), as SQLite text.
_NOW: Final = str(db_now_ms().compile(dialect=sqlite_dialect.dialect()))

_MEMBERS: Final = (
    "SELECT m.room_id, m.user_id FROM json_each(?) AS p JOIN room_members AS m"
    " ON m.room_id = p.value ->> 0 AND m.user_id = p.value ->> 1"
)
_RETRIES: Final = (
    "SELECT "
    + selected_message_columns("m")
    + " FROM json_each(?) AS k JOIN messages AS m ON m.room_id = k.value ->> 0"
    " AND m.sender_id = k.value ->> 1 AND m.client_message_id = k.value ->> 2"
)
# One statement for every room of the batch: a statement per room cost more Python than SQL.
_TAKE_SEQS: Final = (
    f"UPDATE rooms SET last_seq = last_seq + c.value ->> 1, last_activity_ms = {_NOW}"
    " FROM json_each(?) AS c WHERE rooms.id = c.value ->> 0"
    " RETURNING rooms.id, rooms.last_seq, rooms.last_activity_ms"
)
# The write lock is held (BEGIN IMMEDIATE), so the ids after this one are ours to give: rows
# go in with explicit ids through one `executemany`, with no statement and no fetch per row.
# AUTOINCREMENT's counter stays the floor, so an id is never reused.
_LAST_ID: Final = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
    " coalesce((SELECT max(id) FROM messages), 0))"
)
_INSERT: Final = (
    "INSERT INTO messages"
    " (id, room_id, seq, sender_id, content, client_message_id, headers, created_at_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_MOVE_MARKER: Final = (
    "UPDATE room_members SET last_read_seq = ?3"
    " WHERE room_id = ?1 AND user_id = ?2 AND last_read_seq < ?3"
)


class SqliteAppends:
    """`AppendExecutor` over one sqlite3 connection, inside its `BEGIN IMMEDIATE`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._cursor = conn.cursor()

    def lock_rooms(self, room_ids: Sequence[RoomId]) -> None:
        """Nothing to do: `BEGIN IMMEDIATE` holds the database's one write lock."""

    def members(self, candidates: Sequence[Member]) -> list[Member]:
        rows: list[Member] = self._cursor.execute(_MEMBERS, (codec.dumps(candidates),)).fetchall()
        return rows

    def stored_retries(self, keys: Sequence[RetryKey]) -> list[StoredRow]:
        found = self._cursor.execute(_RETRIES, (codec.dumps(keys),)).fetchall()
        return [StoredRow(*row) for row in found]

    def take_seqs(self, counts: Sequence[tuple[RoomId, int]]) -> dict[RoomId, Position]:
        found = self._cursor.execute(_TAKE_SEQS, (codec.dumps(counts),)).fetchall()
        return {room: (last_seq, now_ms) for room, last_seq, now_ms in found}

    def insert(self, rows: Sequence[NewRow]) -> Mapping[tuple[RoomId, int], int]:
        cursor = self._cursor
        last_id: int = cursor.execute(_LAST_ID).fetchone()[0]
        cursor.executemany(_INSERT, [(last_id + n, *row) for n, row in enumerate(rows, start=1)])
        return {(row.room_id, row.seq): last_id + n for n, row in enumerate(rows, start=1)}

    def move_markers(self, marks: Sequence[tuple[RoomId, UserId, int]]) -> None:
        self._cursor.executemany(_MOVE_MARKER, marks)
