"""Which characters each kind of text may hold: one regex per rule, checked by the server and
published as the OpenAPI `pattern`, so both say the same thing.

Every pattern is written in the part of the syntax that Python's `re` and ECMAScript (with or
without the `u` flag) read alike: `\\uXXXX` escapes of Basic Multilingual Plane characters only,
character classes, `*`, groups and lookaheads. Never `$` (Python's also matches before a final
newline; `(?![\\s\\S])` is the end of the text in both), never `\\d`, `\\w` or `\\s` (their Unicode
meaning differs), never an astral character (ECMAScript without `u` sees two surrogates).

Each rule names its characters outright instead of asking for Unicode categories, so a user id
that is valid today stays valid when Python's Unicode database grows, in every language.
Characters outside the Basic Multilingual Plane (emoji, most of them) are always allowed: no
pattern can name them in both dialects. Lone surrogates cannot be named either; they are
refused by `has_lone_surrogate`, and the OpenAPI descriptions say so.
"""

from __future__ import annotations

import re

# --- Character sets: bodies of `[...]` classes ------------------------------------------------

#: C0 and C1 controls and DEL (Unicode category Cc).
CONTROLS = r"\u0000-\u001f\u007f-\u009f"
#: The controls chat text may not hold: C0 but tab and newline, and DEL (BAD_INPUTS F25, R11).
TEXT_CONTROLS = r"\u0000-\u0008\u000b-\u001f\u007f"
#: Line and paragraph separators (Zl, Zp).
LINE_BREAKS = r"\u2028\u2029"
#: Space separators other than the ASCII space (Zs): no-break, em, ideographic, ...
OTHER_SPACES = r"\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
#: Invisible format characters (Cf), bidi overrides and isolates among them, except the
#: zero-width joiner (U+200D) that emoji sequences like 👩‍👩‍👧 need.
FORMAT_BUT_JOINER = (
    r"\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b\u200c\u200e\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
)
#: The zero-width joiner, a format character too.
JOINER = r"\u200d"
#: The Private Use Area and the noncharacters of the Basic Multilingual Plane.
PRIVATE_AND_NONCHARACTERS = r"\ue000-\uf8ff\ufdd0-\ufdef\ufffe\uffff"
#: What Python's `str.strip()` removes (`str.isspace`), named outright: `\s` differs in
#: ECMAScript (it has U+FEFF and lacks U+001C-U+001F and U+0085).
WHITESPACE = (
    r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
)

_END = r"(?![\s\S])"  # the end of the text, in both dialects
_NOT_BLANK = rf"(?![{WHITESPACE}]*{_END})"  # something other than whitespace follows

# --- The rules ----------------------------------------------------------------------------

_NOT_IN_IDS = (
    CONTROLS + LINE_BREAKS + OTHER_SPACES + FORMAT_BUT_JOINER + JOINER + PRIVATE_AND_NONCHARACTERS
)
_NO_OUTER_SPACE = rf"(?! )(?![\s\S]* {_END})"  # neither starts nor ends with a space

#: A user id or a clientMessageId: visible characters and inner ASCII spaces; no controls,
#: line breaks, other spaces, format characters, private-use characters or noncharacters
#: (in the Basic Multilingual Plane). Its length (1-128) is a separate rule.
IDENTIFIER = re.compile(rf"^{_NO_OUTER_SPACE}[^{_NOT_IN_IDS}]*{_END}")

#: Chat text: anything but C0 controls other than tab and newline, and DEL; not only whitespace.
TEXT = re.compile(rf"^{_NOT_BLANK}[^{TEXT_CONTROLS}]*{_END}")

#: A name people see (a room's): no controls at all, no line breaks, no invisible format
#: characters but the zero-width joiner; not only whitespace. Inner and outer spaces of any
#: kind are allowed (outer ones are trimmed when it is stored).
NAME = re.compile(rf"^{_NOT_BLANK}[^{CONTROLS}{LINE_BREAKS}{FORMAT_BUT_JOINER}]*{_END}")


def has_lone_surrogate(text: str) -> bool:
    """True for a string no UTF-8 can carry: JSON's `"\\ud800"` escape makes one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
