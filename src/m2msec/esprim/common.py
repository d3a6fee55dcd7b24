"""Pieces shared by the ESPrim Originator and Receiver (TS-0003 8.4.2, 8.4.3; TS-0004 6.7, 7.6.2).

* esprimRandID formats (TS-0003 8.4.2 B.1a.1 / B.2e / B.2g: an ID "shall indicate" whether
  the rand object is shared and be unique among the valid ones) — m2msec profile:
  ``s`` + 24 lowercase hex digits for a shared receiverESPrimRandObject, ``o`` + 24 hex for
  an originatorESPrimRandObject (96 random bits from :mod:`secrets`), and for a unique
  (on-request) one ``u`` + 50 hex digits carrying its expiry, K_rand id, a 96-bit nonce and
  a tag (stateless, see :mod:`m2msec.esprim.unique_rand`); all are XML NCNames.
* the ``cty`` of the inner primitive (TS-0003 table 8.4.3.2-2) is the TS-0004 table 6.7-1
  media type: ``application/vnd.onem2m-preq+json`` / ``+cbor`` for requests,
  ``application/vnd.onem2m-prsp+json`` / ``+cbor`` for responses.  On receipt the
  ``application/`` prefix may be omitted (RFC 7515 4.1.10) and an absent ``cty`` means JSON.
* the SUIDs that mean "supports ESPrim" in ``e2eSecInfo.esf`` (TS-0003 8.4.2 B.2c):
  the ESPrim-scope SUIDs 13, 23, 33, 43 (TS-0004 table 6.3.4.2.39-1).
* :class:`SessionRef`: the (pairwiseESPrimKeyID, ori, rri) triple that names a session
  (TS-0003 8.4.2 C.8, C.11a).
"""

from __future__ import annotations

import secrets
from typing import Final, NamedTuple

from m2msec.errors import ParseError
from m2msec.esprim.errors import DecryptionError, EncryptionError
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive

ESPRIM_SUIDS: Final = frozenset(
    {SUID.PRE_PROVISIONED_ESPRIM, SUID.RSPF_ESPRIM, SUID.MAF_ESPRIM, SUID.CERTIFICATE_ESPRIM}
)
"""SUIDs whose presence in ``esf`` indicates ESPrim support (TS-0004 table 6.3.4.2.39-1)."""

SHARED_PREFIX: Final = "s"
UNIQUE_PREFIX: Final = "u"
ORIGINATOR_PREFIX: Final = "o"
_ID_HEX_DIGITS: Final = 24

DEFAULT_MAX_SEALS: Final = 2**31
"""AES-GCM invocations per session key and per side.  IVs are random 96-bit values, so
NIST SP 800-38D 8.3 limits a key to 2^32 invocations; the Originator seals at most one
request per response the Receiver seals, so 2^31 on each side keeps the total under 2^32."""

MEDIA_JSON: Final = "json"
MEDIA_CBOR: Final = "cbor"
_CTY: Final = {
    ("preq", MEDIA_JSON): "application/vnd.onem2m-preq+json",
    ("preq", MEDIA_CBOR): "application/vnd.onem2m-preq+cbor",
    ("prsp", MEDIA_JSON): "application/vnd.onem2m-prsp+json",
    ("prsp", MEDIA_CBOR): "application/vnd.onem2m-prsp+cbor",
}


def new_rand_id(prefix: str) -> str:
    """A fresh esprimRandID: ``prefix`` + 24 random lowercase hex digits."""
    if prefix not in (SHARED_PREFIX, UNIQUE_PREFIX, ORIGINATOR_PREFIX):
        raise ValueError(f"unknown esprimRandID prefix {prefix!r}")
    return prefix + secrets.token_hex(_ID_HEX_DIGITS // 2)


def is_shared_rand_id(rand_id: str) -> bool:
    return rand_id.startswith(SHARED_PREFIX)


class SessionRef(NamedTuple):
    """Names one ESPrim session: pairwiseESPrimKeyID, originator and receiver esprimRandIDs.

    (A named tuple: it keys the session tables, and a tuple hashes and compares in C.)"""

    kid: str
    ori: str
    rri: str

    def storage_id(self) -> str:
        """Unambiguous single-string form (the kid is length-prefixed; rand IDs are NCNames)."""
        return f"{len(self.kid)}:{self.kid}:{self.ori}:{self.rri}"


def cty_for(kind: str, media: str) -> str:
    try:
        return _CTY[(kind, media)]
    except KeyError:
        raise ValueError(f"no ESPrim media type for {kind}/{media}") from None


_MEDIA_EXACT: Final = {(kind, cty): media for (kind, media), cty in _CTY.items()}


def media_of(cty: str | None, kind: str) -> str | None:
    """``json``/``cbor`` for a ``cty`` naming a ``kind`` (preq/prsp) primitive, else None."""
    if cty is None:
        return MEDIA_JSON
    exact = _MEDIA_EXACT.get((kind, cty))
    if exact is not None:
        return exact
    value = cty.strip().lower()
    if not value.startswith("application/"):
        value = "application/" + value
    for (k, media), known in _CTY.items():
        if k == kind and known == value:
            return media
    return None


def encode_inner(primitive: RequestPrimitive | ResponsePrimitive, media: str) -> bytes:
    """Serialize an inner primitive (TS-0004 8.4 JSON / 8.5 CBOR, short names)."""
    try:
        if media == MEDIA_JSON:
            return primitive.to_json_bytes()
        if media == MEDIA_CBOR:
            return primitive.to_cbor()
    except (ValueError, TypeError) as exc:
        raise EncryptionError(f"inner primitive could not be serialized: {type(exc).__name__}") from None
    raise EncryptionError(f"unsupported inner primitive serialization {media!r}")


def decode_inner_request(data: bytes, cty: str | None, media: str | None = None) -> RequestPrimitive:
    """The verified plaintext as an inner request primitive; any failure is ESPRIM_DECRYPTION_ERROR.

    ``media``: ``media_of(cty, "preq")`` when the caller has it already."""
    if media is None:
        media = media_of(cty, "preq")
    if media is None:
        raise DecryptionError(f"inner primitive media type {cty!r} is not a supported request serialization")
    try:
        if media == MEDIA_JSON:
            return RequestPrimitive.from_json_bytes(data)
        return RequestPrimitive.from_cbor(data)
    except (ParseError, ValueError, TypeError) as exc:
        raise DecryptionError(f"inner request primitive does not parse: {exc}") from None


def decode_inner_response(data: bytes, cty: str | None) -> ResponsePrimitive:
    media = media_of(cty, "prsp")
    if media is None:
        raise DecryptionError(f"inner primitive media type {cty!r} is not a supported response serialization")
    try:
        if media == MEDIA_JSON:
            return ResponsePrimitive.from_json_bytes(data)
        return ResponsePrimitive.from_cbor(data)
    except (ParseError, ValueError, TypeError) as exc:
        raise DecryptionError(f"inner response primitive does not parse: {exc}") from None
