"""A SEND to /app/message (or /app/typing, /app/read), read into models; and how a refused one
is answered in STOMP."""

from __future__ import annotations

from chat_server import codec
from chat_server.destinations import SEND_DESTINATION
from chat_server.errors import ChatError, NotAMember, RoomNotFound, ValidationFailed
from chat_server.models import MessageDraft, ReadRequest, TypingSignal, UserHeaders
from chat_server.schemas import ReadSchema, TypingSchema, load, message_schema, parse_json_object
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Frame

_JSON_TYPES = ("application/json",)


class SendReader:
    """Checks a SEND's destination, body and `x-` headers; one per worker (the schema is built
    once)."""

    def __init__(
        self, max_body_bytes: int, max_user_headers: int, max_user_header_bytes: int
    ) -> None:
        self._schema = message_schema(max_body_bytes)
        self._max_user_headers = max_user_headers
        self._max_user_header_bytes = max_user_header_bytes

    def read(self, frame: Frame) -> tuple[MessageDraft, UserHeaders]:
        """The message a SEND asks for; `StompProtocolError` for a destination we do not have,
        `ChatError` for a body or headers the application refuses."""
        if frame.get("destination") != SEND_DESTINATION:
            raise StompProtocolError("Unknown destination", receipt_id=frame.get("receipt"))
        draft: MessageDraft = load(self._schema, _json_body(frame))
        return draft, self._user_headers(frame)

    def _user_headers(self, frame: Frame) -> UserHeaders:
        """The SEND's `x-` headers (first of repeats wins), bounded; all others are dropped."""
        chosen: dict[str, str] = {}
        for name, value in frame.headers:
            if not name.startswith("x-") or name in chosen:
                continue
            if len(chosen) >= self._max_user_headers:
                raise ValidationFailed(f"at most {self._max_user_headers} x- headers")
            if len(value.encode("utf-8")) > self._max_user_header_bytes:
                raise ValidationFailed(
                    f"x- header values are at most {self._max_user_header_bytes} bytes"
                )
            chosen[name] = value
        return tuple(chosen.items())


_TYPING = TypingSchema()
_READ = ReadSchema()


def typing_signal(frame: Frame) -> TypingSignal:
    """A `SEND /app/typing` body; `ChatError` for one the application refuses."""
    signal: TypingSignal = load(_TYPING, _json_body(frame))
    return signal


def read_request(frame: Frame) -> ReadRequest:
    """A `SEND /app/read` body; `ChatError` for one the application refuses."""
    request: ReadRequest = load(_READ, _json_body(frame))
    return request


def _json_body(frame: Frame) -> object:
    content_type = frame.get("content-type")
    # The usual header, exactly as clients send it, needs no parsing.
    if (
        content_type  # absent or empty: JSON, as before
        and content_type != "application/json"
        and content_type.split(";")[0].strip().lower() not in _JSON_TYPES
    ):
        raise ValidationFailed("content-type must be application/json")
    return parse_json_object(frame.body)


def refusal_error(frame: Frame, refusal: ChatError) -> StompProtocolError:
    """The STOMP specification's answer to a refused SEND: ERROR, then close."""
    code = (
        CloseCode.POLICY_VIOLATION
        if isinstance(refusal, NotAMember | RoomNotFound)
        else CloseCode.PROTOCOL_ERROR
    )
    return StompProtocolError(
        refusal.message, detail=refusal.code, close_code=code, receipt_id=frame.get("receipt")
    )


def refusal_body(frame: Frame, refusal: ChatError) -> bytes:
    """Spring's answer on `/user/queue/errors`: the refusal as JSON; the connection stays."""
    return codec.dumps(
        {
            "error": {"code": refusal.code, "message": refusal.message, "details": refusal.details},
            "receiptId": frame.get("receipt"),
            "clientMessageId": _client_message_id(frame.body),
        }
    )


def _client_message_id(body: bytes) -> str | None:
    try:
        value = codec.loads(body)
    except codec.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("clientMessageId"), str):
        return str(value["clientMessageId"])
    return None
