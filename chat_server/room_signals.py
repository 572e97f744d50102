"""RoomSignals: one connection's SENDs to `/app/typing` and `/app/read`.

Neither is a chat message: a typing signal is relayed (rate-limited, never stored), a read marker
is stored and announced. Both are for members only; a refusal is answered like one of
`/app/message` (on `/user/queue/errors` if watched, else ERROR and close). A typing SEND over its
rate is absorbed, never an error; a RECEIPT for a read comes after its commit.
"""

from __future__ import annotations

from collections.abc import Callable

from chat_server.chat import ChatService
from chat_server.destinations import TYPING_DESTINATION
from chat_server.errors import ChatError, NotAMember
from chat_server.inbound import read_request, typing_signal
from chat_server.models import RoomId, UserId
from chat_server.outlet import Outlet
from chat_server.stomp.frames import Frame
from chat_server.subscriptions import SubscriptionRegistry

#: Rooms whose membership a connection remembers having checked for its typing SENDs.
MEMBERSHIPS_REMEMBERED = 64

Refuse = Callable[[Frame, ChatError], None]


class RoomSignals:
    __slots__ = ("_chat", "_member_of", "_outlet", "_refuse", "_subscriptions")

    def __init__(
        self,
        *,
        chat: ChatService,
        outlet: Outlet,
        subscriptions: SubscriptionRegistry,
        refuse: Refuse,
    ) -> None:
        self._chat = chat
        self._outlet = outlet
        self._subscriptions = subscriptions
        self._refuse = refuse
        #: Rooms this connection was found a member of (typing SENDs do not ask the database
        #: each time); forgotten when the user is removed from one. Made at the first.
        self._member_of: dict[RoomId, None] | None = None

    async def send(self, frame: Frame, user: UserId, *, receipt: bool = True) -> None:
        """Handle one SEND to a room-signal destination, in frame order; `receipt=False` for
        one a transaction held (its COMMIT is receipted)."""
        try:
            if frame.get("destination") == TYPING_DESTINATION:
                await self._typing(frame, user)
            else:
                await self._read(frame, user)
        except ChatError as refusal:
            self._refuse(frame, refusal)
            return
        if receipt:
            self._outlet.receipt(frame)

    def room_removed(self, room_id: RoomId) -> None:
        if self._member_of is not None:
            self._member_of.pop(room_id, None)

    async def _typing(self, frame: Frame, user: UserId) -> None:
        signal = typing_signal(frame)
        await self._require_member(user, signal.room_id)
        self._chat.room_state.typing(signal.room_id, user, signal.typing)

    async def _read(self, frame: Frame, user: UserId) -> None:
        request = read_request(frame)
        await self._chat.mark_read(user, request.room_id, request.seq)

    async def _require_member(self, user: UserId, room_id: RoomId) -> None:
        remembered = self._member_of
        if (remembered is not None and room_id in remembered) or self._subscriptions.watches(
            room_id
        ):
            return
        if not await self._chat.may_read(user, room_id):
            raise NotAMember("not a member of this room", {"roomId": room_id})
        if self._member_of is None:
            self._member_of = {}
        self._member_of[room_id] = None
        while len(self._member_of) > MEMBERSHIPS_REMEMBERED:
            del self._member_of[next(iter(self._member_of))]
