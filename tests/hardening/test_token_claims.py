"""A12: a token's `exp` must be a JSON number, and a token without one is refused unless
CHAT_JWT_REQUIRE_EXP is off, at CONNECT and over REST alike."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from chat_server.auth import AuthenticationFailed, TokenAuthority
from tests.conftest import SECRET
from tests.hardening.conftest import ServerFactory, connect_bytes, expect_fatal


def signed(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", "iat": int(time.time()), **claims}, SECRET,
                      algorithm="HS256")


FAR = int(time.time()) + 3600
ODD_EXPS = [str(FAR), f"{FAR}.0", True, [FAR], {"t": FAR}, None]


@pytest.mark.parametrize("exp", ODD_EXPS, ids=["digits", "decimal", "true", "list", "obj",
                                                 "null"])
def test_verify_refuses_an_exp_that_is_not_a_number(exp: object) -> None:
    with pytest.raises(AuthenticationFailed):
        TokenAuthority(SECRET).verify(signed(exp=exp))


def test_verify_refuses_a_token_without_exp_by_default() -> None:
    with pytest.raises(AuthenticationFailed):
        TokenAuthority(SECRET).verify(signed())


def test_a_token_without_exp_is_accepted_only_when_the_setting_allows_it() -> None:
    identity = TokenAuthority(SECRET, require_exp=False).verify(signed())
    assert identity.user_id == "alice"
    assert identity.expires_at is None
    # The type rule holds either way.
    with pytest.raises(AuthenticationFailed):
        TokenAuthority(SECRET, require_exp=False).verify(signed(exp=str(FAR)))


def test_numeric_exp_still_times_the_session() -> None:
    identity = TokenAuthority(SECRET, leeway_s=5).verify(signed(exp=FAR))
    assert identity.expires_at == FAR + 5
    assert TokenAuthority(SECRET).verify(signed(exp=FAR + 0.5)).expires_at == FAR + 30.5


@pytest.mark.parametrize("token", [signed(exp=str(FAR)), signed()], ids=["string-exp", "no-exp"])
async def test_connect_refuses_odd_exp(make_server: ServerFactory, token: str) -> None:
    server = await make_server()
    stomp = await server.ws(None)
    await stomp.send_raw(connect_bytes(token))
    await expect_fatal(stomp, "authentication failed", 1008)


@pytest.mark.parametrize("token", [signed(exp=str(FAR)), signed()], ids=["string-exp", "no-exp"])
async def test_rest_refuses_odd_exp(make_server: ServerFactory, token: str) -> None:
    server = await make_server()
    response = await server.client.get("/api/chat-rooms",
                                       headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_without_exp_allowed_by_setting_connect_serves(make_server: ServerFactory) -> None:
    server = await make_server(jwt_require_exp=False)
    stomp = await server.ws(None)
    await stomp.send_raw(connect_bytes(signed()))
    assert (await stomp.receive()).get("user-name") == "alice"
