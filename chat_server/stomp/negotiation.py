"""What two STOMP peers agree on at CONNECT: the version and the heart-beat intervals."""

from __future__ import annotations

import re
from dataclasses import dataclass

from chat_server.stomp.errors import StompProtocolError
from chat_server.stomp.frames import Version

SUPPORTED_VERSIONS = (Version.V1_0, Version.V1_1, Version.V1_2)
#: WebSocket subprotocol names (RFC 6455 registry) and the STOMP version each stands for.
SUBPROTOCOLS = {"v10.stomp": Version.V1_0, "v11.stomp": Version.V1_1, "v12.stomp": Version.V1_2}
#: Heart-beat values beyond this are clamped rather than overflowing timers (BAD_INPUTS P8).
MAX_HEARTBEAT_MS = 2**31 - 1
_HEARTBEAT = re.compile(r"([0-9]+),([0-9]+)", re.ASCII)


@dataclass(frozen=True, slots=True)
class HeartBeats:
    """Negotiated intervals in ms; 0 means none (STOMP 1.2, "Heart-beating")."""

    send_ms: int
    receive_ms: int


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, 0
    match = _HEARTBEAT.fullmatch(value)
    if match is None:
        raise StompProtocolError("invalid heart-beat", detail="expected heart-beat:<cx>,<cy>")
    return min(int(match[1]), MAX_HEARTBEAT_MS), min(int(match[2]), MAX_HEARTBEAT_MS)


def negotiate_heart_beats(server_ms: int, client: tuple[int, int]) -> HeartBeats:
    client_send, client_receive = client
    send = 0 if server_ms == 0 or client_receive == 0 else max(server_ms, client_receive)
    receive = 0 if server_ms == 0 or client_send == 0 else max(server_ms, client_send)
    return HeartBeats(send, receive)


def negotiate_version(accept_version: str | None, subprotocol: Version | None) -> Version:
    """The highest version both sides speak, capped by the WebSocket subprotocol if any."""
    if accept_version is None:
        offered = {Version.V1_0}  # STOMP 1.0 clients send no accept-version
    else:
        offered = {Version(v) for v in accept_version.split(",") if v in Version._value2member_map_}
    usable = [v for v in SUPPORTED_VERSIONS if v in offered]
    if subprotocol is not None:
        usable = [v for v in usable if v <= subprotocol] or usable
    if not usable:
        raise StompProtocolError(
            "unsupported version",
            detail="supported versions are " + ",".join(SUPPORTED_VERSIONS),
        )
    return usable[-1]
