"""ESPrim Originator, sans-I/O: TS-0003 8.4.2 phase B (B.2a-B.2h) and phase C (C.1-C.4,
C.10-C.12); TS-0004 7.5.1.2.11 (securityInfoType 3 request / 4 response), 7.5.1.2.13, 7.6.2.

Flow (the transport layer does the I/O between the steps)::

    orig = Originator(clock=clock)
    step = orig.start(pairwise_key, receiver_esi)        # B.2c
    if isinstance(step, RandObjectNeeded):               # B.2d: send the type-3 Notify
        resp = send(step.request(to=receiver_address, fr=my_id))
        step = orig.accept_rand_object(step, resp)       # B.2f
    session = step.session                               # B.2g/B.2h done
    obj, pending = orig.protect_request(inner_request, session)          # C.3
    send Notify(seci type 5, obj) ... outer response with obj2
    inner_response = orig.open_response(obj2, pending)                   # C.11

State lives in small explicit objects: :class:`OriginatorSession` (one per pairwiseESPrimKey,
mutable: seal counter, acknowledgement of its ``oro``) and :class:`PendingResponse` (frozen,
one per protected request).  Events are frozen dataclasses (:class:`SessionReady`,
:class:`RandObjectNeeded`).

m2msec decisions:

* "supports ESPrim" (B.2c) = ``esf`` lists one of the ESPrim SUIDs 13, 23, 33, 43, and (by
  default) the SUID of the pairwise key being used;
* the full ``oro`` is sent with every request of a session until a response of that session
  has been opened (only then is it certain the Receiver cached it, C.3); an ``oro`` for the
  next session may be announced in-band in an acknowledged session (TS-0003 8.4.3.2);
* a session is not used for a new request when it expires within ``min_remaining``
  (NOTE 6: the response must arrive before expiry), and is retired after ``max_seals``
  AES-GCM invocations (2^31 by default; the Receiver seals at most as many responses);
* the originatorESPrimRandObject expires at min(now + ``rand_lifetime``, receiver's expiry);
  an explicitly requested later expiry is refused (B.2g);
* the ``enc`` used is the first of the Originator's preference list that is also in the
  ``oro``'s list; the ``oro`` lists the Originator's preferences that the Receiver offers;
* an inner request given as a primitive without ``rqet`` is sealed with an absolute Request
  Expiration Timestamp ``now + request_lifetime`` (default 5 min; TS-0004 6.4.1), which the
  Receiver enforces (REQUEST_TIMEOUT 4008): a withheld object is not executed after it
  (profile R11).  Opaque (bytes) inner requests are sealed as given.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import NamedTuple

from m2msec import keys as m2mkeys
from m2msec.errors import ParseError
from m2msec.esprim import jwe
from m2msec.esprim.common import (
    DEFAULT_MAX_SEALS,
    ESPRIM_SUIDS,
    MEDIA_CBOR,
    MEDIA_JSON,
    ORIGINATOR_PREFIX,
    SessionRef,
    cty_for,
    decode_inner_response,
    encode_inner,
    new_rand_id,
)
from m2msec.esprim.errors import (
    EncryptionError,
    ESPrimError,
    ESPrimNotSupported,
    ESPrimParseError,
    SessionExpired,
    SessionMismatch,
    SessionRetired,
    UnknownKeyID,
    UnknownOrigRandID,
    UnknownRecvRandID,
    UnsupportedOption,
)
from m2msec.esprim.keysource import PairwiseKey
from m2msec.onem2m.enums import ESPrimKeyGenAlgID, ESPrimProtocolAndAlgID, SecurityInfoType
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.security import (
    RAND_VALUE_OCTETS,
    E2ESecInfo,
    OriginatorESPrimRandObject,
    ReceiverESPrimRandObject,
    SecurityInfo,
)
from m2msec.onem2m.timestamps import AbsRelTimestamp, Clock, ensure_utc


@dataclass(frozen=True)
class OriginatorPolicy:
    protocol_and_alg_ids: tuple[ESPrimProtocolAndAlgID, ...] = (
        ESPrimProtocolAndAlgID.JWE_A256GCM,
        ESPrimProtocolAndAlgID.JWE_A128GCM,
        ESPrimProtocolAndAlgID.JWE_A192GCM,
    )
    key_gen_alg_ids: tuple[ESPrimKeyGenAlgID, ...] = (ESPrimKeyGenAlgID.HMAC_SHA256,)
    rand_lifetime: timedelta = timedelta(hours=1)
    min_remaining: timedelta = timedelta(seconds=30)
    max_seals: int = DEFAULT_MAX_SEALS
    media: str = MEDIA_JSON
    require_key_suid_listed: bool = True
    #: inner requests without a Request Expiration Timestamp get ``rqet`` = now + this
    #: (absolute); the Receiver refuses them with REQUEST_TIMEOUT after it (profile R11).
    #: None: leave ``rqet`` as the caller set it.
    request_lifetime: timedelta | None = timedelta(minutes=5)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "protocol_and_alg_ids", tuple(ESPrimProtocolAndAlgID(v) for v in self.protocol_and_alg_ids)
        )
        object.__setattr__(self, "key_gen_alg_ids", tuple(ESPrimKeyGenAlgID(v) for v in self.key_gen_alg_ids))
        if not self.protocol_and_alg_ids or not self.key_gen_alg_ids:
            raise ValueError("algorithm lists must not be empty")
        if self.media not in (MEDIA_JSON, MEDIA_CBOR):
            raise ValueError("media must be 'json' or 'cbor'")
        if self.max_seals < 1 or self.rand_lifetime <= timedelta(0):
            raise ValueError("max_seals and rand_lifetime must be positive")
        if self.request_lifetime is not None and self.request_lifetime <= timedelta(0):
            raise ValueError("request_lifetime must be positive (or None)")


_REQUEST_CTY = {MEDIA_JSON: cty_for("preq", MEDIA_JSON), MEDIA_CBOR: cty_for("preq", MEDIA_CBOR)}

class OriginatorSession:
    """One sessionESPrimKey at the Originator (B.2g/B.2h) with its use counters."""

    def __init__(
        self,
        *,
        key: PairwiseKey,
        receiver_rand: ReceiverESPrimRandObject,
        originator_rand: OriginatorESPrimRandObject,
        enc: str,
        session_key: bytes,
        expires_at: datetime,
    ) -> None:
        self.key = key
        self.receiver_rand = receiver_rand
        self.originator_rand = originator_rand
        self.enc = enc
        self._session_key = session_key
        self.expires_at = expires_at
        self.seals = 0
        self.acknowledged = False  # a response proved the Receiver holds originator_rand
        self.retired = False
        self.announce: OriginatorESPrimRandObject | None = None  # in-band refresh oro to carry
        self._ref = SessionRef(key.kid, originator_rand.rand_id, receiver_rand.rand_id)
        self._ciphers: dict[str, jwe.ContentCipher] = {}

    @property
    def ref(self) -> SessionRef:
        return self._ref

    @property
    def receiver_id(self) -> str:
        return self.key.peer_id

    def content_key(self, enc: str) -> bytes:
        return m2mkeys.esprim_content_key(self._session_key, ESPrimProtocolAndAlgID.from_jwe_enc(enc))

    def cipher(self, enc: str) -> jwe.ContentCipher:
        """The AES-GCM content cipher for ``enc``, built once per session."""
        c = self._ciphers.get(enc)
        if c is None:
            c = self._ciphers[enc] = jwe.ContentCipher(enc, self.content_key(enc))
        return c

    def usable(self, now: datetime, min_remaining: timedelta) -> bool:
        return not self.retired and now + min_remaining < self.expires_at

    def __repr__(self) -> str:
        return (
            f"OriginatorSession(ref={self.ref!r}, enc={self.enc!r}, expires_at={self.expires_at.isoformat()}, "
            f"seals={self.seals}, acknowledged={self.acknowledged}, retired={self.retired}, key=<hidden>)"
        )


@dataclass(frozen=True)
class SessionReady:
    """Event: a sessionESPrimKey is established (B.2h) and can protect requests."""

    session: OriginatorSession


@dataclass(frozen=True)
class RandObjectNeeded:
    """Event: the Originator must request a receiverESPrimRandObject (B.2d, securityInfoType 3)."""

    key: PairwiseKey
    reason: str

    def request(self, *, to: str, fr: str, rqi: str | None = None, ot: datetime | None = None) -> RequestPrimitive:
        """The outer Notify to send (TS-0004 7.5.1.2.11): To = Receiver's <CSEBase>/<AE>."""
        return RequestPrimitive.notify_security_info(to=to, fr=fr, seci=SecurityInfo.rand_object_request(), rqi=rqi, ot=ot)


class PendingResponse(NamedTuple):
    """A protected request waiting for its response (C.11a); immutable."""

    ref: SessionRef
    inner_rqi: str
    token: str
    announced: str | None = None  # esprimRandID of an oro announced in-band with this request


class ErrorAdvice(Enum):
    """What to do after an outer error response (TS-0004 table 7.6.2-1)."""

    RESEND = "resend"  # 4113: the next request carries the full oro again
    NEW_SESSION = "new-session"  # 4112/4114 or retired/expired: start() again
    ABORT = "abort"  # 4111, 4115, 4116, 5210, 5211 and others: report to the application


class Originator:
    """ESPrim Originator state machine; I/O-free, clock injected.

    Not thread-safe: use one per task, or guard it with a lock.  Its state (sessions,
    pending responses) is in memory only; an Originator that restarts establishes new
    sessions (the Receiver's cached ones simply expire).
    """

    def __init__(self, *, clock: Clock, policy: OriginatorPolicy | None = None) -> None:
        self._clock = clock
        self.policy = policy or OriginatorPolicy()
        self._sessions: dict[str, OriginatorSession] = {}  # current session per kid
        self._by_ref: dict[SessionRef, OriginatorSession] = {}
        self._next_rro: dict[str, ReceiverESPrimRandObject] = {}  # from in-band rro, per kid
        self._outstanding: dict[str, tuple[PendingResponse, datetime]] = {}  # token -> (pending, session expiry)
        # Pending-response tokens: unique per Originator (a random prefix and a counter).
        self._token_prefix = secrets.token_hex(8) + "-"
        self._token_counter = itertools.count()

    def _now(self) -> datetime:
        now = self._clock()
        if type(now) is datetime and now.tzinfo is timezone.utc:  # the usual clock: nothing to convert
            return now
        return ensure_utc(now, what="clock()")

    # ------------------------------------------------------------------ phase B
    def supports_esprim(self, esi: E2ESecInfo, key: PairwiseKey | None = None) -> bool:
        """B.2c: ESPrim-scope SUID listed (and, by policy, the pairwise key's SUID)."""
        listed = set(esi.supported_features)
        if not listed & ESPRIM_SUIDS:
            return False
        return not (key is not None and self.policy.require_key_suid_listed and key.suid not in listed)

    def _rand_usable(self, rro: ReceiverESPrimRandObject | None, now: datetime) -> bool:
        return rro is not None and now + self.policy.min_remaining < rro.expiry

    def session_for(self, kid: str) -> OriginatorSession | None:
        """The current usable session for this pairwiseESPrimKeyID, if any."""
        s = self._sessions.get(kid)
        return s if s is not None and s.usable(self._now(), self.policy.min_remaining) else None

    def start(self, key: PairwiseKey, esi: E2ESecInfo | None = None) -> SessionReady | RandObjectNeeded:
        """B.2: reuse a valid session, or establish one from an in-band ``rro`` or the shared
        receiverESPrimRandObject in ``esi``; otherwise say that one must be requested."""
        now = self._now()
        if key.is_expired(now):
            raise UnknownKeyID(f"pairwiseESPrimKey {key.kid!r} has expired")
        if esi is not None and not self.supports_esprim(esi, key):
            raise ESPrimNotSupported(f"Receiver {key.peer_id!r} does not indicate ESPrim support for this key")
        nxt = self._next_rro.pop(key.kid, None)
        if self._rand_usable(nxt, now):
            assert nxt is not None
            return SessionReady(self.establish(key, nxt))
        current = self.session_for(key.kid)
        if current is not None:
            return SessionReady(current)
        if esi is None:
            return RandObjectNeeded(key, "no e2eSecInfo of the Receiver at hand")
        shared = esi.shared_rand_object
        if shared is None:
            return RandObjectNeeded(key, "the Receiver publishes no sharedReceiverESPrimRandObject")
        if not self._rand_usable(shared, now):
            return RandObjectNeeded(key, "the sharedReceiverESPrimRandObject has expired")
        return SessionReady(self.establish(key, shared))

    def accept_rand_object(
        self, need: RandObjectNeeded, response: ResponsePrimitive | SecurityInfo | ReceiverESPrimRandObject
    ) -> SessionReady:
        """B.2f: take the receiverESPrimRandObject from the type-4 Notify response."""
        if isinstance(response, ResponsePrimitive):
            if not response.is_success:
                rsc = response.rsc if isinstance(response.rsc, RSC) else RSC.BAD_REQUEST
                raise ESPrimError(f"receiverESPrimRandObject request failed with {int(response.rsc)}", rsc=rsc)
            try:
                seci = response.security_info(clock=self._clock)
            except ParseError as exc:
                raise ESPrimParseError(f"securityInfo does not parse: {exc}") from None
            if seci is None:
                raise ESPrimParseError("response carries no securityInfo")
            response = seci
        if isinstance(response, SecurityInfo):
            if response.sit != SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_RESPONSE or response.esprim_rand_object is None:
                raise ESPrimParseError("not a receiverESPrimRandObject response (securityInfoType 4)")
            response = response.esprim_rand_object
        if not self._rand_usable(response, self._now()):
            raise UnknownRecvRandID("the receiverESPrimRandObject received has expired")
        return SessionReady(self.establish(need.key, response))

    def establish(
        self, key: PairwiseKey, receiver_rand: ReceiverESPrimRandObject, *, expiry: datetime | None = None
    ) -> OriginatorSession:
        """B.2g/B.2h: build the originatorESPrimRandObject and derive sessionESPrimKey."""
        now = self._now()
        if receiver_rand.is_expired(now):
            raise UnknownRecvRandID(f"receiverESPrimRandObject {receiver_rand.rand_id!r} has expired")
        if key.is_expired(now):
            raise UnknownKeyID(f"pairwiseESPrimKey {key.kid!r} has expired")
        esk = next((a for a in self.policy.key_gen_alg_ids if a in receiver_rand.key_gen_alg_ids), None)
        if esk is None:
            raise UnsupportedOption("no common sessionESPrimKey generation algorithm with the Receiver")
        espa = tuple(p for p in self.policy.protocol_and_alg_ids if p in receiver_rand.protocol_and_alg_ids)
        if not espa:
            raise UnsupportedOption("no common AEAD algorithm with the Receiver")
        if expiry is None:
            expiry = min(now + self.policy.rand_lifetime, receiver_rand.expiry)
        else:
            expiry = ensure_utc(expiry, what="expiry")
            if expiry > receiver_rand.expiry:
                raise UnknownOrigRandID(
                    "originatorESPrimRandObject expiry must not be later than the receiverESPrimRandObject's (B.2g)"
                )
            if expiry <= now:
                raise UnknownOrigRandID("originatorESPrimRandObject expiry is in the past")
        oro = OriginatorESPrimRandObject(
            rand_id=self._fresh_rand_id(key.kid),
            rand_value=secrets.token_bytes(RAND_VALUE_OCTETS),
            expiry=expiry,
            protocol_and_alg_ids=espa,
            key_gen_alg_id=esk,
        )
        session_key = m2mkeys.derive_session_esprim_key(key.key, receiver_rand.rand_value, oro.rand_value, int(esk))
        expiries = [oro.expiry, receiver_rand.expiry] + ([key.expires_at] if key.expires_at else [])
        session = OriginatorSession(
            key=key, receiver_rand=receiver_rand, originator_rand=oro, enc=espa[0].jwe_enc,
            session_key=session_key, expires_at=min(expiries),
        )
        self._purge(now)
        self._sessions[key.kid] = session
        self._by_ref[session.ref] = session
        return session

    def _fresh_rand_id(self, kid: str) -> str:
        while True:  # unique among this Originator's valid originatorESPrimRandObjects (B.2g)
            rid = new_rand_id(ORIGINATOR_PREFIX)
            if not any(r.kid == kid and r.ori == rid for r in self._by_ref):
                return rid

    def refresh(self, session: OriginatorSession) -> OriginatorSession:
        """In-band refresh (TS-0003 8.4.3.2): a new session whose ``oro`` the old session announces
        with its next request (if the old one is still usable); the new one becomes current."""
        now = self._now()
        nxt = self._next_rro.pop(session.key.kid, None)
        rro = nxt if self._rand_usable(nxt, now) else session.receiver_rand
        assert rro is not None
        new = self.establish(session.key, rro)
        if session.usable(now, self.policy.min_remaining):
            session.announce = new.originator_rand
        return new

    def _purge(self, now: datetime) -> None:
        self._by_ref = {r: s for r, s in self._by_ref.items() if s.expires_at > now}
        self._outstanding = {t: o for t, o in self._outstanding.items() if o[1] > now}

    # ------------------------------------------------------------------ phase C
    def protect_request(
        self,
        inner: RequestPrimitive | bytes,
        session: OriginatorSession,
        *,
        cty: str | None = None,
    ) -> tuple[str, PendingResponse]:
        """C.2/C.3: the ESPrim Object for ``inner`` and the pending state for its response.

        ``inner`` as bytes must already be the serialization named by ``cty`` (default: the
        policy's JSON/CBOR request media type).
        """
        now = self._now()
        policy = self.policy
        if session.retired:
            raise SessionRetired("session retired: establish a new originatorESPrimRandObject")
        if not session.usable(now, policy.min_remaining):
            raise SessionExpired(f"session {session.ref.ori!r}/{session.ref.rri!r} has expired or expires too soon")
        if session.seals >= policy.max_seals:
            session.retired = True
            raise SessionRetired("session key reached its AES-GCM invocation bound; a new session is needed")
        media = policy.media
        if isinstance(inner, RequestPrimitive):
            if inner.rqet is None and policy.request_lifetime is not None:
                # whole seconds (rounded up): the plain m2m:timestamp form every CSE parses
                rqet = (now + policy.request_lifetime).replace(microsecond=0) + timedelta(seconds=1)
                inner = replace(inner, rqet=AbsRelTimestamp.at(rqet))
            plaintext = encode_inner(inner, media)
            inner_rqi = inner.rqi
            cty = _REQUEST_CTY[media]
        elif isinstance(inner, (bytes, bytearray)):
            plaintext = bytes(inner)
            try:
                inner_rqi = RequestPrimitive.from_cbor(plaintext).rqi if media == MEDIA_CBOR else RequestPrimitive.from_json_bytes(plaintext).rqi
            except (ParseError, ValueError):
                inner_rqi = ""  # opaque inner primitive: its response is not matched by rqi
            cty = cty if cty is not None else cty_for("preq", media)
        else:
            raise EncryptionError(f"inner request must be a RequestPrimitive or bytes, not {type(inner).__name__}")
        oro = None
        announced = None
        if not session.acknowledged:
            oro = session.originator_rand  # possibly the first object the Receiver sees (C.3)
        elif session.announce is not None:
            oro = announced = session.announce
        ref = session.ref
        if oro is None:  # the steady state: a per-session constant header (enc: one of ours)
            protected = jwe._plain_protected_b64(session.enc, ref.kid, cty, ref.ori, ref.rri)
        else:
            protected = jwe.ESPrimHeader(
                enc=session.enc, kid=ref.kid, ori=ref.ori, rri=ref.rri, cty=cty, oro=oro.to_json()
            ).protected_b64()
        obj = jwe.seal_protected(protected, session.cipher(session.enc), plaintext)
        session.seals += 1
        pending = PendingResponse(
            ref=ref, inner_rqi=inner_rqi, token=self._token_prefix + str(next(self._token_counter)),
            announced=None if announced is None else announced.rand_id,
        )
        self._outstanding[pending.token] = (pending, session.expires_at)
        return obj, pending

    def open_response(self, esprim_object: str | bytes, pending: PendingResponse) -> ResponsePrimitive:
        """C.11: verify and decrypt the ESPrim Object of the outer response to ``pending``."""
        now = self._now()
        parsed = jwe.parse(esprim_object)
        h = parsed.header
        out = self._outstanding.get(pending.token)
        if out is None or (out[0] is not pending and out[0] != pending):
            raise SessionMismatch("no request is waiting for this response (already answered or never sent)")
        ref = pending.ref
        if h.kid != ref.kid:
            raise SessionMismatch("response names another pairwiseESPrimKeyID", rsc=RSC.ESPRIM_UNKNOWN_KEY_ID)
        if h.ori != ref.ori:
            raise SessionMismatch("response names another originatorESPrimRandObject", rsc=RSC.ESPRIM_UNKNOWN_ORIG_RAND_ID)
        if h.rri != ref.rri:
            raise SessionMismatch("response names another receiverESPrimRandObject", rsc=RSC.ESPRIM_UNKNOWN_RECV_RAND_ID)
        session = self._by_ref.get(ref)
        if session is None or now >= session.expires_at:
            self._outstanding.pop(pending.token, None)
            raise SessionExpired("the session of this response has expired; the response is discarded")
        if h.protocol_and_alg_id not in session.originator_rand.protocol_and_alg_ids:
            raise UnsupportedOption(f"response enc {h.enc} is not in the originatorESPrimRandObject's list")
        plaintext = jwe.open_parsed(parsed, session.cipher(h.enc))
        response = decode_inner_response(plaintext, h.cty)
        if pending.inner_rqi and response.rqi != pending.inner_rqi:
            raise SessionMismatch("the inner response answers another request (Request Identifier differs)")
        rro = None
        if h.rro is not None:
            try:
                rro = ReceiverESPrimRandObject.from_json(h.rro, clock=self._clock, path="rro")
            except (ParseError, ValueError) as exc:
                raise ESPrimParseError(f"ESPrim Object: {exc}") from None
        # Accepted.
        del self._outstanding[pending.token]
        session.acknowledged = True
        if pending.announced is not None:
            announced = self._by_ref.get(SessionRef(ref.kid, pending.announced, ref.rri))
            if announced is not None:
                announced.acknowledged = True
            if session.announce is not None and session.announce.rand_id == pending.announced:
                session.announce = None
        if rro is not None and self._rand_usable(rro, now):
            self._next_rro[ref.kid] = rro  # in-band refresh: the next start() uses it
        return response

    def handle_error(self, pending: PendingResponse, rsc: int) -> ErrorAdvice:
        """React to an outer error response (table 7.6.2-1) for ``pending``."""
        self._outstanding.pop(pending.token, None)
        session = self._by_ref.get(pending.ref)
        if rsc == RSC.ESPRIM_UNKNOWN_ORIG_RAND_ID and session is not None:
            session.acknowledged = False
            return ErrorAdvice.RESEND
        if rsc in (RSC.ESPRIM_UNKNOWN_KEY_ID, RSC.ESPRIM_UNKNOWN_RECV_RAND_ID, RSC.ESPRIM_UNKNOWN_ORIG_RAND_ID):
            if session is not None:
                session.retired = True
            return ErrorAdvice.NEW_SESSION
        return ErrorAdvice.ABORT

    def __repr__(self) -> str:
        return f"Originator(sessions={len(self._sessions)}, outstanding={len(self._outstanding)})"
