"""`append_batch`: number and insert one batch of messages in one transaction, six statements
(the sixth moves the senders' read markers)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from chat_server.errors import ChatError, NotAMember, NotStored
from chat_server.models import (
    ChatMessage,
    MessageId,
    NewMessage,
    PostResult,
    RoomId,
    SendChain,
    UserId,
)
from chat_server.store.rows import encode_headers, to_message
from chat_server.store.schema import db_now_ms, messages, room_members, rooms

# Built once: executing a prebuilt statement skips building it and computing its cache key,
# which cost more than the database's own work for a small batch.
_LOCK_ROOMS = (
    select(rooms.c.id)
    .where(rooms.c.id.in_(bindparam("room_ids", expanding=True)))
    .order_by(rooms.c.id)
    .with_for_update()
)
_MEMBERS = select(room_members.c.room_id, room_members.c.user_id).where(
    room_members.c.room_id.in_(bindparam("room_ids", expanding=True)),
    room_members.c.user_id.in_(bindparam("user_ids", expanding=True)),
)
_RETRIES = select(messages).where(
    messages.c.room_id.in_(bindparam("room_ids", expanding=True)),
    messages.c.client_message_id.in_(bindparam("cmids", expanding=True)),
)
_TAKE_SEQS = (
    update(rooms)
    .where(rooms.c.id == bindparam("b_room"))
    .values(last_seq=rooms.c.last_seq + bindparam("b_count"), last_activity_ms=db_now_ms())
)
_POSITIONS = select(rooms.c.id, rooms.c.last_seq, rooms.c.last_activity_ms).where(
    rooms.c.id.in_(bindparam("room_ids", expanding=True))
)
_INSERT = insert(messages).returning(messages.c.id, sort_by_parameter_order=True)
# Room state (read markers): a sender has read what they sent. Forward only; one executemany.
_MOVE_SENDER_MARKERS = (
    update(room_members)
    .where(
        room_members.c.room_id == bindparam("b_room"),
        room_members.c.user_id == bindparam("b_user"),
        room_members.c.last_read_seq < bindparam("b_seq"),
    )
    .values(last_read_seq=bindparam("b_seq"))
)

#: What one queued append turns into: its result, or the refusal to raise to its sender.
Outcome = PostResult | ChatError
#: One queued append: the message, and the connection's chain it belongs to (if any).
Append = tuple[NewMessage, SendChain | None]
RetryKey = tuple[RoomId, UserId, str]


@dataclass(slots=True)
class _Plan:
    """Refusals and answers to retries, known before anything is written; the rest to insert."""

    outcomes: list[Outcome | None]
    #: Batch indexes to insert, per room, in arrival order.
    fresh: dict[RoomId, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Retries of a message that is itself in this batch: they get its row once inserted.
    echoes: list[tuple[int, RetryKey]] = field(default_factory=list)


def append_batch(conn: Connection, appends: Sequence[Append]) -> list[Outcome]:
    """Number and insert `appends` inside the caller's transaction; outcomes in their order.

    A chain with `stop_on_refusal` stops at its first refusal: its appends after that one in
    this batch are `NotStored`. The inputs are not changed; the caller reads broken chains off
    the outcomes.

    Synchronous, so that a transaction can run whole in a database thread (SQLite) or through
    `AsyncConnection.run_sync` (PostgreSQL).

    The batch's rooms are locked first, in ascending id (row locks on PostgreSQL; SQLite's
    write lock is already held), so two workers' batches never deadlock, and retried
    `client_message_id`s are looked up under those locks: no unique violation is left to race.
    """
    batch = [message for message, _ in appends]
    room_ids = sorted({message.room_id for message in batch})
    existing = set(conn.scalars(_LOCK_ROOMS, {"room_ids": room_ids}))
    plan = _plan(conn, appends, existing)
    inserted = _insert(conn, batch, plan.fresh) if plan.fresh else {}
    if inserted:
        _move_sender_markers(conn, inserted.values())
    by_key: dict[RetryKey, ChatMessage] = {}
    for index, message in inserted.items():
        plan.outcomes[index] = PostResult(message, created=True)
        if message.client_message_id is not None:
            by_key[(message.room_id, message.sender_id, message.client_message_id)] = message
    for index, key in plan.echoes:
        plan.outcomes[index] = PostResult(by_key[key], created=False)
    answers = [outcome for outcome in plan.outcomes if outcome is not None]
    assert len(answers) == len(batch)
    return answers


def _move_sender_markers(conn: Connection, stored: Iterable[ChatMessage]) -> None:
    """Each sender's marker to their last message of the batch, per room: one statement."""
    highest: dict[tuple[RoomId, UserId], int] = {}
    for message in stored:
        key = (message.room_id, message.sender_id)
        highest[key] = max(highest.get(key, 0), message.seq)
    conn.execute(
        _MOVE_SENDER_MARKERS,
        [{"b_room": room, "b_user": user, "b_seq": seq} for (room, user), seq in highest.items()],
    )


def _plan(conn: Connection, appends: Sequence[Append], existing: set[RoomId]) -> _Plan:
    batch = [message for message, _ in appends]
    plan = _Plan([None] * len(batch))
    members = {
        (RoomId(row.room_id), UserId(row.user_id))
        for row in conn.execute(
            _MEMBERS,
            {"room_ids": list(existing), "user_ids": list({m.sender_id for m in batch})},
        )
    }
    stored = _stored_retries(conn, batch, existing)
    first_in_batch: set[RetryKey] = set()
    stopped: set[int] = set()  # chains refused earlier in this batch
    for index, (message, chain) in enumerate(appends):
        room, cmid = message.room_id, message.client_message_id
        if chain is not None and chain.id in stopped:
            plan.outcomes[index] = NotStored("an earlier SEND on this connection failed")
        elif (refusal := _refusal(message, members)) is not None:
            plan.outcomes[index] = refusal
            if chain is not None and chain.stop_on_refusal:
                stopped.add(chain.id)
        elif cmid is None:
            plan.fresh[room].append(index)
        elif (key := (room, message.sender_id, cmid)) in stored:
            plan.outcomes[index] = PostResult(stored[key], created=False)
        elif key in first_in_batch:
            plan.echoes.append((index, key))
        else:
            first_in_batch.add(key)
            plan.fresh[room].append(index)
    return plan


def _refusal(message: NewMessage, members: set[tuple[RoomId, UserId]]) -> ChatError | None:
    """The one membership rule: a room that does not exist has no members, so it is refused
    exactly like someone else's room and nothing reveals whether a room exists."""
    if (message.room_id, message.sender_id) not in members:
        return NotAMember("not a member of this room", {"roomId": message.room_id})
    return None


def _stored_retries(
    conn: Connection, batch: Sequence[NewMessage], existing: set[RoomId]
) -> dict[RetryKey, ChatMessage]:
    wanted = {m.client_message_id for m in batch if m.client_message_id is not None}
    if not wanted:
        return {}
    rows = conn.execute(_RETRIES, {"room_ids": list(existing), "cmids": list(wanted)})
    found: dict[RetryKey, ChatMessage] = {}
    for row in rows:
        message = to_message(row)
        if message.client_message_id is not None:
            found[(message.room_id, message.sender_id, message.client_message_id)] = message
    return found


def _insert(
    conn: Connection, batch: Sequence[NewMessage], fresh: dict[RoomId, list[int]]
) -> dict[int, ChatMessage]:
    """Take each room's seqs (a rollback returns them: no holes), then insert."""
    conn.execute(_TAKE_SEQS, [{"b_room": room, "b_count": len(ids)} for room, ids in fresh.items()])
    # The database's clock, read as it numbered each room: its messages carry that time.
    numbered = conn.execute(_POSITIONS, {"room_ids": list(fresh)})
    position = {RoomId(row.id): (row.last_seq, row.last_activity_ms) for row in numbered}
    planned: list[tuple[int, int, int]] = []  # (batch index, seq, created_at_ms)
    for room, indexes in fresh.items():
        last_seq, now_ms = position[room]
        first_seq = last_seq - len(indexes) + 1
        planned.extend((index, first_seq + n, now_ms) for n, index in enumerate(indexes))
    rows = [
        {
            "room_id": batch[index].room_id,
            "seq": seq,
            "sender_id": batch[index].sender_id,
            "content": batch[index].content,
            "client_message_id": batch[index].client_message_id,
            "headers": encode_headers(batch[index].headers),
            "created_at_ms": created_at_ms,
        }
        for index, seq, created_at_ms in planned
    ]
    ids = conn.execute(_INSERT, rows).scalars().all()
    return {
        index: ChatMessage(
            id=MessageId(int(message_id)),
            room_id=batch[index].room_id,
            seq=seq,
            sender_id=batch[index].sender_id,
            content=batch[index].content,
            created_at_ms=created_at_ms,
            client_message_id=batch[index].client_message_id,
            headers=batch[index].headers,
        )
        for (index, seq, created_at_ms), message_id in zip(planned, ids, strict=True)
    }
