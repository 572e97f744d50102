"""GET /metrics: Prometheus text that moves with what the server does."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from chat_server.auth import TokenAuthority
from chat_server.stomp.frames import Command
from tests.conftest import StompFactory, create_direct_room
from tests.waiting import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: TestClient[Any, Any]) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_connections_frames_messages_and_errors(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "1"})
    alice = await stomp("alice")
    for n in range(3):
        await alice.send_message(room, f"m{n}", receipt=str(n))
        await alice.receive()
    for _ in range(3):
        await bob.receive_message()
    await client.get("/api/chat-rooms/99", headers={"Authorization": "Bearer nope"})

    samples = await scrape(client)
    assert samples[("chat_connections", ())] == 2
    assert samples[("chat_subscriptions", ())] == 1
    assert samples[("chat_messages_stored_total", ())] == 3
    assert samples[("chat_messages_delivered_total", ())] == 3
    assert samples[("chat_frames_received_total", (("command", "SEND"),))] == 3
    assert samples[("chat_frames_sent_total", (("command", "RECEIPT"),))] == 4
    assert samples[("chat_frames_sent_total", (("command", "MESSAGE"),))] == 3
    assert samples[("chat_delivery_latency_seconds_count", ())] == 3
    assert samples[("chat_broker_connected", ())] == 1
    assert samples[("chat_errors_total", (("kind", "401"), ("source", "rest")))] == 1

    mallory = await stomp("mallory")
    await mallory.subscribe(f"/queue/chat-rooms/{room}")
    await mallory.expect_error()
    await bob.ws.close()
    # The server's handler ends just after the client sees the close: scrape until it has.
    scraped: list[Samples] = []

    async def bobs_handler_ended() -> bool:
        scraped.append(await scrape(client))
        return scraped[-1][("chat_connections", ())] == 1

    await eventually(bobs_handler_ended, 2.0, "chat_connections back to 1 after bob's close",
                     lambda: f"last scrape: {scraped[-1:]}")
    samples = scraped[-1]
    assert samples[("chat_errors_total", (("kind", "policy_violation"), ("source", "stomp")))] == 1
    assert samples[("chat_subscriptions", ())] == 0
    assert samples[("chat_connections", ())] == 1
