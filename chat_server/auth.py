"""Identity: HS256 JWTs signed by the host application, and the secret they are checked with."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from chat_server.charsets import IDENTIFIER, has_lone_surrogate
from chat_server.models import UserId

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
#: Clock skew tolerated between the host application that signs tokens and this server.
LEEWAY_S = 30
MAX_USER_ID_CHARS = 128


class AuthenticationFailed(Exception):
    """Any reason a token is refused; deliberately not more specific (BAD_INPUTS P4)."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: UserId
    #: Epoch seconds at which the token expires, or None for a token without `exp`.
    expires_at: float | None


class TokenAuthority:
    """Checks and mints tokens with one secret."""

    def __init__(
        self, secret: str, *, leeway_s: float = LEEWAY_S, require_exp: bool = True
    ) -> None:
        if not secret:
            raise ValueError("the JWT secret must not be empty")
        self._secret = secret
        self._leeway_s = leeway_s
        self._required = ["sub", "exp"] if require_exp else ["sub"]

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],  # never "none", never a key-confusion algorithm
                leeway=self._leeway_s,
                options={"require": self._required},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("authentication failed") from exc
        subject = claims.get("sub")
        if not valid_user_id(subject):
            raise AuthenticationFailed("authentication failed")
        expires = claims.get("exp")
        if expires is None:
            return Identity(UserId(str(subject)), None)  # only where require_exp is off
        # PyJWT checks `int(exp)`, so "9999999999" or true pass its check; RFC 7519 4.1.4 says
        # NumericDate, and a session is timed by this very value: a JSON number or nothing.
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise AuthenticationFailed("authentication failed")
        if not math.isfinite(expires):
            raise AuthenticationFailed("authentication failed")
        # The same leeway holds while connected: a session ends at exp + leeway, this clock.
        return Identity(UserId(str(subject)), float(expires) + self._leeway_s)

    def mint(self, user_id: str, ttl_s: int = 86400) -> str:
        now = int(time.time())
        return jwt.encode(
            {"sub": user_id, "iat": now, "exp": now + ttl_s}, self._secret, algorithm=ALGORITHM
        )


def valid_user_id(value: object) -> bool:
    """A user id is 1-128 characters of `charsets.IDENTIFIER`: the rule REST and STOMP check
    (no controls, no separators that break logs, no outer spaces)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_USER_ID_CHARS
        and IDENTIFIER.match(value) is not None
        and not has_lone_surrogate(value)
    )


def bearer_token(header_value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value, else None."""
    if not header_value:
        return None
    scheme, _, token = header_value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def secret_file(sqlite_file: Path) -> Path:
    """Where a generated secret is kept: beside the SQLite database."""
    return sqlite_file.with_name(sqlite_file.name + ".jwt-secret")


def make_private_directory(directory: Path) -> None:
    """Create the directory of the database and its secret, 0700, if it is not there yet;
    an existing one is left as its owner made it. A failure is reported by whatever next writes
    there (the store says the database is unavailable)."""
    with contextlib.suppress(OSError):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def load_or_create_secret(configured: str | None, sqlite_file: Path | None) -> str:
    """`CHAT_JWT_SECRET`, else a random secret kept beside the SQLite database (mode 0600)."""
    if configured:
        return configured
    if sqlite_file is None:
        raise ValueError("CHAT_JWT_SECRET is required when DATABASE_URL is PostgreSQL")
    path = secret_file(sqlite_file)
    make_private_directory(path.parent)
    if not path.exists():
        _publish_new_secret(path)
    secret = path.read_text(encoding="ascii").strip()
    if not secret:
        raise ValueError(f"{path} is empty: delete it or set CHAT_JWT_SECRET")
    return secret


def _publish_new_secret(path: Path) -> None:
    # Written to a private temp file, then hard-linked into place: the link fails if another
    # worker got there first, so every worker ends up reading one complete secret.
    temp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    try:
        os.link(temp, path)
    except FileExistsError:
        return
    finally:
        temp.unlink()
    log.warning(
        "CHAT_JWT_SECRET is not set: generated a secret in %s; set CHAT_JWT_SECRET to the secret "
        "your application signs tokens with",
        path,
    )
