"""ChatService: the application's rules for rooms, membership and messages, behind Protocols."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from chat_server.broker.base import Broker, reaches_other_workers, room_topic, user_topic
from chat_server.errors import Forbidden, RoomNotFound, ValidationFailed
from chat_server.metrics import Metrics
from chat_server.models import (
    ChatMessage,
    GroupRoomRequest,
    HistoryQuery,
    MessageDraft,
    NewMessage,
    PostResult,
    ReadMarker,
    Room,
    RoomId,
    RoomKind,
    SendChain,
    UserEventKind,
    UserHeaders,
    UserId,
    encode_envelope,
    encode_read_event,
    encode_user_event,
)
from chat_server.room_state import RoomState
from chat_server.store.base import MessageStore

log = logging.getLogger(__name__)


#: Hands a stored message to this worker's own subscribers (the fan-out's local input).
LocalDelivery = Callable[[ChatMessage], None]


class Submission:
    """A message queued for storing; `outcome()` finishes the post and says how it went."""

    __slots__ = ("_chat", "stored")

    def __init__(self, chat: ChatService, stored: asyncio.Future[PostResult]) -> None:
        self._chat = chat
        #: Done once the group commit that holds the message committed (or failed).
        self.stored = stored

    def failed(self) -> bool:
        """Known already to have failed (refused, or its transaction did)."""
        stored = self.stored
        return stored.done() and (stored.cancelled() or stored.exception() is not None)

    async def outcome(self) -> PostResult:
        """The stored message, once durable; publishing it is part of this. Await once."""
        result = await self.stored
        if result.created:
            self._chat.stored(result.message)
            await self._chat.publish_message(result.message)
        return result


class ChatService:
    """Every rule lives here once; STOMP and REST both call it."""

    def __init__(
        self,
        store: MessageStore,
        broker: Broker,
        metrics: Metrics,
        deliver_locally: LocalDelivery,
        room_state: RoomState,
    ) -> None:
        self._store = store
        self._broker = broker
        self._metrics = metrics
        self._deliver_locally = deliver_locally
        self.room_state = room_state
        # One worker alone delivers each message at its commit (`stored`); publishing it too
        # would only come back as an echo for the fan-out to drop.
        self._publish_rooms = reaches_other_workers(broker)

    # --- messages -----------------------------------------------------------------------------

    async def post(
        self, sender: UserId, draft: MessageDraft, headers: UserHeaders = ()
    ) -> PostResult:
        """Store, then publish; returns once the message is durable.

        A retried `clientMessageId` returns the stored message and is not published again.
        """
        return await self.submit(sender, draft, headers).outcome()

    def submit(
        self,
        sender: UserId,
        draft: MessageDraft,
        headers: UserHeaders = (),
        chain: SendChain | None = None,
    ) -> Submission:
        """`post` in two steps: the message is queued for storing now, in call order; the
        submission's `outcome()` finishes the post. Await each one: that is where it is
        published."""
        message = NewMessage(draft.room_id, sender, draft.content, draft.client_message_id, headers)
        return Submission(self, self._store.append_message(message, chain))

    def stored(self, message: ChatMessage) -> None:
        """A new message is durable: this worker's subscribers get it now, without waiting for
        the broker (whose echo the fan-out then drops by its `seq`)."""
        self._metrics.messages_stored.inc()
        self._deliver_locally(message)
        self.room_state.message_stored(message.room_id, message.sender_id)

    async def publish_message(self, message: ChatMessage) -> None:
        if self._publish_rooms:
            await self._publish(room_topic(message.room_id), encode_envelope(message))

    async def history(
        self, user: UserId, room_id: RoomId, query: HistoryQuery
    ) -> list[ChatMessage]:
        await self._require_member(user, room_id)
        return await self._store.messages(
            room_id, before=query.before, after=query.after, limit=query.limit
        )

    async def may_read(self, user: UserId, room_id: RoomId) -> bool:
        """The membership rule: only members use a room, and a room that does not exist is
        refused exactly like someone else's (its existence never leaks). Every check here, in
        `room` and in the store's appends asks the same thing: is there a member row?"""
        return await self._store.is_member(room_id, user)

    # --- room state: read markers, presence -------------------------------------------------

    async def mark_read(self, user: UserId, room_id: RoomId, seq: int) -> ReadMarker:
        """Move the user's read marker forward (stored, then announced): the room's events
        subscribers on every worker and the user's own connections hear of it."""
        marker = await self._store.mark_read(room_id, user, seq)
        self._metrics.read_marker_writes.labels("moved" if marker.moved else "unchanged").inc()
        if marker.moved:
            self.room_state.read_moved(marker)
            await self._publish(user_topic(user), encode_read_event(marker))
        return marker

    async def reads(self, user: UserId, room_id: RoomId) -> dict[UserId, int]:
        reads = await self._store.reads(room_id)
        if user not in reads:  # every member has a marker: the membership rule in one query
            raise _not_yours(room_id)
        return reads

    async def online(self, user: UserId, room_id: RoomId) -> list[UserId]:
        await self._require_member(user, room_id)
        return await self.room_state.online_in(room_id)

    # --- rooms --------------------------------------------------------------------------------

    async def create_direct_room(self, creator: UserId, other: UserId) -> Room:
        if creator == other:
            raise ValidationFailed(
                "a direct room needs two different users", {"participantId": ["is yourself"]}
            )
        room = await self._store.create_direct_room(creator, other)
        await self._notify(other, UserEventKind.ROOM_ADDED, room)
        return room

    async def create_group_room(self, creator: UserId, request: GroupRoomRequest) -> Room:
        others = [member for member in request.member_ids if member != creator]
        room = await self._store.create_group_room(creator, request.name, others)
        for member in others:
            await self._notify(member, UserEventKind.ROOM_ADDED, room)
        return room

    async def rooms_of(self, user: UserId) -> list[Room]:
        return await self._store.rooms_of(user)

    async def room(self, user: UserId, room_id: RoomId) -> Room:
        """The room as `user` sees it (their marker and unread count)."""
        room = await self._store.get_room(room_id, reader=user)
        # The membership rule on the room just read (one query, not two).
        if room is None or user not in room.member_ids:
            raise _not_yours(room_id)
        return room

    async def add_member(self, actor: UserId, room_id: RoomId, new_member: UserId) -> Room:
        room = await self._group_room_of(actor, room_id)
        if new_member in room.member_ids:
            return room
        room = await self._store.add_member(room_id, new_member, reader=actor)
        # The added member's notification shows the room as they see it (all of it unread).
        theirs = await self._store.get_room(room_id, reader=new_member)
        await self._notify(new_member, UserEventKind.ROOM_ADDED, theirs or room)
        return room

    async def remove_member(self, actor: UserId, room_id: RoomId, member: UserId) -> None:
        """Leave (yourself) or remove someone (the room's creator only)."""
        room = await self._group_room_of(actor, room_id)
        if member != actor and actor != room.created_by:
            raise Forbidden("only the room's creator may remove other members")
        if member not in room.member_ids:
            raise RoomNotFound(f"{member} is not a member of room {room_id}")
        await self._store.remove_member(room_id, member)
        # Every worker ends the removed user's subscriptions to the room (BAD_INPUTS A8).
        await self._notify(member, UserEventKind.ROOM_REMOVED, room)

    async def _group_room_of(self, user: UserId, room_id: RoomId) -> Room:
        room = await self.room(user, room_id)
        if room.kind is not RoomKind.GROUP:
            raise Forbidden("members can only change in group rooms")
        return room

    async def _require_member(self, user: UserId, room_id: RoomId) -> None:
        if not await self._store.is_member(room_id, user):
            raise _not_yours(room_id)

    # --- publishing ---------------------------------------------------------------------------

    async def _notify(self, user: UserId, kind: UserEventKind, room: Room) -> None:
        await self._publish(user_topic(user), encode_user_event(kind, room))

    async def _publish(self, topic: str, payload: bytes) -> None:
        # What is published is already stored: a broker failure is logged, never the caller's.
        try:
            await self._broker.publish(topic, payload)
        except Exception:
            log.exception("publishing to %s failed; subscribers catch up from the store", topic)


def _not_yours(room_id: RoomId) -> RoomNotFound:
    return RoomNotFound(f"no room {room_id} among yours")
