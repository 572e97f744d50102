"""ChatService: the application's rules for rooms, membership and messages, behind Protocols."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from chat_server.broker.base import Broker, room_topic, user_topic
from chat_server.errors import Forbidden, RoomNotFound, ValidationFailed
from chat_server.metrics import Metrics
from chat_server.models import (
    ChatMessage,
    GroupRoomRequest,
    HistoryQuery,
    MessageDraft,
    NewMessage,
    PostResult,
    Room,
    RoomId,
    RoomKind,
    SendChain,
    UserEventKind,
    UserHeaders,
    UserId,
    encode_envelope,
    encode_user_event,
)
from chat_server.store.base import MessageStore

log = logging.getLogger(__name__)


class ChatService:
    """Every rule lives here once; STOMP and REST both call it."""

    def __init__(
        self, store: MessageStore, broker: Broker, metrics: Metrics | None = None
    ) -> None:
        self._store = store
        self._broker = broker
        self._metrics = metrics or Metrics()

    # --- messages -----------------------------------------------------------------------------

    async def post(
        self, sender: UserId, draft: MessageDraft, headers: UserHeaders = ()
    ) -> PostResult:
        """Store, then publish; returns once the message is durable.

        A retried `clientMessageId` returns the stored message and is not published again.
        """
        return await self.submit(sender, draft, headers)

    def submit(
        self,
        sender: UserId,
        draft: MessageDraft,
        headers: UserHeaders = (),
        chain: SendChain | None = None,
    ) -> Awaitable[PostResult]:
        """`post` in two steps: the message is queued for storing now, in call order, and the
        returned awaitable finishes the post. Await each one: that is where it is published."""
        stored = self._store.append_message(
            NewMessage(draft.room_id, sender, draft.content, draft.client_message_id, headers),
            chain,
        )
        return self._publish_stored(draft.room_id, stored)

    async def _publish_stored(
        self, room_id: RoomId, stored: Awaitable[PostResult]
    ) -> PostResult:
        result = await stored
        if result.created:
            self._metrics.messages_stored.inc()
            await self._publish(room_topic(room_id), encode_envelope(result.message))
        return result

    async def history(
        self, user: UserId, room_id: RoomId, query: HistoryQuery
    ) -> list[ChatMessage]:
        await self._require_member(user, room_id)
        return await self._store.messages(
            room_id, before=query.before, after=query.after, limit=query.limit
        )

    async def may_read(self, user: UserId, room_id: RoomId) -> bool:
        return await self._store.is_member(room_id, user)

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
        room = await self._store.get_room(room_id)
        if room is None or user not in room.member_ids:
            raise RoomNotFound(f"no room {room_id} among yours")
        return room

    async def add_member(self, actor: UserId, room_id: RoomId, new_member: UserId) -> Room:
        room = await self._group_room_of(actor, room_id)
        if new_member in room.member_ids:
            return room
        room = await self._store.add_member(room_id, new_member)
        await self._notify(new_member, UserEventKind.ROOM_ADDED, room)
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
            raise RoomNotFound(f"no room {room_id} among yours")

    # --- publishing ---------------------------------------------------------------------------

    async def _notify(self, user: UserId, kind: UserEventKind, room: Room) -> None:
        await self._publish(user_topic(user), encode_user_event(kind, room))

    async def _publish(self, topic: str, payload: bytes) -> None:
        # What is published is already stored: a broker failure is logged, never the caller's.
        try:
            await self._broker.publish(topic, payload)
        except Exception:
            log.exception("publishing to %s failed; subscribers catch up from the store", topic)
