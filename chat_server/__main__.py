"""The `chat-server` command: serve, token, migrate."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from chat_server.auth import (
    TokenAuthority,
    load_or_create_secret,
    make_private_directory,
    valid_user_id,
)
from chat_server.config import Settings
from chat_server.logs import configure_logging_from_env
from chat_server.store.urls import sqlite_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one server process")
    serve.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (PORT, default 8080)")
    serve.add_argument("--database-url", help="DATABASE_URL (default sqlite:///chat.db)")
    serve.add_argument("--redis-url", help="REDIS_URL (default: in-process broker)")
    serve.add_argument(
        "--demo", action="store_true", default=None,
        help="also serve the demo chat page at / with a demo-only sign-in (CHAT_DEMO=1)",
    )

    token = commands.add_parser("token", help="print a signed token for a user")
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds (24 h)")
    token.add_argument("--database-url", help="DATABASE_URL (locates the generated secret)")

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--database-url", help="DATABASE_URL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = ("host", "port", "database_url", "redis_url", "demo")
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


def _serve(settings: Settings) -> int:
    from chat_server.gctune import tune_gc_on_startup
    from chat_server.web.app import create_app
    from chat_server.web.serving import run

    app = create_app(settings)
    app.on_startup.append(tune_gc_on_startup)
    run(app, settings, _new_event_loop())  # run_app, plus a bound on the request head time
    return 0


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (it is a dependency off Windows), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _token(settings: Settings, user_id: str, ttl: int) -> int:
    if not valid_user_id(user_id):
        print("chat-server: a user id is 1-128 printable characters", file=sys.stderr)
        return 2
    try:
        secret = load_or_create_secret(settings.jwt_secret, sqlite_path(settings.database_url))
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
