"""The demo chat page (`chat-server serve --demo`): static files at `/` and a demo-only sign-in.

DEMO ONLY. `POST /demo/sign-in` hands a signed token to whoever asks for any user id, with no
password: anyone can be anyone. It exists so that a newcomer can try the server in two browser
tabs. A real deployment gets its tokens from the host application and never sets `demo`, and
nothing here is registered unless `Settings.demo` is true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from chat_server.config import Settings
from chat_server.schemas import MemberSchema, load, parse_json_object
from chat_server.web.rest import UnsupportedMediaType, json_response
from chat_server.web.services import SERVICES

STATIC_DIR: Final = Path(__file__).resolve().parent / "demo"
#: Lifetime of a demo token: a working day, so a demo never outlives its afternoon by much.
DEMO_TOKEN_TTL_S: Final = 12 * 3600

#: The only files served, with their content types: no directory listing, no path from the URL.
_FILES: Final = {
    "index.html": "text/html",
    "style.css": "text/css",
    "stomp.js": "text/javascript",
    "app.js": "text/javascript",
}
#: Everything the page loads comes from this server; scripts only from files, never inline.
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def setup_demo(app: web.Application, settings: Settings) -> None:
    """Registers the demo page and the demo sign-in, only when `settings.demo` is true."""
    if not settings.demo:
        return
    app.router.add_get("/", _index)
    app.router.add_get("/demo/{name}", _static)
    app.router.add_post("/demo/sign-in", _sign_in)


def _file_response(name: str) -> web.Response:
    body = (STATIC_DIR / name).read_bytes()
    return web.Response(
        body=body, content_type=_FILES[name], charset="utf-8", headers=_SECURITY_HEADERS
    )


async def _index(_request: web.Request) -> web.Response:
    return _file_response("index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _file_response(name)


async def _sign_in(request: web.Request) -> web.Response:
    """DEMO ONLY: `{"userId": "alice"}` -> `{"token": ..., "userId": "alice"}`, no password."""
    if request.content_type != "application/json":
        # Also what keeps another site's plain form post from minting tokens here.
        raise UnsupportedMediaType("Content-Type must be application/json")
    user_id = load(MemberSchema(), parse_json_object(await request.read()))
    token = request.app[SERVICES].tokens.mint(user_id, ttl_s=DEMO_TOKEN_TTL_S)
    return json_response({"token": token, "userId": user_id, "demo": True})
