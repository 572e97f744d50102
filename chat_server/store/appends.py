"""`append_batch`: the rules for numbering and inserting one batch of messages in one
transaction, run against an `AppendExecutor` that speaks one database's SQL.

The rules live here once: membership refusal, retries answered with the stored row, chains
with `stop_on_refusal`, seqs without holes, the database's clock, forward-only sender read
markers. An executor only runs six fixed statements through its driver (sqlite_appends.py,
postgres_appends.py): SQLAlchemy's per-statement machinery cost more CPU than the database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

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

#: What one queued append turns into: its result, or the refusal to raise to its sender.
Outcome = PostResult | ChatError
#: One queued append: the message, and the connection's chain it belongs to (if any).
Append = tuple[NewMessage, SendChain | None]
RetryKey = tuple[RoomId, UserId, str]
Member = tuple[RoomId, UserId]
#: A room's `last_seq` once this batch's seqs are taken, and the database's time then (ms).
Position = tuple[int, int]


class StoredRow(NamedTuple):
    """A `messages` row as the driver returns it, in `selected_message_columns` order."""

    id: int
    room_id: int
    seq: int
    sender_id: str
    content: str
    client_message_id: str | None
    headers: str
    created_at_ms: int


def selected_message_columns(alias: str) -> str:
    """`StoredRow`'s columns of table `alias`, in its order, for a SELECT list."""
    return ", ".join(f"{alias}.{column}" for column in StoredRow._fields)


class NewRow(NamedTuple):
    """A `messages` row to insert, in the insert statements' column order."""

    room_id: RoomId
    seq: int
    sender_id: UserId
    content: str
    client_message_id: str | None
    headers: str
    created_at_ms: int


class AppendExecutor(Protocol):
    """One database's statements for a batch, inside a transaction the caller holds."""

    def lock_rooms(self, room_ids: Sequence[RoomId]) -> None:
        """Lock the rooms' rows in ascending id (`room_ids` is sorted), so two workers' batches
        never deadlock and nothing changes them until the commit."""

    def members(self, candidates: Sequence[Member]) -> Iterable[Member]:
        """Which of `candidates` (distinct) are members of their room."""

    def stored_retries(self, keys: Sequence[RetryKey]) -> Iterable[StoredRow]:
        """The stored messages with these (room, sender, client_message_id) keys."""

    def take_seqs(self, counts: Sequence[tuple[RoomId, int]]) -> Mapping[RoomId, Position]:
        """Add each count to its room's `last_seq`, stamp its activity with the database's
        clock; each room's new position."""

    def insert(self, rows: Sequence[NewRow]) -> Mapping[tuple[RoomId, int], int]:
        """Insert the rows; the new id of each, by (room, seq)."""

    def move_markers(self, marks: Sequence[tuple[RoomId, UserId, int]]) -> None:
        """Raise each (room, user)'s read marker to the seq, never lower it."""


class AsyncAppendExecutor(Protocol):
    """`AppendExecutor` for a driver whose calls are awaited."""

    def lock_rooms(self, room_ids: Sequence[RoomId]) -> Awaitable[None]: ...

    def members(self, candidates: Sequence[Member]) -> Awaitable[Iterable[Member]]: ...

    def stored_retries(self, keys: Sequence[RetryKey]) -> Awaitable[Iterable[StoredRow]]: ...

    def take_seqs(
        self, counts: Sequence[tuple[RoomId, int]]
    ) -> Awaitable[Mapping[RoomId, Position]]: ...

    def insert(self, rows: Sequence[NewRow]) -> Awaitable[Mapping[tuple[RoomId, int], int]]: ...

    def move_markers(self, marks: Sequence[tuple[RoomId, UserId, int]]) -> Awaitable[None]: ...


def append_batch(executor: AppendExecutor, appends: Sequence[Append]) -> list[Outcome]:
    """Number and insert `appends` inside the caller's transaction; outcomes in their order.

    A chain with `stop_on_refusal` stops at its first refusal: its appends after that one in
    this batch are `NotStored`. The inputs are not changed; the caller reads broken chains off
    the outcomes. Retried `client_message_id`s are looked up once the rooms are locked: no
    unique violation is left to race.
    """
    plan = AppendPlan(appends)
    executor.lock_rooms(plan.room_ids)
    keys = plan.retry_keys()
    plan.decide(executor.members(plan.candidates()), executor.stored_retries(keys) if keys else ())
    if plan.fresh:
        rows = plan.number(executor.take_seqs(plan.seq_counts()))
        marks = plan.inserted(executor.insert(rows))
        executor.move_markers(marks)
    return plan.outcomes()


async def append_batch_async(
    executor: AsyncAppendExecutor, appends: Sequence[Append]
) -> list[Outcome]:
    """`append_batch` step for step, for an awaited driver."""
    plan = AppendPlan(appends)
    await executor.lock_rooms(plan.room_ids)
    keys = plan.retry_keys()
    members = await executor.members(plan.candidates())
    plan.decide(members, await executor.stored_retries(keys) if keys else ())
    if plan.fresh:
        rows = plan.number(await executor.take_seqs(plan.seq_counts()))
        marks = plan.inserted(await executor.insert(rows))
        await executor.move_markers(marks)
    return plan.outcomes()


@dataclass(slots=True)
class AppendPlan:
    """One batch's rules, between the executor's statements; no I/O."""

    appends: Sequence[Append]
    room_ids: list[RoomId] = field(init=False)
    _outcomes: list[Outcome | None] = field(init=False)
    #: Batch indexes to insert, per room, in arrival order.
    fresh: dict[RoomId, list[int]] = field(init=False, default_factory=lambda: defaultdict(list))
    #: Retries of a message that is itself in this batch: they get its row once inserted.
    _echoes: list[tuple[int, RetryKey]] = field(init=False, default_factory=list)
    #: (batch index, seq, created_at_ms) of each row to insert.
    _planned: list[tuple[int, int, int]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.room_ids = sorted({message.room_id for message, _ in self.appends})
        self._outcomes = [None] * len(self.appends)

    def candidates(self) -> list[Member]:
        return list({(message.room_id, message.sender_id) for message, _ in self.appends})

    def retry_keys(self) -> list[RetryKey]:
        return list(
            {
                (message.room_id, message.sender_id, message.client_message_id)
                for message, _ in self.appends
                if message.client_message_id is not None
            }
        )

    def decide(self, members: Iterable[Member], stored_rows: Iterable[StoredRow]) -> None:
        """Refusals and answers to retries, known before anything is written; the rest fresh."""
        member_set = {(RoomId(room), UserId(user)) for room, user in members}
        stored: dict[RetryKey, ChatMessage] = {}
        for row in stored_rows:
            found = to_message(row)
            if found.client_message_id is not None:
                stored[(found.room_id, found.sender_id, found.client_message_id)] = found
        first_in_batch: set[RetryKey] = set()
        stopped: set[int] = set()  # chains refused earlier in this batch
        for index, (message, chain) in enumerate(self.appends):
            room, cmid = message.room_id, message.client_message_id
            if chain is not None and chain.id in stopped:
                self._outcomes[index] = NotStored("an earlier SEND on this connection failed")
            elif (refusal := _refusal(message, member_set)) is not None:
                self._outcomes[index] = refusal
                if chain is not None and chain.stop_on_refusal:
                    stopped.add(chain.id)
            elif cmid is None:
                self.fresh[room].append(index)
            elif (key := (room, message.sender_id, cmid)) in stored:
                self._outcomes[index] = PostResult(stored[key], created=False)
            elif key in first_in_batch:
                self._echoes.append((index, key))
            else:
                first_in_batch.add(key)
                self.fresh[room].append(index)

    def seq_counts(self) -> list[tuple[RoomId, int]]:
        return [(room, len(self.fresh[room])) for room in sorted(self.fresh)]

    def number(self, positions: Mapping[RoomId, Position]) -> list[NewRow]:
        """Each fresh message's seq (the room's new `last_seq` counted back: a rollback
        returns them, so no holes) and time (the database's, read as it numbered the room)."""
        rows: list[NewRow] = []
        for room, indexes in self.fresh.items():
            last_seq, now_ms = positions[room]
            first_seq = last_seq - len(indexes) + 1
            for n, index in enumerate(indexes):
                message = self.appends[index][0]
                seq = first_seq + n
                self._planned.append((index, seq, now_ms))
                rows.append(
                    NewRow(
                        room,
                        seq,
                        message.sender_id,
                        message.content,
                        message.client_message_id,
                        encode_headers(message.headers),
                        now_ms,
                    )
                )
        return rows

    def inserted(self, ids: Mapping[tuple[RoomId, int], int]) -> list[tuple[RoomId, UserId, int]]:
        """Answer the inserted messages and their echoes; each sender's marker to move: their
        last message of the batch, per room."""
        by_key: dict[RetryKey, ChatMessage] = {}
        highest: dict[Member, int] = {}
        for index, seq, created_at_ms in self._planned:
            new = self.appends[index][0]
            message = ChatMessage(
                id=MessageId(int(ids[(new.room_id, seq)])),
                room_id=new.room_id,
                seq=seq,
                sender_id=new.sender_id,
                content=new.content,
                created_at_ms=created_at_ms,
                client_message_id=new.client_message_id,
                headers=new.headers,
            )
            self._outcomes[index] = PostResult(message, created=True)
            if new.client_message_id is not None:
                by_key[(new.room_id, new.sender_id, new.client_message_id)] = message
            member = (new.room_id, new.sender_id)
            highest[member] = max(highest.get(member, 0), seq)
        for index, key in self._echoes:
            self._outcomes[index] = PostResult(by_key[key], created=False)
        return [(room, user, seq) for (room, user), seq in highest.items()]

    def outcomes(self) -> list[Outcome]:
        answers = [outcome for outcome in self._outcomes if outcome is not None]
        assert len(answers) == len(self.appends)
        return answers


def _refusal(message: NewMessage, members: set[Member]) -> ChatError | None:
    """The one membership rule: a room that does not exist has no members, so it is refused
    exactly like someone else's room and nothing reveals whether a room exists."""
    if (message.room_id, message.sender_id) not in members:
        return NotAMember("not a member of this room", {"roomId": message.room_id})
    return None
