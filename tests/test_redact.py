"""The one redactor: every form of every secret masked, quotes cut only after masking."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from balwatch import redact, terminal
from balwatch.redact import QUOTE_CHARS, Redactor
from balwatch.secret import Secret
from tests.hostile import visible

# Every character class that encodes differently: non-ASCII, a quote, a backslash, the
# characters URL and base64 encodings treat specially, a space, a character beyond the BMP.
PASSWORD = 'p\u00e4ssw\u00f6rd "q" \\ +/=%& \U0001f511 end'
KEY = "sk-live-4f9a8b7c6d5e"


def encodings(value: str) -> dict[str, str]:
    """``value`` as an echo quotes it, written out here independently of the redactor."""
    json_ascii = json.dumps(value)[1:-1]
    found = {
        "plain": value,
        "json_ascii": json_ascii,
        "json_upper_hex": re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m[1].upper(), json_ascii),
        "json_utf8": json.dumps(value, ensure_ascii=False)[1:-1],
        "json_slash": json_ascii.replace("/", "\\/"),
        "quote": quote(value, safe=""),
        "quote_default_safe": quote(value),
        "quote_lower": re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(value, safe="")),
        "quote_plus": quote_plus(value),
        "quote_plus_lower": re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote_plus(value)),
    }
    for prefix in ("", "u:", "use:", "login:"):  # every offset modulo 3
        raw = f"{prefix}{value}:tail".encode()
        found[f"base64 after {prefix!r}"] = base64.b64encode(raw).decode()
        found[f"base64url after {prefix!r}"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return found


@pytest.mark.parametrize("secret", [PASSWORD, KEY, "ops+\u00e4@ex\u00e4mple.com"])
@pytest.mark.parametrize("form", list(encodings(PASSWORD)))
def test_every_form_of_a_secret_is_masked(secret: str, form: str) -> None:
    redactor = Redactor([Secret(secret)])
    echoed = encodings(secret)[form]
    masked = redactor.text(f"HTTP 400: you sent {echoed} (refused)")
    assert "***" in masked
    assert masked.startswith("HTTP 400: you sent ") and masked.endswith(" (refused)")
    assert visible(masked, secret) == []


def test_a_secret_that_contains_another_is_masked_whole() -> None:
    redactor = Redactor([Secret("abcd1234"), Secret("abcd1234-suffix-xyz")])
    assert redactor.text("a abcd1234-suffix-xyz b abcd1234 c") == "a *** b *** c"


def test_a_secret_starting_inside_the_start_of_another_is_found() -> None:
    """The text starts as the first secret ("aabc...") but goes on as the second: the
    search must look again one character on, not after the four it read."""
    redactor = Redactor([Secret("aabcQQQQ"), Secret("abcdXYZW")])
    assert redactor.text("xaabcdXYZW!") == "xa***!"


def test_short_values_are_left_alone() -> None:
    """A merchant id "12" masked everywhere would garble every number shown."""
    assert Redactor([Secret("12")]).text("1200.12") == "1200.12"


def test_value_masks_text_inside_structures_and_exceptions() -> None:
    redactor = Redactor([Secret(KEY)])
    doc = {"errors": [{"message": f"bad {KEY}"}], KEY: (1, ValueError(f"why {KEY}"))}
    assert redactor.value(doc) == {"errors": [{"message": "bad ***"}], "***": [1, "why ***"]}


def test_including_adds_secrets_without_losing_any() -> None:
    token = Secret("eyJ0b2tlbi1vbmU")
    both = Redactor([Secret(KEY)]).including([token])
    assert both.text(f"{KEY} {token.reveal()}") == "*** ***"


@pytest.mark.parametrize("at", [QUOTE_CHARS - 5, QUOTE_CHARS * 8 - 3, QUOTE_CHARS * 20])
def test_a_quote_never_shows_a_piece_of_a_secret_its_cut_runs_through(at: int) -> None:
    """Cut after masking: a secret across the cut, or across the end of what is read, is
    masked whole or left out, never shown in part."""
    redactor = Redactor([Secret(PASSWORD)])
    for echoed in encodings(PASSWORD).values():
        text = " " * at + echoed + " and more" * 50
        quoted = redactor.quote(text)
        assert visible(quoted, PASSWORD) == [], quoted
        assert len(quoted) <= QUOTE_CHARS + 5


def test_a_quote_of_a_head_drops_what_a_secret_cut_by_the_head_may_have_left() -> None:
    redactor = Redactor([Secret(KEY)])
    head = "x" * 40 + KEY[:12]  # the body's end, cut by a size cap, ran through the key
    assert KEY[:8] in redactor.quote(head)  # read as whole, the piece would show
    assert visible(redactor.quote(head, whole=False), KEY) == []


def test_a_quote_is_one_line_with_control_characters_escaped() -> None:
    assert Redactor().quote("a\n\n b\x1b[31m\x07") == repr("a b\x1b[31m\x07")


def test_the_installed_redactor_is_the_one_every_exit_uses() -> None:
    assert not redact.installed()
    redact.install([Secret(KEY)])
    assert redact.installed().text(KEY) == "***"


def test_terminal_escape_shows_control_characters_and_keeps_the_rest() -> None:
    text = "BTC\x1b]0;pwned\x07 \u202eevil\u00e4\ttab"
    assert terminal.escape(text) == "BTC\\x1b]0;pwned\\x07 \\u202eevil\u00e4\\ttab"
    assert terminal.escape("two\nlines\x1b", keep="\n") == "two\nlines\\x1b"
