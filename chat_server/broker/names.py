"""Topic names as the engines' own names: AMQP routing keys and NATS subjects.

Both split a name into words at `.` and read `*`, `#` or `>` as wildcards, and a user id may
hold any printable character. So a topic's id part is kept as it is only when it is made of
plain characters, and is replaced by a digest of it otherwise: a name never becomes a pattern,
never grows past the engines' limits (255 bytes for a routing key), and the engine module maps
a delivered name back through the topics it subscribed.
"""

from __future__ import annotations

import hashlib
import re

_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def word_of(topic: str, separator: str = ".") -> str:
    """`room:12` -> `room.12`; `user:a.b*` -> `user.~<digest>`: one fixed-size word per id."""
    kind, _, name = topic.partition(":")
    if _PLAIN.fullmatch(name) is None:
        name = "~" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return f"{kind}{separator}{name}"
