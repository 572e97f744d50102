"""The engine is chosen by the broker URL's scheme; an unknown one is refused at start."""

from __future__ import annotations

import pytest

from chat_server.__main__ import main
from chat_server.broker.amqp import AmqpBroker
from chat_server.broker.choice import build_broker
from chat_server.broker.kafka import KafkaBroker, bootstrap_servers
from chat_server.broker.memory import MemoryBroker
from chat_server.broker.names import word_of
from chat_server.broker.nats import NatsBroker
from chat_server.broker.redis import RedisBroker
from chat_server.broker.redis_cluster import RedisClusterBroker, cluster_nodes
from chat_server.config import Settings
from tests.services import free_port


@pytest.mark.parametrize(("url", "engine"), [
    ("redis://127.0.0.1:6380/0", RedisBroker),
    ("rediss://127.0.0.1:6380/0", RedisBroker),
    ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", RedisClusterBroker),
    ("amqp://guest:guest@127.0.0.1:5673/", AmqpBroker),
    ("amqps://u:p@rabbit.example:5671/vhost", AmqpBroker),
    ("kafka://127.0.0.1:9093", KafkaBroker),
    ("nats://127.0.0.1:4223", NatsBroker),
    ("tls://127.0.0.1:4223", NatsBroker),
])
def test_the_scheme_names_the_engine(url: str, engine: type) -> None:
    assert isinstance(build_broker(Settings(broker_url=url)), engine)


def test_broker_url_wins_over_redis_url_and_none_is_in_process() -> None:
    both = Settings(broker_url="nats://127.0.0.1:4223", redis_url="redis://127.0.0.1:6380/0")
    assert isinstance(build_broker(both), NatsBroker)
    assert isinstance(build_broker(Settings(redis_url="redis://h:1/0")), RedisBroker)
    assert isinstance(build_broker(Settings()), MemoryBroker)


def test_settings_read_chat_broker_url() -> None:
    settings = Settings.from_env({"CHAT_BROKER_URL": "amqp://h/", "CHAT_KAFKA_PARTITIONS": "3"})
    assert (settings.broker_url, settings.kafka_partitions) == ("amqp://h/", 3)


@pytest.mark.parametrize(("flag", "variable"), [("--broker-url", "CHAT_BROKER_URL"),
                                                ("--redis-url", "REDIS_URL")])
def test_serve_refuses_an_unknown_scheme_in_one_line(
    flag: str, variable: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHAT_BROKER_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    code = main(["serve", "--port", str(free_port()), flag, "x://127.0.0.1:1"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"chat-server: {variable}: unknown scheme 'x' "
        "(use redis, rediss, redis+cluster, amqp, amqps, kafka, nats, tls)"
    ]


def test_engine_names_are_words_never_patterns() -> None:
    assert word_of("room:12") == "room.12"
    assert word_of("user:alice_b-1") == "user.alice_b-1"
    for odd in ("user:a.b", "user:*", "user:#", "user:>", "user:" + "é" * 128):
        word = word_of(odd)
        assert word.startswith("user.~") and not set(word[5:]) & set(".*#> ")
        assert len(word.encode()) < 64


def test_url_lists_of_hosts() -> None:
    assert bootstrap_servers("kafka://a:9093,b") == "a:9093,b:9092"
    assert cluster_nodes("redis+cluster://u:pw@h1:7000,h2:7001") == [("h1", 7000), ("h2", 7001)]
