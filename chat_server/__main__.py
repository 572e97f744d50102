"""The `chat-server` command: serve, token, migrate."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from chat_server import __version__
from chat_server.auth import (
    TokenAuthority,
    load_or_create_secret,
    make_private_directory,
    secret_file,
    valid_user_id,
)
from chat_server.config import Settings
from chat_server.logs import configure_logging_from_env
from chat_server.store.urls import sqlite_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"chat-server {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one server process")
    serve.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    # Read as text and checked with the settings: a bad value is one `chat-server:` line.
    serve.add_argument("--port", help="port (PORT, default 8080)")
    serve.add_argument("--database-url", help="DATABASE_URL (default sqlite:///chat.db)")
    serve.add_argument("--redis-url", help="REDIS_URL (default: in-process broker)")
    serve.add_argument(
        "--broker-url",
        help="CHAT_BROKER_URL: redis://, redis+cluster://, amqp://, kafka://, nats:// "
             "(default: REDIS_URL, else in-process)",
    )
    serve.add_argument(
        "--demo", action="store_true", default=None,
        help="also serve the demo chat page at / with a demo-only sign-in (CHAT_DEMO=1)",
    )

    token = commands.add_parser("token", help="print a signed token for a user")
    token.add_argument("user_id")
    token.add_argument("--ttl", default="86400", help="lifetime in seconds (24 h)")
    token.add_argument("--database-url", help="DATABASE_URL (locates the generated secret)")

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--database-url", help="DATABASE_URL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = ("host", "port", "database_url", "redis_url", "broker_url", "demo")
    overrides = {key: getattr(args, key, None) for key in flags}
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 2
    configure_logging_from_env()
    if args.command == "serve":
        return _serve(settings)
    if args.command == "token":
        return _token(settings, args.user_id, args.ttl)
    return _migrate(settings)


#: libpq's sslmode values, the ones the README promises; asyncpg's own `ssl` takes them too.
SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


class BadSetting(Exception):
    """A setting `serve` cannot work with: one line for the operator, exit status 2."""


def _where(url: str, default_port: int) -> str:
    """`host:port` of a service URL, never its user or password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or ["localhost"])[-1]
    try:
        port = parts.port or default_port
    except ValueError:
        return host
    return f"{host}:{port}"


def check_database_url(database_url: str) -> None:
    """Everything about `DATABASE_URL` that can be known without connecting (BadSetting)."""
    try:
        sqlite_path(database_url)  # the store's own parsing: scheme, file, options
    except ValueError as exc:
        message = str(exc) if "DATABASE_URL" in str(exc) else f"DATABASE_URL: {exc}"
        raise BadSetting(message) from None
    query = parse_qs(urlsplit(database_url).query)
    for name in ("sslmode", "ssl"):
        for value in query.get(name, []):
            if value not in SSL_MODES:
                raise BadSetting(
                    f"DATABASE_URL: {name}={value!r} is not one of {', '.join(sorted(SSL_MODES))}"
                )


def check_broker(settings: Settings) -> None:
    """The broker URL's scheme names an engine (`CHAT_BROKER_URL`, else `REDIS_URL`)."""
    from chat_server.broker.choice import check_broker_url

    try:
        check_broker_url(settings)
    except ValueError as exc:
        raise BadSetting(str(exc)) from None


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts (BadSetting when it cannot be)."""
    if not 0 <= port <= 65535:
        # Python's socket would take it modulo 65536 and listen somewhere else.
        raise BadSetting(f"cannot listen on {host}:{port}: a port is 0-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BadSetting(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise BadSetting(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    return sock


def _serve(settings: Settings) -> int:
    from chat_server.errors import StoreUnavailable
    from chat_server.web.app import create_app, tune_gc_on_startup
    from chat_server.web.serving import run

    # Bad settings first, then the port, and only then the database (migrations run at start):
    # an operator who mistyped something hears about it before anything has changed.
    try:
        check_database_url(settings.database_url)
        check_broker(settings)
        if not settings.jwt_secret and sqlite_path(settings.database_url) is None:
            raise BadSetting("CHAT_JWT_SECRET is required when DATABASE_URL is PostgreSQL")
        sock = listening_socket(settings.host, settings.port)
    except BadSetting as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    app.on_startup.append(tune_gc_on_startup)
    try:
        # run_app, plus a bound on the time to a complete request head (web/serving.py)
        run(app, settings, _new_event_loop(), sock)
    except StoreUnavailable as exc:
        database_file = sqlite_path(settings.database_url)
        where = database_file or _where(settings.database_url, 5432)
        print(f"chat-server: cannot start: {exc} at {where}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it is a dependency off Windows), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _token(settings: Settings, user_id: str, ttl_text: str) -> int:
    if not valid_user_id(user_id):
        print("chat-server: a user id is 1-128 printable characters", file=sys.stderr)
        return 2
    try:
        ttl = int(ttl_text)
    except ValueError:
        ttl = 0
    if ttl <= 0:
        # A token that is born expired would be refused by every server: say so instead.
        print(f"chat-server: --ttl must be a positive whole number of seconds, not {ttl_text}",
              file=sys.stderr)
        return 2
    try:
        database_file = sqlite_path(settings.database_url)
        if not settings.jwt_secret and database_file is not None:
            path = secret_file(database_file)
            if not path.exists():
                # A secret made here would sign tokens that no running server accepts.
                print(f"chat-server: no secret at {path} yet: run `chat-server token` where "
                      f"`chat-server serve` runs (its first start creates it), or set "
                      f"CHAT_JWT_SECRET", file=sys.stderr)
                return 2
        secret = load_or_create_secret(settings.jwt_secret, database_file)
    except ValueError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 2
    print(TokenAuthority(secret).mint(user_id, ttl_s=ttl))
    return 0


def _migrate(settings: Settings) -> int:
    from chat_server.errors import StoreUnavailable
    from chat_server.store.migrate import migrate

    try:
        database_file = sqlite_path(settings.database_url)
        if database_file is not None:
            make_private_directory(database_file.parent)
        asyncio.run(migrate(settings.database_url))
    except StoreUnavailable as exc:
        # A release step that cannot reach its database: say so, no traceback, non-zero exit.
        print(f"chat-server: cannot migrate: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
