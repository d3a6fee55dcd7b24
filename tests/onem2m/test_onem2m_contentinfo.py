"""m2m:contentInfo (TS-0004 Table 6.3.3-1)."""

from __future__ import annotations

import pytest

from m2msec.errors import ParseError
from m2msec.onem2m import ContentInfo, ContentSecurity, EncodingType


@pytest.mark.parametrize(
    ("text", "media", "enc", "sec", "canonical"),
    [
        # the three examples of Table 6.3.3-1
        ("application/xml:1", "application/xml", EncodingType.BASE64_STRING, ContentSecurity.NONE, "application/xml:1"),
        ("application/xml:1:0", "application/xml", EncodingType.BASE64_STRING, ContentSecurity.NONE, "application/xml:1"),
        ("application/xml:1:5", "application/xml", EncodingType.BASE64_STRING, ContentSecurity.XML_BASE64, "application/xml:1:5"),
        ("application/json:0:1", "application/json", EncodingType.PLAIN, ContentSecurity.JOSE_COMPACT, "application/json:0:1"),
        ("application/vnd.onem2m-res+json:2:3", "application/vnd.onem2m-res+json", EncodingType.BASE64_BINARY, ContentSecurity.JOSE_JSON_BASE64, "application/vnd.onem2m-res+json:2:3"),
        ("text/plain:0", "text/plain", EncodingType.PLAIN, ContentSecurity.NONE, "text/plain:0"),
        ("Application/X-Foo_bar!#$&^.+:0:4", "Application/X-Foo_bar!#$&^.+", EncodingType.PLAIN, ContentSecurity.XML, "Application/X-Foo_bar!#$&^.+:0:4"),
    ],
)
def test_parse_and_format(text: str, media: str, enc: EncodingType, sec: ContentSecurity, canonical: str) -> None:
    ci = ContentInfo.parse(text)
    assert (ci.media_type, ci.encoding, ci.security) == (media, enc, sec)
    assert ci.format() == canonical == str(ci) == ci.to_json()
    assert ContentInfo.parse(ci.format()) == ci


def test_constructor_defaults_and_checks() -> None:
    assert ContentInfo("application/json").format() == "application/json:0"
    assert ContentInfo("application/json", 0, 2).format() == "application/json:0:2"
    with pytest.raises(ValueError):
        ContentInfo("application json")
    with pytest.raises(ValueError):
        ContentInfo("application/json", 3)
    with pytest.raises(ValueError):
        ContentInfo("application/json", 0, 6)


@pytest.mark.parametrize(
    "bad",
    [
        "application/json",  # encodingType missing
        "application/json:",
        "application/json:3",  # encodingType out of range
        "application/json:0:6",  # contentSecurity out of range
        "application/json:0:",
        "application/json:0:1:1",
        "application/json:00",
        "application/json:+1",
        "application/json: 0",
        "application/json;charset=utf-8:0",  # parameters not allowed
        "application:0",
        "/json:0",
        "application/:0",
        "-application/json:0",  # restricted-name-first must be ALPHA / DIGIT
        "application/.json:0",
        "appli cation/json:0",
        "application/js*on:0",
        "a/" + "b" * 128 + ":0",  # restricted-name is at most 127 characters
        "application/jsön:0",
        "",
    ],
)
def test_rejects(bad: str) -> None:
    with pytest.raises(ParseError, match=r"^\[4000 BAD_REQUEST\] cnf: "):
        ContentInfo.parse(bad)


def test_unknown_values_are_named() -> None:
    with pytest.raises(ParseError, match="unknown EncodingType value 3"):
        ContentInfo.parse("text/plain:3")
    with pytest.raises(ParseError, match="unknown ContentSecurity value 9"):
        ContentInfo.parse("text/plain:0:9")


@pytest.mark.parametrize("bad", [None, 1, b"text/plain:0", ["text/plain:0"]])
def test_rejects_non_strings(bad: object) -> None:
    with pytest.raises(ParseError, match="expected an m2m:contentInfo string"):
        ContentInfo.parse(bad)


def test_longest_restricted_name_accepted() -> None:
    ci = ContentInfo.parse("a/" + "b" * 127 + ":0")
    assert len(ci.media_type) == 129
