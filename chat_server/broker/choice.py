"""Which engine carries the news between workers: chosen once, by the broker URL's scheme.

Each engine module is imported only when its scheme is chosen, so a deployment loads the one
client library it uses.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from chat_server.broker.base import Broker
from chat_server.config import Settings

#: scheme -> engine, in the order the refusal message names them.
ENGINES = {
    "redis": "Redis pub/sub",
    "rediss": "Redis pub/sub over TLS",
    "redis+cluster": "Redis Cluster, sharded pub/sub",
    "amqp": "RabbitMQ",
    "amqps": "RabbitMQ over TLS",
    "kafka": "Kafka",
    "nats": "NATS",
    "tls": "NATS over TLS",
}


def broker_url(settings: Settings) -> tuple[str, str] | None:
    """(the variable it came from, the URL): `CHAT_BROKER_URL`, else `REDIS_URL`, else None."""
    if settings.broker_url:
        return "CHAT_BROKER_URL", settings.broker_url
    if settings.redis_url:
        return "REDIS_URL", settings.redis_url
    return None


def check_broker_url(settings: Settings) -> None:
    """Everything about the broker URL that can be known without connecting (ValueError, one
    line naming the variable)."""
    found = broker_url(settings)
    if found is None:
        return
    variable, url = found
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in ENGINES:
        raise ValueError(
            f"{variable}: unknown scheme {scheme!r} (use {', '.join(ENGINES)})"
        )
    host = url.split("://", 1)[1].rsplit("@", 1)[-1].split(",", 1)[0].split("/", 1)[0]
    if not host.split(":", 1)[0]:
        raise ValueError(f"{variable}: {scheme}:// names no host")


def build_broker(settings: Settings) -> Broker:
    """The engine for the configured URL (the in-process broker without one)."""
    found = broker_url(settings)
    if found is None:
        from chat_server.broker.memory import MemoryBroker

        return MemoryBroker()
    check_broker_url(settings)
    _, url = found
    scheme = urlsplit(url).scheme.lower()
    options = {
        "probe_interval_s": settings.broker_ping_interval_s,
        "timeout_s": settings.broker_timeout_s,
    }
    if scheme in ("redis", "rediss"):
        from chat_server.broker.redis import RedisBroker

        return RedisBroker.from_url(
            url,
            prefix=settings.redis_prefix,
            ping_interval_s=settings.redis_ping_interval_s,
            command_timeout_s=settings.redis_timeout_s,
        )
    if scheme == "redis+cluster":
        from chat_server.broker.redis_cluster import RedisClusterBroker

        return RedisClusterBroker(url, prefix=settings.redis_prefix, **options)
    if scheme in ("amqp", "amqps"):
        from chat_server.broker.amqp import AmqpBroker

        return AmqpBroker(url, exchange=settings.broker_namespace, **options)
    if scheme == "kafka":
        from chat_server.broker.kafka import KafkaBroker

        return KafkaBroker(url, topic=settings.broker_namespace,
                           partitions=settings.kafka_partitions, **options)
    from chat_server.broker.nats import NatsBroker

    return NatsBroker(url, namespace=settings.broker_namespace, **options)
