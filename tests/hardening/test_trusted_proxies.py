"""W15: the client address behind trusted proxies (X-Forwarded-For), and only behind them."""

from __future__ import annotations

import pytest

from chat_server.config import Settings
from chat_server.proxies import MAX_HOPS, TrustedProxies, parse_address
from tests.hardening.conftest import Server, ServerFactory, connect_bytes, expect_fatal
from tests.stomp_client import StompClient

NGINX = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert TrustedProxies().client_address("127.0.0.1", ["203.0.113.9"]) == "127.0.0.1"


def test_an_untrusted_peer_cannot_name_another_client() -> None:
    assert NGINX.client_address("198.51.100.7", ["203.0.113.9"]) == "198.51.100.7"


def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() -> None:
    # The client forged the first hop; nginx appended the address it really came from.
    assert NGINX.client_address("127.0.0.1", ["203.0.113.9, 198.51.100.7"]) == "198.51.100.7"


def test_a_chain_of_trusted_proxies_is_walked_through() -> None:
    header = ["203.0.113.9, 198.51.100.7, 10.1.2.3", "10.9.9.9"]  # values in order, combined
    assert NGINX.client_address("127.0.0.1", header) == "198.51.100.7"


def test_a_trusted_peer_without_the_header_is_itself_the_client() -> None:
    assert NGINX.client_address("127.0.0.1", []) == "127.0.0.1"
    assert NGINX.client_address("10.0.0.5", ["10.0.0.6"]) == "10.0.0.6"  # all trusted: leftmost


@pytest.mark.parametrize("garbage", ["unknown", "", "1.2.3.4:80", "300.1.1.1", "<script>"])
def test_garbage_in_the_header_stops_the_walk_at_the_last_believed_hop(garbage: str) -> None:
    assert NGINX.client_address("127.0.0.1", [f"198.51.100.7, {garbage}"]) == "127.0.0.1"
    assert NGINX.client_address("127.0.0.1", [f"{garbage}, 10.0.0.2"]) == "10.0.0.2"


def test_ipv6_and_mapped_addresses_are_normalised() -> None:
    assert NGINX.client_address("::ffff:127.0.0.1", ["2001:DB8::1"]) == "2001:db8::1"
    assert NGINX.client_address("fd00::1", ["[2001:db8::2]"]) == "2001:db8::2"
    assert parse_address("::ffff:10.0.0.1") == parse_address("10.0.0.1")


def test_only_the_last_hops_are_read() -> None:
    many = ", ".join(["10.0.0.1"] * (MAX_HOPS * 10))
    assert NGINX.client_address("127.0.0.1", [f"198.51.100.7, {many}"]) == "10.0.0.1"


def test_unknown_peer() -> None:
    assert NGINX.client_address(None, ["198.51.100.7"]) == "?"


def test_setting_is_read_from_the_environment_and_checked_at_start() -> None:
    settings = Settings.from_env({"CHAT_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert Settings.from_env({}).trusted_proxies == ()
    with pytest.raises(ValueError, match="CHAT_TRUSTED_PROXIES"):
        Settings.from_env({"CHAT_TRUSTED_PROXIES": "nginx.internal"})


async def fail_connect(server: Server, forwarded_for: str) -> None:
    ws = await server.client.ws_connect("/ws", protocols=("v12.stomp",),
                                        headers={"X-Forwarded-For": forwarded_for})
    stomp = StompClient(ws)
    server.opened.append(stomp)
    await stomp.send_raw(connect_bytes("not-a-token"))
    await expect_fatal(stomp, "authentication failed", 1008)


async def upgrade_status(server: Server, forwarded_for: str) -> int:
    raw = await server.raw(headers={"X-Forwarded-For": forwarded_for})
    return raw.status


@pytest.mark.parametrize(("trusted", "others_locked_out"), [((), True), (("127.0.0.1",), False)],
                         ids=["untrusted-peer", "trusted-peer"])
async def test_failed_connects_key_on_the_forwarded_client_only_from_a_trusted_peer(
    make_server: ServerFactory, trusted: tuple[str, ...], others_locked_out: bool,
) -> None:
    server = await make_server(auth_failures_per_min=2, trusted_proxies=trusted)
    for _ in range(2):
        await fail_connect(server, "198.51.100.7")
    assert await upgrade_status(server, "198.51.100.7") == 429
    assert (await upgrade_status(server, "198.51.100.8") == 429) is others_locked_out


async def test_connection_cap_keys_on_the_forwarded_client(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_ip=1, trusted_proxies=("127.0.0.1",))
    assert await upgrade_status(server, "198.51.100.7") == 101
    assert await upgrade_status(server, "198.51.100.7") == 429
    assert await upgrade_status(server, "198.51.100.8") == 101
