"""ESPrim Objects: JWE Compact Serialization with direct encryption (TS-0003 8.4.3.2).

An ESPrim Object is ``BASE64URL(UTF8(protected header)) '.' '' '.' BASE64URL(IV) '.'
BASE64URL(ciphertext) '.' BASE64URL(tag)`` (RFC 7516 section 7.1): ``"alg":"dir"`` so the
encrypted key is always empty, ``"enc"`` is A128GCM / A192GCM / A256GCM
(esprimProtocolAndAlgID 10 / 11 / 12), ``"kid"`` is the pairwiseESPrimKey identifier,
``"ori"`` / ``"rri"`` the esprimRandIDs of the originator's and receiver's rand objects,
and optionally ``"cty"`` (media type of the inner primitive), ``"oro"`` / ``"rro"`` (the
full rand objects in their JSON representation, short names — TS-0004 8.2).

This module is the AES-GCM fast path: it builds and parses the serialization directly
with ``cryptography``'s AESGCM; the tests check it against jwcrypto in both directions.
The AAD is ``ASCII(BASE64URL(UTF8(JWE Protected Header)))`` as RFC 7516 5.1 step 14 says.

Per-session work is done once: a :class:`ContentCipher` holds the AESGCM object of one
content key; the protected header of an object without ``oro``/``rro`` is serialized once
per (enc, kid, cty, ori, rri) and a received one is validated once per distinct
BASE64URL text (bounded memo caches; a cached header is exactly what parsing the same
text again would give, and invalid headers are never cached).

Errors follow TS-0004 table 7.6.2-1: unparsable object -> BAD_REQUEST (4000),
unsupported ``alg``/``enc``/``zip``/``crit`` -> ESPRIM_UNSUPPORTED_OPTION (4111), failed
tag verification -> ESPRIM_BAD_MAC (4115).
"""

from __future__ import annotations

import binascii
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2msec.errors import ParseError
from m2msec.esprim.errors import BadMAC, ESPrimParseError, UnsupportedOption
from m2msec.onem2m._wire import loads_json

ENC_KEY_LENGTH: Final = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
"""JWE ``enc`` values allowed for ESPrim, with their AES key length in octets."""
ENC_BY_PROTOCOL_AND_ALG_ID: Final = {10: "A128GCM", 11: "A192GCM", 12: "A256GCM"}
PROTOCOL_AND_ALG_ID_BY_ENC: Final = {v: k for k, v in ENC_BY_PROTOCOL_AND_ALG_ID.items()}

MAX_OBJECT_SIZE: Final = 4 * 1024 * 1024
"""Default upper bound on an ESPrim Object (characters); larger ones are refused unparsed."""

_IV_LENGTH: Final = 12
_TAG_LENGTH: Final = 16
_URL_TO_STD: Final = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
_HEADER_CACHE: dict[str, ESPrimHeader] = {}
_HEADER_CACHE_MAX: Final = 1024
# Header members whose presence changes JWE semantics in a way ESPrim does not support.
_REFUSED_MEMBERS: Final = frozenset({"zip", "crit", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "epk", "apu", "apv", "p2s", "p2c", "iv", "tag"})


def b64url_encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_STD_TO_URL).decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """BASE64URL without padding (RFC 7515 2): only ``A-Z a-z 0-9 - _``, length not 1 mod 4.

    The alphabet is checked by the strict base64 decoder itself once ``-_`` are mapped to
    ``+/`` (so ``+``, ``/`` and ``=`` must be refused before the mapping)."""
    if "+" in text or "/" in text or "=" in text or len(text) % 4 == 1:
        raise ESPrimParseError(f"ESPrim Object: {what} is not base64url")
    try:
        raw = text.encode("ascii").translate(_URL_TO_STD)
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise ESPrimParseError(f"ESPrim Object: {what} is not base64url") from None


@dataclass(frozen=True, slots=True)
class ESPrimHeader:
    """The JWE Protected Header of an ESPrim Object (TS-0003 table 8.4.3.2-2).

    ``oro``/``rro`` hold the rand objects already in their JSON (short-name) form; the
    caller converts them with :mod:`m2msec.onem2m`.
    """

    enc: str
    kid: str
    ori: str
    rri: str
    cty: str | None = None
    oro: dict[str, Any] | None = None
    rro: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # ignored members received from a peer

    def to_json_bytes(self) -> bytes:
        member: dict[str, Any] = {"alg": "dir", "enc": self.enc, "kid": self.kid}
        if self.cty is not None:
            member["cty"] = self.cty
        member["ori"] = self.ori
        member["rri"] = self.rri
        if self.oro is not None:
            member["oro"] = self.oro
        if self.rro is not None:
            member["rro"] = self.rro
        return json.dumps(member, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def protected_b64(self) -> str:
        """BASE64URL(UTF8(JWE Protected Header)): the header text and the AAD."""
        if self.oro is None and self.rro is None:
            return _plain_protected_b64(self.enc, self.kid, self.cty, self.ori, self.rri)
        return b64url_encode(self.to_json_bytes())

    @property
    def protocol_and_alg_id(self) -> int:
        return PROTOCOL_AND_ALG_ID_BY_ENC[self.enc]


@functools.lru_cache(maxsize=1024)
def _plain_protected_b64(enc: str, kid: str, cty: str | None, ori: str, rri: str) -> str:
    return b64url_encode(ESPrimHeader(enc=enc, kid=kid, ori=ori, rri=rri, cty=cty).to_json_bytes())


def plain_protected_b64(enc: str, kid: str, cty: str | None, ori: str, rri: str) -> str:
    """``ESPrimHeader(enc, kid, ori, rri, cty).protected_b64()`` (no ``oro``/``rro``), memoized."""
    _check_enc(enc)
    return _plain_protected_b64(enc, kid, cty, ori, rri)


class ContentCipher:
    """AES-GCM under one ESPrim content key for one ``enc``; the AESGCM object is built once
    (keep one per session and ``enc``).  The key is never shown."""

    __slots__ = ("enc", "_aead")

    def __init__(self, enc: str, key: bytes) -> None:
        _check_enc(enc)
        if len(key) != ENC_KEY_LENGTH[enc]:
            raise UnsupportedOption(f"key length {len(key)} does not fit enc {enc}")
        self.enc = enc
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"ContentCipher(enc={self.enc!r}, key=<hidden>)"


def _cipher(enc: str, key: bytes | ContentCipher) -> ContentCipher:
    if isinstance(key, ContentCipher):
        if key.enc != enc:
            raise UnsupportedOption(f"content key for {key.enc} used with enc {enc}")
        return key
    return ContentCipher(enc, key)


class ParsedESPrimObject(NamedTuple):
    """An ESPrim Object split and its header validated, not yet decrypted (immutable)."""

    header: ESPrimHeader
    protected_b64: str
    iv: bytes
    ciphertext: bytes
    tag: bytes


def seal(header: ESPrimHeader, key: bytes | ContentCipher, plaintext: bytes, *, iv: bytes | None = None) -> str:
    """Encrypt ``plaintext`` (the inner primitive) into an ESPrim Object.

    ``key`` is the AES key (see :func:`m2msec.keys.esprim_content_key`) or a
    :class:`ContentCipher` for ``header.enc``. ``iv`` is for tests only: by default a fresh
    random 96-bit IV is drawn for every object.
    """
    return seal_protected(header.protected_b64(), _cipher(header.enc, key), plaintext, iv=iv)


def seal_protected(protected: str, cipher: ContentCipher, plaintext: bytes, *, iv: bytes | None = None) -> str:
    """:func:`seal` with the protected header already encoded (``protected``, e.g. from
    :func:`plain_protected_b64`); the header must name ``cipher.enc``."""
    nonce = os.urandom(_IV_LENGTH) if iv is None else iv
    sealed = cipher._aead.encrypt(nonce, plaintext, protected.encode("ascii"))
    return f"{protected}..{b64url_encode(nonce)}.{b64url_encode(sealed[:-_TAG_LENGTH])}.{b64url_encode(sealed[-_TAG_LENGTH:])}"


def parse(obj: str | bytes, *, max_size: int = MAX_OBJECT_SIZE) -> ParsedESPrimObject:
    """Split and validate an ESPrim Object without decrypting it."""
    if isinstance(obj, (bytes, bytearray)):
        try:
            obj = bytes(obj).decode("ascii")
        except UnicodeDecodeError:
            raise ESPrimParseError("ESPrim Object is not ASCII") from None
    if not isinstance(obj, str):
        raise ESPrimParseError(f"ESPrim Object must be a string, got {type(obj).__name__}")
    if len(obj) > max_size:
        raise ESPrimParseError(f"ESPrim Object larger than {max_size} characters")
    parts = obj.split(".")
    if len(parts) != 5:
        raise ESPrimParseError(f"ESPrim Object must have 5 parts, got {len(parts)}")
    protected_b64, encrypted_key, iv_b64, ct_b64, tag_b64 = parts
    header = _HEADER_CACHE.get(protected_b64)
    if header is None:
        header = _parse_header(protected_b64)
        if header.oro is None and header.rro is None and not header.extra:  # immutable: safe to share
            if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[protected_b64] = header
    if encrypted_key != "":
        raise ESPrimParseError('ESPrim Object: JWE Encrypted Key must be empty for "alg":"dir"')
    iv = b64url_decode(iv_b64, "initialization vector")
    ciphertext = b64url_decode(ct_b64, "ciphertext")
    tag = b64url_decode(tag_b64, "authentication tag")
    if len(iv) != _IV_LENGTH:
        raise ESPrimParseError(f"ESPrim Object: initialization vector must be {_IV_LENGTH} octets")
    if len(tag) != _TAG_LENGTH:
        raise ESPrimParseError(f"ESPrim Object: authentication tag must be {_TAG_LENGTH} octets")
    return ParsedESPrimObject(header, protected_b64, iv, ciphertext, tag)


def _parse_header(protected_b64: str) -> ESPrimHeader:
    raw_header = b64url_decode(protected_b64, "protected header")
    try:
        # strict: UTF-8, unique member names (RFC 7515 4 lets a parser refuse duplicates), no
        # NaN/Infinity, and a nesting too deep for the decoder is a ParseError, not a RecursionError
        member = loads_json(raw_header)
    except ParseError:
        raise ESPrimParseError("ESPrim Object: protected header is not JSON") from None
    if not isinstance(member, dict):
        raise ESPrimParseError("ESPrim Object: protected header is not a JSON object")
    return _header_from_member(member)


def open_parsed(parsed: ParsedESPrimObject, key: bytes | ContentCipher) -> bytes:
    """Decrypt and verify a parsed ESPrim Object; a wrong key or any change is BAD_MAC.

    ``key``: the AES key or a :class:`ContentCipher` for the object's ``enc``."""
    cipher = _cipher(parsed.header.enc, key)
    try:
        return cipher._aead.decrypt(parsed.iv, parsed.ciphertext + parsed.tag, parsed.protected_b64.encode("ascii"))
    except InvalidTag:
        raise BadMAC("ESPrim Object failed integrity verification") from None


def _check_enc(enc: object) -> None:
    if enc not in ENC_KEY_LENGTH:
        raise UnsupportedOption(f"ESPrim enc {enc!r} not supported (A128GCM, A192GCM, A256GCM)")


def _text(member: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = member.get(name)
    if value is None:
        if required:
            raise ESPrimParseError(f'ESPrim Object: header member "{name}" missing')
        return None
    if not isinstance(value, str) or not value:
        raise ESPrimParseError(f'ESPrim Object: header member "{name}" must be a non-empty string')
    return value


def _header_from_member(member: dict[str, Any]) -> ESPrimHeader:
    refused = sorted(_REFUSED_MEMBERS.intersection(member))
    if refused:
        raise UnsupportedOption(f"ESPrim Object: header member(s) {', '.join(refused)} not supported")
    alg = _text(member, "alg", required=True)
    if alg != "dir":
        raise UnsupportedOption(f'ESPrim Object: "alg" must be "dir", got {alg!r}')
    enc = _text(member, "enc", required=True)
    _check_enc(enc)
    kid = _text(member, "kid", required=True)
    ori = _text(member, "ori", required=True)
    rri = _text(member, "rri", required=True)
    cty = _text(member, "cty", required=False)
    oro, rro = member.get("oro"), member.get("rro")
    for name, value in (("oro", oro), ("rro", rro)):
        if value is not None and not isinstance(value, dict):
            raise ESPrimParseError(f'ESPrim Object: header member "{name}" must be a JSON object')
    known = {"alg", "enc", "kid", "cty", "ori", "rri", "oro", "rro"}
    extra = {k: v for k, v in member.items() if k not in known}
    assert enc is not None and kid is not None and ori is not None and rri is not None
    return ESPrimHeader(enc=enc, kid=kid, ori=ori, rri=rri, cty=cty, oro=oro, rro=rro, extra=extra)
