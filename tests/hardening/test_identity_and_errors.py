"""A9 token expiry while connected, P4 failed-CONNECT rate limit, and error hygiene: our own
bugs are logged with a traceback and the peer sees only "internal error"."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import jwt
import pytest
from aiohttp import web

from chat_server.chat import ChatService, Submission
from chat_server.errors import StoreUnavailable
from chat_server.models import MessageDraft, PostResult, RoomId, SendChain, UserHeaders, UserId
from chat_server.web.services import Services
from tests.conftest import SECRET
from tests.hardening.conftest import ServerFactory, connect_bytes, expect_fatal, frame, send_body

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]
SECRET_DETAIL = "password=hunter2 at db.internal:5432"


async def test_a9_token_expiring_while_connected_ends_the_session_at_expiry(
    make_server: ServerFactory,
) -> None:
    server = await make_server(jwt_leeway_s=0)
    token = server.tokens.mint("alice", ttl_s=2)
    expires = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]
    alice = await server.ws(None)
    await alice.send_raw(connect_bytes(token))
    assert (await alice.receive()).get("user-name") == "alice"
    # Keep talking: expiry is enforced whether or not frames arrive.
    await alice.send_raw(frame("SUBSCRIBE", [("id", "1"), ("destination", "/user/queue/errors"),
                                             ("receipt", "r")]))
    assert (await alice.receive()).get("receipt-id") == "r"
    await expect_fatal(alice, "session expired", 1008)
    assert expires - 0.05 <= time.time() < expires + 1.5


async def test_a9_a_session_within_its_leeway_ends_at_exp_plus_leeway(
    make_server: ServerFactory,
) -> None:
    """The leeway that lets CONNECT accept a just-expired token also bounds the session."""
    server = await make_server(jwt_leeway_s=1.5)
    token = server.tokens.mint("alice", ttl_s=0)  # expired now, inside the 1.5 s leeway
    expires = jwt.decode(token, SECRET, algorithms=["HS256"], leeway=10)["exp"]
    alice = await server.ws(None)
    await alice.send_raw(connect_bytes(token))
    assert (await alice.receive()).get("user-name") == "alice"
    await expect_fatal(alice, "session expired", 1008)
    assert expires + 1.5 - 0.05 <= time.time() < expires + 3.0


async def test_p4_failed_connects_are_rate_limited_per_address(
    make_server: ServerFactory,
) -> None:
    server = await make_server(auth_failures_per_min=3)
    for password in ("wrong", "", jwt.encode({"sub": "alice"}, "x" * 32, algorithm="HS256")):
        raw = await server.ws(None)
        await raw.send_raw(connect_bytes(password))
        error = await expect_fatal(raw, "authentication failed", 1008)
        assert b"user" not in error.body.lower()  # nothing tells why
    refused = await server.raw()
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) >= 1


class ExplodingChat(ChatService):
    """A dependency with a bug (or a lost database), swapped in through the composition root."""

    failure: type[Exception] = RuntimeError

    async def post(
        self, sender: UserId, draft: MessageDraft, headers: UserHeaders = ()
    ) -> PostResult:
        raise self.failure(SECRET_DETAIL)

    def submit(
        self,
        sender: UserId,
        draft: MessageDraft,
        headers: UserHeaders = (),
        chain: SendChain | None = None,
    ) -> Submission:
        failed: asyncio.Future[PostResult] = asyncio.get_running_loop().create_future()
        failed.set_exception(self.failure(SECRET_DETAIL))
        return Submission(self, failed)


def exploding(failure: type[Exception]) -> object:
    def compose(_app: web.Application, services: Services) -> Services:
        chat = ExplodingChat(
            services.store, services.broker, services.metrics, services.fanout.deliver,
            services.chat.room_state,
        )
        chat.failure = failure
        return replace(services, chat=chat)

    return compose


async def test_handler_bug_is_internal_error_with_a_logged_traceback(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(compose=exploding(RuntimeError))
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    await alice.send_raw(frame("SEND", [*SEND_JSON, ("receipt", "r")], send_body(room, "hi")))
    error = await expect_fatal(alice, "internal error", 1011)
    assert SECRET_DETAIL.encode() not in error.body and b"RuntimeError" not in error.body
    response = await server.client.post(f"/api/chat-rooms/{room}/messages",
                                        json={"content": "hi"}, headers=server.auth("alice"))
    assert response.status == 500
    text = await response.text()
    assert SECRET_DETAIL not in text and "Traceback" not in text
    assert (await response.json())["error"]["message"] == "internal error"
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 2  # one traceback per failure, in the log only


async def test_p21_database_failure_answers_error_with_the_receipt_id(
    make_server: ServerFactory,
) -> None:
    server = await make_server(compose=exploding(StoreUnavailable))
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    await alice.send_raw(frame("SEND", [*SEND_JSON, ("receipt", "x")], send_body(room, "hi")))
    error = await expect_fatal(alice, "message not stored: try again", 1013)
    assert error.get("receipt-id") == "x"
    assert SECRET_DETAIL.encode() not in error.body
    response = await server.client.post(f"/api/chat-rooms/{room}/messages",
                                        json={"content": "hi"}, headers=server.auth("alice"))
    assert response.status == 503 and response.headers["Retry-After"]
    assert SECRET_DETAIL not in await response.text()


async def test_bad_input_logs_no_traceback(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer's mistakes get a precise message and no traceback in the log."""
    caplog.set_level(logging.INFO)
    server = await make_server()
    alice = await server.ws("alice")
    await alice.send_raw(b"SEND\ncontent-length:x\n\n\0")
    await expect_fatal(alice, "invalid content-length", 1002)
    assert not [r for r in caplog.records if r.exc_info]


class UnreachableStoreChat(ChatService):
    """The membership check cannot reach the database (e.g. no pooled connection in time)."""

    async def may_read(self, user: UserId, room_id: RoomId) -> bool:
        raise StoreUnavailable(SECRET_DETAIL)


async def test_database_failure_on_subscribe_is_try_again_later_not_internal_error(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def compose(_app: web.Application, services: Services) -> Services:
        return replace(services, chat=UnreachableStoreChat(
            services.store, services.broker, services.metrics, services.fanout.deliver,
            services.chat.room_state,
        ))

    server = await make_server(compose=compose)
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    await alice.send_raw(frame("SUBSCRIBE", [("destination", f"/queue/chat-rooms/{room}"),
                                             ("id", "1")]))
    error = await expect_fatal(alice, "try again later", 1013)
    assert SECRET_DETAIL.encode() not in error.body
    assert not [r for r in caplog.records if r.exc_info]  # not our bug: no traceback
