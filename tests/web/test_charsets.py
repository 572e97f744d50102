"""charsets: the text rules the server checks and the OpenAPI document shows."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest
from marshmallow import ValidationError

from chat_server import charsets
from chat_server.auth import valid_user_id
from chat_server.charsets import IDENTIFIER, NAME, TEXT, has_lone_surrogate
from chat_server.schemas import MemberSchema

#: Every character of the Basic Multilingual Plane that a Python str can hold whole.
BMP = [chr(code) for code in range(0x10000) if not 0xD800 <= code <= 0xDFFF]


def assigned(char: str) -> bool:
    return unicodedata.category(char) != "Cn"


@pytest.mark.parametrize("text", ["\ud800", "a\udfff", "\udbff\udc00"], ids=ascii)
def test_lone_surrogates_are_found(text: str) -> None:
    assert has_lone_surrogate(text)


@pytest.mark.parametrize("text", ["", "abc", "😀", "\U0010ffff", "\uffff"], ids=ascii)
def test_whole_characters_are_not_lone_surrogates(text: str) -> None:
    assert not has_lone_surrogate(text)


@pytest.mark.parametrize(
    "user_id",
    ["alice", "alice smith", "a  b", "Zoë", "用户", "a😀b", "x" * 500, "auth0|5f7c", "a/b",
     "\U000e0001"],  # beyond the BMP all is allowed: no portable pattern can name it
    ids=ascii,
)
def test_identifier_takes_visible_characters_and_inner_spaces(user_id: str) -> None:
    assert IDENTIFIER.search(user_id)  # the length is a rule of its own


@pytest.mark.parametrize(
    "user_id",
    [" alice", "alice ", " ", "a\tb", "a\nb", "alice\n", "a\x00b", "a\x7fb", "a\x85b",
     "a\u00a0b", "a\u3000b", "a\u2028b", "a\u200bb", "a\u200db", "a\u202eb", "a\u2066b",
     "\ufeffa", "a\ue000", "a\ufdd0", "a\uffff"],
    ids=ascii,
)
def test_identifier_refuses_controls_breaks_outer_and_other_spaces_and_invisibles(
    user_id: str,
) -> None:
    assert IDENTIFIER.search(user_id) is None


def test_identifier_is_what_isprintable_says_for_every_assigned_bmp_character() -> None:
    """The named lists are the categories Python's isprintable() refuses (Unicode as Python
    3.11 has it), spelled out so that they do not move with a Unicode update."""
    differ = [
        f"U+{ord(char):04X}" for char in BMP
        if assigned(char) and bool(IDENTIFIER.search(f"a{char}a")) != char.isprintable()
    ]
    assert differ == []


@pytest.mark.parametrize("content", ["hi", " hi ", "a\tb\nc", "\ufeff", "\x85x", "😀"], ids=ascii)
def test_text_takes_anything_but_c0_controls_and_blank(content: str) -> None:
    assert TEXT.search(content)


@pytest.mark.parametrize(
    "content", ["", " ", "\t\n ", "\u3000\u00a0", "\u2028", "a\x00", "a\x01b", "a\x1fb", "a\x7fb",
                "hi\r\n"],
    ids=ascii,
)
def test_text_refuses_c0_controls_and_only_whitespace(content: str) -> None:
    assert TEXT.search(content) is None


def test_text_blank_is_what_strip_says_for_every_character() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF or code == 0x7F or (code < 0x20 and char not in "\t\n"):
            continue  # surrogates and the controls chat text refuses anyway
        assert bool(TEXT.search(char * 2)) == bool((char * 2).strip()), f"U+{code:04X}"


@pytest.mark.parametrize(
    "name", ["team", "  team  ", "Café 🎉", "👩\u200d👩\u200d👧", "a\u00a0b", "\ue000"], ids=ascii
)
def test_name_takes_spaces_and_the_zero_width_joiner(name: str) -> None:
    assert NAME.search(name)


@pytest.mark.parametrize(
    "name", ["", "   ", "te\u202eam", "te\u200bam", "te\u2066am", "a\x00b", "a\tb", "a\nb",
             "a\x85b", "a\u2029b", "\u00ad"],
    ids=ascii,
)
def test_name_refuses_controls_breaks_and_invisible_format_characters(name: str) -> None:
    assert NAME.search(name) is None


def test_whitespace_is_pythons_isspace() -> None:
    class_ = re.compile(f"[{charsets.WHITESPACE}]")
    spaces = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert {c for c in map(chr, range(sys.maxunicode + 1)) if class_.fullmatch(c)} == spaces


# --- the patterns read the same in ECMAScript ------------------------------------------------

#: What a pattern may hold once its `\uXXXX` escapes and `[\s\S]` are set aside: ASCII with no
#: escape or construct whose meaning differs between Python's re and ECMAScript.
_DIALECT_TRAPS = re.compile(
    r"\$"  # Python: also before a final newline
    r"|\\[dDwWsSbBAZzxUNpP]"  # Unicode-dependent classes, Python-only escapes, \p needs /u
    r"|\(\?[PaiLmsux<]"  # named groups, inline flags, lookbehind
    r"|[^\x20-\x7e]"  # a raw character: an astral one is two units in ECMAScript without /u
)


def dialect_traps(pattern: str) -> list[str]:
    plain = re.sub(r"\\u[0-9a-f]{4}", "", pattern.replace(r"[\s\S]", ""))
    return _DIALECT_TRAPS.findall(plain)


@pytest.mark.parametrize("regex", [IDENTIFIER, TEXT, NAME], ids=lambda r: str(r.pattern)[:20])
def test_patterns_use_only_what_both_dialects_read_alike(regex: re.Pattern[str]) -> None:
    assert regex.pattern.startswith("^")
    assert regex.pattern.endswith(r"(?![\s\S])")
    assert dialect_traps(regex.pattern) == []


@pytest.mark.parametrize("pattern", ["a$", r"\d+", r"(?P<x>a)", "é", r"(?<!a)b", r"\Z"])
def test_dialect_check_finds_each_trap(pattern: str) -> None:
    assert dialect_traps(pattern)



_USER_IDS = [
    "bob", "a b", "a\U0001f600", "a\u0378", "x" * 128,
    "", " a", "a ", "a\tb", "a\ud800", "x" * 129, "a\u200bb",
]


@pytest.mark.parametrize("user_id", _USER_IDS)
def test_a_token_may_name_exactly_the_user_ids_rest_accepts(user_id: str) -> None:
    """One rule for user ids: `chat-server token` and CONNECT accept what REST (and so the
    OpenAPI document) accepts; an id REST takes as a member could otherwise never sign in."""
    try:
        MemberSchema().load({"userId": user_id})
    except ValidationError:
        rest_accepts = False
    else:
        rest_accepts = True
    assert valid_user_id(user_id) is rest_accepts
