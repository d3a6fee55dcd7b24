"""Stateless unique receiverESPrimRandObjects (TS-0003 8.4.2 B.2e; TS-0004 7.5.1.2.11).

A Receiver answers a securityInfoType 3 Notify (unauthenticated by design) with a unique
receiverESPrimRandObject.  Recording every such object would let anyone fill the Receiver's
database at line rate, so a unique object is *not* stored: like a DTLS/SYN cookie, its
esprimRandID carries its expiry and the identifier of a Receiver secret ``K_rand``, is
authenticated under ``K_rand``, and its esprimRandValue is recomputed from the ID when an
ESPrim Object names it (phase C.6b).  Only ``K_rand`` lives in the Receiver state (the store
for :class:`~m2msec.esprim.state.StoreReceiverState`, so every instance on one database
recomputes the same values).

m2msec profile (fills TS-0003 8.4.2 B.2e "unique", B.1a.1 "shall indicate"; rows R1/R7):

* esprimRandID (51 characters, lowercase, an NCName)::

      "u" ‖ hex(expiry, 4 octets) ‖ hex(keyId, 1 octet) ‖ hex(nonce, 12 octets) ‖ hex(tag, 8 octets)
      1     8 digits                2 digits              24 digits               16 digits

  ``expiry`` = esprimRandExpiry as unsigned big-endian Unix seconds (whole seconds; the
  object's ``esrx`` is exactly that instant); ``keyId`` = K_rand epoch number mod 256;
  ``nonce`` = 96 random bits (:mod:`secrets`); ``body`` = the first 35 characters.
* ``tag`` = HMAC-SHA-256(K_rand, ``"m2msec unique rand id v1"`` ‖ 0x00 ‖ ASCII(body))[0:8].
* esprimRandValue = HMAC-SHA-256(K_rand, ``"m2msec unique rand v1"`` ‖ 0x00 ‖ ASCII(esprimRandID))[0:16]
  (over the whole 51-character ID, tag included).
* esprimKeyGenAlgIDs / esprimProtocolAndAlgIDs of a unique object are the Receiver policy's
  lists (at issue time and again at use time: all instances on one store share the policy).
* ``K_rand``: 32 random octets per epoch of ``period`` seconds counted from the Unix epoch
  (epoch ``e`` covers ``[e·period, (e+1)·period)``), created atomically on first issue in
  that epoch, named ``"<period>:<e>"``, expiring at ``(e+1)·period + unique_lifetime +``
  :data:`KEY_GRACE`.  Objects are issued under the current epoch's key with an expiry capped
  at the key's expiry, so a key outlives every object issued under it; a key that expired
  (rotated out) makes its objects unknown.  Lookup maps the keyId back to the one epoch in
  ``[e_now - 2, e_now + 1]`` with that low octet (``period >= unique_lifetime`` keeps at most
  three keys alive, so the mapping is unambiguous); an ID whose keyId names no live key, whose
  tag does not verify, or whose expiry has passed is unknown (ESPRIM_UNKNOWN_RECV_RAND_ID).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final, NamedTuple

UNIQUE_ID_PREFIX: Final = "u"
VALUE_LABEL: Final = b"m2msec unique rand v1"
TAG_LABEL: Final = b"m2msec unique rand id v1"
EXPIRY_OCTETS: Final = 4
KEY_ID_OCTETS: Final = 1
NONCE_OCTETS: Final = 12
TAG_OCTETS: Final = 8
RAND_KEY_OCTETS: Final = 32
VALUE_OCTETS: Final = 16
BODY_LENGTH: Final = 1 + 2 * (EXPIRY_OCTETS + KEY_ID_OCTETS + NONCE_OCTETS)
ID_LENGTH: Final = BODY_LENGTH + 2 * TAG_OCTETS
KEY_GRACE: Final = timedelta(minutes=5)
"""Extra life of a K_rand beyond the last possible expiry of its objects (clock skew between instances)."""
MAX_EXPIRY: Final = 2 ** (8 * EXPIRY_OCTETS) - 1

_ID_RE: Final = re.compile(r"u([0-9a-f]{8})([0-9a-f]{2})[0-9a-f]{24}([0-9a-f]{16})", re.ASCII)
_EPOCH0: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ParsedUniqueID(NamedTuple):
    expiry_s: int
    key_id: int
    body: str
    tag: str


@dataclass(frozen=True, repr=False)
class RandKey:
    """One K_rand: its name (``"<period>:<epoch>"``), 32 secret octets and its expiry."""

    name: str
    key: bytes
    expires_at: datetime

    def __repr__(self) -> str:
        return f"RandKey(name={self.name!r}, key=<hidden>, expires_at={self.expires_at.isoformat()})"

    __str__ = __repr__


# ------------------------------------------------------------------ pure functions
def is_unique_layout(rand_id: str) -> bool:
    """True if ``rand_id`` has the stateless unique layout (says nothing about its tag)."""
    return len(rand_id) == ID_LENGTH and _ID_RE.fullmatch(rand_id) is not None


def parse_unique_id(rand_id: str) -> ParsedUniqueID | None:
    if not isinstance(rand_id, str) or len(rand_id) != ID_LENGTH:
        return None
    m = _ID_RE.fullmatch(rand_id)
    if m is None:
        return None
    return ParsedUniqueID(int(m.group(1), 16), int(m.group(2), 16), rand_id[:BODY_LENGTH], m.group(3))


def id_tag(key: bytes, body: str) -> str:
    """16 hex digits: HMAC-SHA-256(K_rand, TAG_LABEL ‖ 0x00 ‖ body)[0:8]."""
    return hmac.new(key, TAG_LABEL + b"\x00" + body.encode("ascii"), hashlib.sha256).digest()[:TAG_OCTETS].hex()


def rand_value(key: bytes, rand_id: str) -> bytes:
    """esprimRandValue: HMAC-SHA-256(K_rand, VALUE_LABEL ‖ 0x00 ‖ esprimRandID)[0:16]."""
    return hmac.new(key, VALUE_LABEL + b"\x00" + rand_id.encode("ascii"), hashlib.sha256).digest()[:VALUE_OCTETS]


def make_unique_id(key: bytes, expiry_s: int, key_id: int, nonce: bytes | None = None) -> str:
    """A unique esprimRandID (``nonce``: 12 octets, random when omitted)."""
    if not 0 <= expiry_s <= MAX_EXPIRY:
        raise ValueError("esprimRandExpiry does not fit in 4 octets of Unix seconds")
    if not 0 <= key_id <= 0xFF:
        raise ValueError("key id must be one octet")
    nonce = secrets.token_bytes(NONCE_OCTETS) if nonce is None else nonce
    if len(nonce) != NONCE_OCTETS:
        raise ValueError("nonce must be 12 octets")
    body = f"{UNIQUE_ID_PREFIX}{expiry_s:08x}{key_id:02x}{nonce.hex()}"
    return body + id_tag(key, body)


def check_tag(key: bytes, parsed: ParsedUniqueID) -> bool:
    return hmac.compare_digest(id_tag(key, parsed.body), parsed.tag)


def unix_seconds(dt: datetime) -> int:
    """Whole Unix seconds of an aware datetime, rounded down."""
    return (dt - _EPOCH0) // timedelta(seconds=1)


def from_unix_seconds(s: int) -> datetime:
    return _EPOCH0 + timedelta(seconds=s)


def period_seconds(period: timedelta) -> int:
    return period // timedelta(seconds=1)


def key_epoch(now: datetime, period: timedelta) -> int:
    return unix_seconds(now) // period_seconds(period)


def key_name(period: timedelta, epoch: int) -> str:
    return f"{period_seconds(period)}:{epoch}"


def key_expiry(period: timedelta, epoch: int, lifetime: timedelta) -> datetime:
    """When the K_rand of ``epoch`` stops being accepted: end of its epoch + lifetime + grace."""
    return from_unix_seconds((epoch + 1) * period_seconds(period)) + lifetime + KEY_GRACE


def epoch_for_key_id(key_id: int, now: datetime, period: timedelta) -> int:
    """The one epoch in ``[e_now - 2, e_now + 1]`` whose low octet is ``key_id``; it may be
    older or newer than that window, then its key is looked up and not found."""
    e_now = key_epoch(now, period)
    for e in range(e_now + 1, e_now - 3, -1):
        if e & 0xFF == key_id:
            return e
    return -1  # no live key can have this id
