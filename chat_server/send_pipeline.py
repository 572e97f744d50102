"""SendPipeline: one connection's SENDs, stored in a group commit and answered in order.

Each SEND is queued for storing as soon as it is read, so a burst shares one transaction; a
single task answers them, in order, once their commits are done. The rule that keeps this
equal to a client sending one SEND at a time: once one fails (a refusal that closes the
connection, or a failed transaction), none of those behind it is stored. The group commit
drops what it already holds of the failed chain; nothing more is submitted after a failure
shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from chat_server.chat import ChatService, Submission
from chat_server.destinations import ERRORS_DESTINATION
from chat_server.errors import ChatError, StoreUnavailable
from chat_server.inbound import SendReader, refusal_body, refusal_error
from chat_server.metrics import Metrics
from chat_server.models import SendChain, UserId
from chat_server.outlet import Outlet
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Frame
from chat_server.subscriptions import SubscriptionRegistry

_chain_ids = itertools.count(1)



class SendPipeline:
    __slots__ = (
        "_answerer",
        "_chain",
        "_chat",
        "_conn",
        "_max_pipelined",
        "_metrics",
        "_outlet",
        "_queue",
        "_reader",
        "_subscriptions",
    )

    def __init__(
        self,
        *,
        chat: ChatService,
        reader: SendReader,
        outlet: Outlet,
        subscriptions: SubscriptionRegistry,
        metrics: Metrics,
        max_pipelined: int,
    ) -> None:
        self._chat = chat
        self._reader = reader
        self._outlet = outlet
        self._conn = outlet.conn
        self._subscriptions = subscriptions
        self._metrics = metrics
        self._max_pipelined = max_pipelined
        #: SENDs queued for storing, oldest first, and the task that answers them in order.
        self._queue: list[tuple[Frame, Submission]] = []
        self._answerer: asyncio.Task[None] | None = None
        #: The burst the next SEND joins; a frame of any other kind ends it.
        self._chain: SendChain | None = None

    @property
    def idle(self) -> bool:
        return self._answerer is None

    def end_burst(self) -> None:
        """Called before a frame other than SEND, once `settle` returned."""
        self._chain = None

    async def settle(self) -> None:
        """Until every queued SEND has been answered (replies keep the frames' order)."""
        while self._answerer is not None:
            await asyncio.shield(self._answerer)

    async def send(self, frame: Frame, user: UserId) -> None:
        """Queue a SEND for storing and return at once (it is answered later, in order); one
        naming a transaction is held until COMMIT and receipted now."""
        try:
            held = self._conn.enlist(frame)
            prepared = None if held else self._reader.read(frame)
        except (StompProtocolError, ChatError) as refusal:
            await self.settle()  # the refusal comes after the replies to earlier SENDs
            if self._conn.closing:
                return
            if isinstance(refusal, StompProtocolError):
                raise
            self.refuse(frame, refusal)
            return
        if prepared is None or len(self._queue) >= self._max_pipelined or self._failure_shows():
            # In order; at the limit, stop reading (back-pressure); after a failure, let it
            # be answered (and the connection close) before anything more is stored.
            await self.settle()
        if self._conn.closing:
            return  # an earlier SEND failed the connection while this frame waited
        if prepared is None:
            self._outlet.receipt(frame)
            return
        if self._chain is None:
            # One chain per burst; with /user/queue/errors a refusal closes nothing, so it
            # does not stop the SENDs behind it either.
            stop_on_refusal = self._subscriptions.errors is None
            self._chain = SendChain(next(_chain_ids), stop_on_refusal)
        draft, headers = prepared
        self._queue.append((frame, self._chat.submit(user, draft, headers, self._chain)))
        if self._answerer is None:
            self._answerer = asyncio.get_running_loop().create_task(self._answer())

    def _failure_shows(self) -> bool:
        return any(submission.failed() for _, submission in self._queue)

    async def commit_held(self, frame: Frame, user: UserId) -> None:
        """A SEND a transaction held, stored at its COMMIT (which is receipted, not it)."""
        try:
            draft, headers = self._reader.read(frame)
            await self._chat.post(user, draft, headers)
        except ChatError as refusal:
            self.refuse(frame, refusal)
        except StoreUnavailable:
            raise _not_stored(frame) from None

    def refuse(self, frame: Frame, refusal: ChatError) -> None:
        """Spring's convention: report on /user/queue/errors if watched, else ERROR and close."""
        errors = self._subscriptions.errors
        if errors is None:
            raise refusal_error(frame, refusal)
        self._metrics.errors.labels("stomp", refusal.code).inc()
        self._outlet.push(errors, ERRORS_DESTINATION, refusal_body(frame, refusal))

    async def _answer(self) -> None:
        """RECEIPT (or refuse) each queued SEND, in order, once its commit is done.

        Runs to the end even when the socket is gone: awaiting each one is what publishes it.
        """
        try:
            while self._queue:
                frame, submission = self._queue[0]
                try:
                    await submission.outcome()
                except ChatError as refusal:
                    if not self._conn.closing:
                        self.refuse(frame, refusal)
                    continue
                except StoreUnavailable:
                    # Outcome unknown: no RECEIPT; the client retries with its clientMessageId.
                    raise _not_stored(frame) from None
                finally:
                    del self._queue[0]
                self._outlet.receipt(frame)
        except Exception as exc:
            self._outlet.fail_on(exc)
            for _, submission in self._queue:  # published if stored; never receipted
                with contextlib.suppress(Exception):
                    await submission.outcome()
            self._queue.clear()
        finally:
            self._answerer = None


def _not_stored(frame: Frame) -> StompProtocolError:
    return StompProtocolError(
        "message not stored: try again",
        close_code=CloseCode.TRY_AGAIN_LATER,
        receipt_id=frame.get("receipt"),
    )
