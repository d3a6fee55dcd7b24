"""ESPrim Receiver (Target), sans-I/O: TS-0003 8.4.2 phases B (B.1, B.2e-f) and C (C.5-C.9),
TS-0004 7.5.1.2.11 (securityInfoType 3 -> 4), 7.5.1.2.13 and 7.6.2 with the error cases of
table 7.6.2-1.

The Receiver publishes an ``e2eSecInfo`` (:meth:`Receiver.e2e_sec_info`) holding its
supported SUIDs and, when it pre-generates, the current shared receiverESPrimRandObject
(rotated by :meth:`Receiver.current_shared`); it answers a type-3 Notify with a unique one
(:meth:`Receiver.rand_object_response`) without recording it: a unique object is recomputed
from its esprimRandID and the Receiver's K_rand when it is used (:mod:`m2msec.esprim.unique_rand`,
so unauthenticated type-3 requests cannot fill the state); it opens ESPrim Objects (:meth:`Receiver.open_request`)
running C.6a (pairwiseESPrimKey), C.6b (rand objects, expiry, key-generation algorithm),
C.6c (AEAD algorithm lists, authenticated decryption) and the impersonation check (the inner
``From`` must be the identity bound to the pairwiseESPrimKey), and it seals the inner
response with the same sessionESPrimKey (:meth:`Receiver.protect_response`, C.8), optionally
carrying a fresh receiverESPrimRandObject in ``rro`` for in-band refresh.

Every rejection is an :class:`~m2msec.esprim.errors.ESPrimError` whose ``rsc`` is the row
of table 7.6.2-1; :meth:`Receiver.error_response` turns it into the outer response.

m2msec decisions (see the report / docs/profile.md):

* an ``oro`` whose esprimRandExpiry is later than the receiverESPrimRandObject's (C.6b.2.i b)
  is ESPRIM_UNKNOWN_ORIG_RAND_ID, as is an ``oro`` that reuses a cached esprimRandID with
  different content;
* an ``oro`` naming a key-generation algorithm or AEAD ID outside the enumerations is
  ESPRIM_UNSUPPORTED_OPTION (not BAD_REQUEST);
* rand objects and sessions are cached only after the ESPrim Object authenticated; answering a
  type-3 request writes nothing (except, once per key period, the new K_rand);
* an ``rri`` in the unique layout whose tag does not verify under a live K_rand (forged,
  tampered, unknown or rotated-out key id) or whose expiry has passed is
  ESPRIM_UNKNOWN_RECV_RAND_ID, as an unknown stored ID is; a unique object's algorithm lists are
  the Receiver policy's at the time of use;
* the response uses the request's ``enc`` and serialization (``cty``);
* a missing inner ``From`` is an impersonation error (it is not the bound identity); the
  comparison is exact string equality (no SP-relative/absolute normalisation);
* each request object is accepted at most once (beyond TS-0003 8.4.1, which only bounds the
  age of objects): after it authenticated and passed the impersonation check, and before
  anything is recorded, the Receiver records (kid, ori, rri, JWE IV) in its state
  (:meth:`~m2msec.esprim.state.ReceiverState.record_object`) until no object of the session
  can open any more; the same object again is :class:`~m2msec.esprim.errors.ReplayedObject`
  (CONFLICT, 4105), also when another instance on the same store accepted it.  Objects that
  do not authenticate never create a record;
* an authentic inner request whose absolute Request Expiration Timestamp (``rqet``, sealed by
  the Originator) has passed is :class:`~m2msec.esprim.errors.RequestExpired`
  (REQUEST_TIMEOUT, 4008; TS-0004 7.3.2, 7.3.3), checked before the replay record, so a
  Transit CSE that withholds an object cannot have it executed after that time (profile R11).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from m2msec import keys as m2mkeys
from m2msec.errors import M2MSecError, ParseError
from m2msec.esprim import jwe, unique_rand
from m2msec.esprim.common import (
    DEFAULT_MAX_SEALS,
    ESPRIM_SUIDS,
    MEDIA_CBOR,
    MEDIA_JSON,
    SHARED_PREFIX,
    SessionRef,
    cty_for,
    decode_inner_request,
    encode_inner,
    media_of,
    new_rand_id,
)
from m2msec.esprim.errors import (
    EncryptionError,
    ESPrimError,
    ESPrimParseError,
    ImpersonationError,
    ReplayedObject,
    RequestExpired,
    UnknownKeyID,
    UnknownOrigRandID,
    UnknownRecvRandID,
    UnsupportedOption,
)
from m2msec.esprim.keysource import PairwiseKey, PairwiseKeySource
from m2msec.esprim.state import CachedSession, ReceiverState
from m2msec.onem2m import _wire
from m2msec.onem2m.enums import SUID, ESPrimKeyGenAlgID, ESPrimProtocolAndAlgID, SecurityInfoType
from m2msec.onem2m.primitives import RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.onem2m.security import (
    RAND_VALUE_OCTETS,
    E2ESecInfo,
    OriginatorESPrimRandObject,
    ReceiverESPrimRandObject,
    SecurityInfo,
)
from m2msec.onem2m.timestamps import Clock, ensure_utc, format_timestamp

_RESPONSE_CTY = {MEDIA_JSON: cty_for("prsp", MEDIA_JSON), MEDIA_CBOR: cty_for("prsp", MEDIA_CBOR)}
_KEYGEN_VALUES = frozenset(int(v) for v in ESPrimKeyGenAlgID)
_AEAD_VALUES = frozenset(int(v) for v in ESPrimProtocolAndAlgID)


@dataclass(frozen=True)
class ReceiverPolicy:
    """Configuration of a Receiver (TS-0003 8.4.2 B: shared pre-generation or unique on request)."""

    supported_suids: tuple[SUID, ...] = (SUID.PRE_PROVISIONED_ESPRIM, SUID.RSPF_ESPRIM)
    publish_shared: bool = True
    shared_lifetime: timedelta = timedelta(hours=24)
    shared_renew_before: timedelta = timedelta(hours=1)
    unique_lifetime: timedelta = timedelta(hours=1)
    unique_key_period: timedelta | None = None
    """K_rand rotation period of unique rand objects (whole seconds, >= unique_lifetime; shared
    by every instance on one store).  None: 24 h, or unique_lifetime rounded up if longer."""
    key_gen_alg_ids: tuple[ESPrimKeyGenAlgID, ...] = (ESPrimKeyGenAlgID.HMAC_SHA256,)
    protocol_and_alg_ids: tuple[ESPrimProtocolAndAlgID, ...] = (
        ESPrimProtocolAndAlgID.JWE_A256GCM,
        ESPrimProtocolAndAlgID.JWE_A192GCM,
        ESPrimProtocolAndAlgID.JWE_A128GCM,
    )
    refresh_window: timedelta = timedelta(minutes=5)
    max_seals: int = DEFAULT_MAX_SEALS

    def __post_init__(self) -> None:
        suids = tuple(SUID(s) for s in self.supported_suids)
        if not suids or not set(suids) <= ESPRIM_SUIDS:
            raise ValueError("supported_suids must be a non-empty list of ESPrim SUIDs (13, 23, 33, 43)")
        object.__setattr__(self, "supported_suids", suids)
        object.__setattr__(self, "key_gen_alg_ids", tuple(ESPrimKeyGenAlgID(v) for v in self.key_gen_alg_ids))
        object.__setattr__(
            self, "protocol_and_alg_ids", tuple(ESPrimProtocolAndAlgID(v) for v in self.protocol_and_alg_ids)
        )
        if not self.key_gen_alg_ids or not self.protocol_and_alg_ids:
            raise ValueError("algorithm lists must not be empty")
        if self.shared_renew_before >= self.shared_lifetime:
            raise ValueError("shared_renew_before must be shorter than shared_lifetime")
        if self.unique_lifetime <= timedelta(0) or self.max_seals < 1:
            raise ValueError("unique_lifetime and max_seals must be positive")
        if self.unique_lifetime < timedelta(seconds=1):
            raise ValueError("unique_lifetime must be at least one second (expiries are whole seconds)")
        if self.unique_key_period is None:
            second = timedelta(seconds=1)
            object.__setattr__(self, "unique_key_period", max(timedelta(hours=24), -(-self.unique_lifetime // second) * second))
        assert self.unique_key_period is not None
        if self.unique_key_period % timedelta(seconds=1) or self.unique_key_period < self.unique_lifetime:
            raise ValueError("unique_key_period must be whole seconds and at least unique_lifetime")

    @property
    def rand_key_period(self) -> timedelta:
        """:attr:`unique_key_period` as resolved by the constructor."""
        assert self.unique_key_period is not None
        return self.unique_key_period


@dataclass(frozen=True, repr=False)
class ResponseContext:
    """What :meth:`Receiver.protect_response` needs to seal the inner response (C.8)."""

    ref: SessionRef
    enc: str
    media: str
    inner_rqi: str
    peer_id: str
    outer_from: str | None
    expires_at: datetime
    _content_key: bytes | jwe.ContentCipher = field(compare=False)

    @classmethod
    def _make(cls, **values: Any) -> ResponseContext:
        """An instance from values the Receiver has just established, without re-running the
        frozen-dataclass ``__init__`` field by field (same fields, same result)."""
        obj = object.__new__(cls)
        obj.__dict__.update(values)
        return obj

    def __repr__(self) -> str:
        return (
            f"ResponseContext(ref={self.ref!r}, enc={self.enc!r}, media={self.media!r}, inner_rqi={self.inner_rqi!r}, "
            f"peer_id={self.peer_id!r}, expires_at={self.expires_at.isoformat()}, key=<hidden>)"
        )


class Receiver:
    """ESPrim Receiver/Target state machine; I/O-free, clock injected."""

    def __init__(
        self,
        *,
        keys: PairwiseKeySource,
        state: ReceiverState,
        clock: Clock,
        policy: ReceiverPolicy | None = None,
    ) -> None:
        self._keys = keys
        self._state = state
        self._clock = clock
        self.policy = policy or ReceiverPolicy()

    def _now(self) -> datetime:
        now = self._clock()
        if type(now) is datetime and now.tzinfo is timezone.utc:  # the usual clock: nothing to convert
            return now
        return ensure_utc(now, what="clock()")

    # ------------------------------------------------------------------ phase B
    def _new_rand(self, prefix: str, lifetime: timedelta) -> ReceiverESPrimRandObject:
        return ReceiverESPrimRandObject(
            rand_id=new_rand_id(prefix),
            rand_value=secrets.token_bytes(RAND_VALUE_OCTETS),
            expiry=self._now() + lifetime,
            protocol_and_alg_ids=self.policy.protocol_and_alg_ids,
            key_gen_alg_ids=self.policy.key_gen_alg_ids,
        )

    def current_shared(self) -> ReceiverESPrimRandObject:
        """B.1: the valid shared receiverESPrimRandObject, issuing a new one when the current one
        has less than ``shared_renew_before`` left (the old one stays valid until its expiry)."""
        current = self._state.current_shared()
        if current is not None and current.expiry - self._now() > self.policy.shared_renew_before:
            return current
        fresh = self._new_rand(SHARED_PREFIX, self.policy.shared_lifetime)
        return self._state.publish_shared(fresh, replacing=None if current is None else current.rand_id)

    def issue_unique(self) -> ReceiverESPrimRandObject:
        """B.2e: a unique (not shared) receiverESPrimRandObject.  Nothing is recorded: the ID
        carries its expiry and K_rand id and is authenticated under K_rand, the value is
        recomputed from it (:mod:`m2msec.esprim.unique_rand`).  The K_rand of the current
        key period is created (atomically, in the state) on first use."""
        now = self._now()
        p = self.policy
        period = p.rand_key_period
        epoch = unique_rand.key_epoch(now, period)
        rk = self._state.rand_key(
            unique_rand.key_name(period, epoch),
            create_expires_at=unique_rand.key_expiry(period, epoch, p.unique_lifetime),
        )
        if rk is None:
            raise ESPrimError("no K_rand for unique receiverESPrimRandObjects", rsc=ResponseStatusCode.INTERNAL_SERVER_ERROR)
        expiry_s = min(unique_rand.unix_seconds(now + p.unique_lifetime), unique_rand.unix_seconds(rk.expires_at))
        if expiry_s > unique_rand.MAX_EXPIRY or unique_rand.from_unix_seconds(expiry_s) <= now:
            raise ESPrimError("cannot issue a unique receiverESPrimRandObject now", rsc=ResponseStatusCode.INTERNAL_SERVER_ERROR)
        rand_id = unique_rand.make_unique_id(rk.key, expiry_s, epoch & 0xFF)
        return ReceiverESPrimRandObject(
            rand_id=rand_id,
            rand_value=unique_rand.rand_value(rk.key, rand_id),
            expiry=unique_rand.from_unix_seconds(expiry_s),
            protocol_and_alg_ids=p.protocol_and_alg_ids,
            key_gen_alg_ids=p.key_gen_alg_ids,
        )

    def _unique_rand(self, rand_id: str, now: datetime) -> ReceiverESPrimRandObject | None:
        """C.6b: the unique object named by ``rand_id``, recomputed; None if its tag does not
        verify under a live K_rand (forged, unknown or rotated-out key id) or it expired."""
        parsed = unique_rand.parse_unique_id(rand_id)
        if parsed is None:
            return None
        expiry = unique_rand.from_unix_seconds(parsed.expiry_s)
        if now >= expiry:
            return None
        period = self.policy.rand_key_period
        epoch = unique_rand.epoch_for_key_id(parsed.key_id, now, period)
        if epoch < 0:
            return None
        rk = self._state.rand_key(unique_rand.key_name(period, epoch))  # never created here
        if rk is None or expiry > rk.expires_at or not unique_rand.check_tag(rk.key, parsed):
            return None
        return ReceiverESPrimRandObject(
            rand_id=rand_id,
            rand_value=unique_rand.rand_value(rk.key, rand_id),
            expiry=expiry,
            protocol_and_alg_ids=self.policy.protocol_and_alg_ids,
            key_gen_alg_ids=self.policy.key_gen_alg_ids,
        )

    def _receiver_rand(self, rand_id: str, now: datetime) -> ReceiverESPrimRandObject | None:
        if unique_rand.is_unique_layout(rand_id):
            return self._unique_rand(rand_id, now)
        return self._state.get_receiver_rand(rand_id)  # shared objects (and unique ones stored by older versions)

    def e2e_sec_info(self, certificates: Sequence[bytes] | None = None) -> E2ESecInfo:
        """The ``esi`` attribute to publish (B.1b): SUIDs, optional certificates, shared rand object."""
        return E2ESecInfo(
            supported_features=self.policy.supported_suids,
            certificates=tuple(certificates) if certificates else None,
            shared_rand_object=self.current_shared() if self.policy.publish_shared else None,
        )

    def rand_object_response(self, outer_request: RequestPrimitive) -> ResponsePrimitive:
        """TS-0004 7.5.1.2.11: answer a securityInfoType 3 Notify with type 4 and a unique rand object."""
        try:
            seci = outer_request.security_info(clock=self._clock)
        except ParseError as exc:
            raise ESPrimParseError(f"securityInfo does not parse: {exc}") from None
        if seci is None or seci.sit != SecurityInfoType.RECEIVER_ESPRIM_RAND_OBJECT_REQUEST:
            raise ESPrimParseError("not a receiverESPrimRandObject request (securityInfoType 3)")
        return ResponsePrimitive.with_security_info(
            outer_request, SecurityInfo.rand_object_response(self.issue_unique()), ot=self._now()
        )

    # ------------------------------------------------------------------ phase C
    @staticmethod
    def peek(esprim_object: str | bytes) -> jwe.ESPrimHeader:
        """Parse the protected header only (e.g. to learn the ``kid`` before a MAF key retrieval)."""
        return jwe.parse(esprim_object).header

    def _parse_oro(self, raw: dict[str, Any]) -> OriginatorESPrimRandObject:
        esk = raw.get("esk")
        if isinstance(esk, int) and not isinstance(esk, bool) and esk not in _KEYGEN_VALUES:
            raise UnsupportedOption(f"oro: sessionESPrimKey generation algorithm {esk} not supported")
        espa = raw.get("espa")
        if isinstance(espa, list):
            for v in espa:
                if isinstance(v, int) and not isinstance(v, bool) and v not in _AEAD_VALUES:
                    raise UnsupportedOption(f"oro: esprimProtocolAndAlgID {v} not supported")
        try:
            return OriginatorESPrimRandObject.from_json(raw, clock=self._clock, path="oro")
        except (ParseError, ValueError) as exc:
            raise ESPrimParseError(f"ESPrim Object: {exc}") from None

    def _resolve_key(self, kid: str, now: datetime) -> PairwiseKey:
        key = self._keys.resolve(kid)  # C.6a: UnknownKeyID for unknown or expired
        if key.kid != kid or (key.expires_at is not None and now >= key.expires_at):
            raise UnknownKeyID(f"pairwiseESPrimKeyID {kid!r} has expired")
        return key

    def _new_session(
        self, key: PairwiseKey, h: jwe.ESPrimHeader, first_oro: OriginatorESPrimRandObject | None, now: datetime
    ) -> tuple[CachedSession, OriginatorESPrimRandObject | None]:
        """C.6b: find the rand objects, check them, derive sessionESPrimKey."""
        if not _wire.NCNAME_RE.fullmatch(h.rri):
            raise UnknownRecvRandID("rri is not an esprimRandID issued by this Receiver")
        rro = self._receiver_rand(h.rri, now)
        if rro is None or rro.is_expired(now):
            raise UnknownRecvRandID(f"receiverESPrimRandObject {h.rri!r} is unknown or expired")
        if not _wire.NCNAME_RE.fullmatch(h.ori):
            raise UnknownOrigRandID("ori is not an esprimRandID")
        cached = self._state.get_originator_rand(h.kid, h.ori)
        new_oro = None
        if first_oro is not None:
            if cached is not None and (cached.rand_value != first_oro.rand_value or cached != first_oro):
                raise UnknownOrigRandID(f"oro reuses esprimRandID {h.ori!r} of a different originatorESPrimRandObject")
            oro = first_oro
            new_oro = first_oro if cached is None else None
        elif cached is not None:
            oro = cached
        else:
            raise UnknownOrigRandID(f"originatorESPrimRandObject {h.ori!r} is unknown or expired")
        # C.6b.2.i
        if oro.is_expired(now):
            raise UnknownOrigRandID(f"originatorESPrimRandObject {h.ori!r} has expired")
        if oro.expiry > rro.expiry:
            raise UnknownOrigRandID(
                f"originatorESPrimRandObject {h.ori!r} expires after receiverESPrimRandObject {h.rri!r}"
            )
        # C.6b.2.ii
        if oro.key_gen_alg_id not in rro.key_gen_alg_ids or oro.key_gen_alg_id not in self.policy.key_gen_alg_ids:
            raise UnsupportedOption(f"sessionESPrimKey generation algorithm {int(oro.key_gen_alg_id)} not offered")
        # C.6c.1 (first part)
        if not set(oro.protocol_and_alg_ids) <= set(rro.protocol_and_alg_ids):
            raise UnsupportedOption("originator AEAD algorithms are not a subset of the receiver's")
        session_key = m2mkeys.derive_session_esprim_key(key.key, rro.rand_value, oro.rand_value, int(oro.key_gen_alg_id))
        objects_expire_at = min(oro.expiry, rro.expiry)
        expires_at = objects_expire_at if key.expires_at is None else min(objects_expire_at, key.expires_at)
        protocol_and_alg_ids = tuple(int(v) for v in oro.protocol_and_alg_ids)
        return CachedSession(session_key, expires_at, protocol_and_alg_ids, objects_expire_at), new_oro

    def open_request(
        self, esprim_object: str | bytes, *, outer_from: str | None = None
    ) -> tuple[RequestPrimitive, ResponseContext]:
        """C.6: verify and decrypt an ESPrim Object into the inner request primitive.

        ``outer_from`` (the outer Notify's From, possibly rewritten by transit CSEs) is only
        recorded in the context; the impersonation check uses the key's bound identity.
        """
        now = self._now()
        parsed = jwe.parse(esprim_object)
        h = parsed.header
        key = self._resolve_key(h.kid, now)
        ref = SessionRef(h.kid, h.ori, h.rri)
        media = media_of(h.cty, "preq")  # None: refused after authentication (DECRYPTION_ERROR)
        first_oro = announced = None
        if h.oro is not None:
            o = self._parse_oro(h.oro)
            if o.rand_id == h.ori:
                first_oro = o
            else:
                announced = o  # in-band refresh: cached for a later session
        session = None if first_oro is not None else self._state.get_session(ref)
        new_oro = None
        fresh_session = session is None
        if session is None:
            session, new_oro = self._new_session(key, h, first_oro, now)
        if now >= session.expires_at:
            raise UnknownOrigRandID(f"session {h.ori!r}/{h.rri!r} has expired")
        # C.6c.1 (second part)
        pa = h.protocol_and_alg_id
        if pa not in session.protocol_and_alg_ids:
            raise UnsupportedOption(f"enc {h.enc} is not in the originatorESPrimRandObject's list")
        if announced is not None:
            if announced.is_expired(now):
                raise UnknownOrigRandID(f"announced originatorESPrimRandObject {announced.rand_id!r} has expired")
            prior = self._state.get_originator_rand(h.kid, announced.rand_id)
            if prior is not None and (prior.rand_value != announced.rand_value or prior != announced):
                raise UnknownOrigRandID(f"oro reuses esprimRandID {announced.rand_id!r} of a different object")
        content_key = session.cipher(pa)  # sessionESPrimKey as cached (C.6b.2.iii), cipher built once
        plaintext = jwe.open_parsed(parsed, content_key)  # C.6c.2: BAD_MAC
        inner = decode_inner_request(plaintext, h.cty, media)  # DECRYPTION_ERROR
        if inner.fr != key.peer_id:  # TS-0004 table 7.6.2-1, TS-0003 7.2.2
            raise ImpersonationError(
                f"inner request From {inner.fr!r} is not the identity bound to pairwiseESPrimKeyID {h.kid!r}"
            )
        # Authenticated.  A request whose own (sealed) expiration time has passed is not
        # executed (TS-0004 7.3.2/7.3.3 REQUEST_TIMEOUT): it bounds a withheld object's delay.
        rqet = inner.rqet
        if rqet is not None and rqet.absolute is not None and now > rqet.absolute:
            raise RequestExpired(f"the inner request expired at {format_timestamp(rqet.absolute)} "
                                 f"(Request Expiration Timestamp); it arrived at {format_timestamp(now)}")
        # Accepted once: a replay is refused before anything else is recorded.
        if not self._state.record_object(ref, parsed.iv, session.replay_window_end):
            raise ReplayedObject(f"this ESPrim Object of session {h.ori!r}/{h.rri!r} was already accepted (replay)")
        # Now record what the object carried (TS-0003 8.4.3.2 "shall be recorded").
        if new_oro is not None:
            self._state.add_originator_rand(h.kid, new_oro)
        if announced is not None:
            self._state.add_originator_rand(h.kid, announced)
        if fresh_session:
            self._state.put_session(ref, session)
        assert media is not None
        ctx = ResponseContext._make(
            ref=ref, enc=h.enc, media=media, inner_rqi=inner.rqi, peer_id=key.peer_id,
            outer_from=outer_from, expires_at=session.expires_at, _content_key=content_key,
        )
        return inner, ctx

    def protect_response(
        self,
        ctx: ResponseContext,
        inner_response: ResponsePrimitive | bytes,
        *,
        refresh: bool | None = None,
    ) -> str:
        """C.8: seal the inner response with the request's sessionESPrimKey.

        ``refresh``: include a receiverESPrimRandObject in ``rro`` (True), never (False), or
        when the session expires within ``policy.refresh_window`` (None).  Failures are
        ESPRIM_ENCRYPTION_ERROR: the session expired since the request was opened, its
        seal bound is reached, the response answers another request or does not serialize.
        """
        now = self._now()
        if now >= ctx.expires_at:
            raise EncryptionError("the session expired before the inner response could be protected")
        if isinstance(inner_response, ResponsePrimitive):
            if inner_response.rqi != ctx.inner_rqi:
                raise EncryptionError("inner response Request Identifier does not match the inner request")
            plaintext = encode_inner(inner_response, ctx.media)
        elif isinstance(inner_response, (bytes, bytearray)):
            plaintext = bytes(inner_response)
        else:
            raise EncryptionError(f"inner response must be a ResponsePrimitive or bytes, not {type(inner_response).__name__}")
        if refresh is None:
            refresh = ctx.expires_at - now <= self.policy.refresh_window
        rro = None
        if refresh:
            rro = self._refresh_object(ctx, now)
        if self._state.count_seal(ctx.ref, ctx.expires_at) > self.policy.max_seals:
            raise EncryptionError("the session key reached its AES-GCM invocation bound; a new session is needed")
        ref = ctx.ref
        cty = _RESPONSE_CTY[ctx.media]
        try:
            key = ctx._content_key
            if rro is None and type(key) is jwe.ContentCipher and key.enc == ctx.enc:  # enc: parsed and checked
                return jwe.seal_protected(jwe._plain_protected_b64(ctx.enc, ref.kid, cty, ref.ori, ref.rri), key, plaintext)
            header = jwe.ESPrimHeader(
                enc=ctx.enc, kid=ref.kid, ori=ref.ori, rri=ref.rri, cty=cty, rro=None if rro is None else rro.to_json()
            )
            return jwe.seal(header, key, plaintext)
        except ESPrimError as exc:
            raise EncryptionError(f"inner response could not be encrypted: {exc.args[0]}") from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise EncryptionError(f"inner response could not be encrypted: {type(exc).__name__}") from None

    def _refresh_object(self, ctx: ResponseContext, now: datetime) -> ReceiverESPrimRandObject:
        if self.policy.publish_shared:
            shared = self.current_shared()
            if shared.rand_id != ctx.ref.rri and shared.expiry > ctx.expires_at:
                return shared
        return self.issue_unique()

    # ------------------------------------------------------------------ outer primitives
    def esprim_response(self, outer_request: RequestPrimitive, esprim_object: str) -> ResponsePrimitive:
        """TS-0004 7.6.2 step M: successful outer Notify response carrying the ESPrim Object."""
        return ResponsePrimitive.with_security_info(outer_request, SecurityInfo.esprim(esprim_object), ot=self._now())

    def error_response(self, exc: M2MSecError, outer_request: RequestPrimitive | str) -> ResponsePrimitive:
        """The outer error response for a rejection (TS-0004 7.3.3.13; table 7.6.2-1 RSC)."""
        rqi = outer_request if isinstance(outer_request, str) else outer_request.rqi
        rvi = None if isinstance(outer_request, str) else outer_request.rvi
        rsc = exc.rsc if isinstance(exc, M2MSecError) else ResponseStatusCode.INTERNAL_SERVER_ERROR
        message = exc.args[0] if isinstance(exc, M2MSecError) and exc.args else rsc.name
        return ResponsePrimitive(rsc=rsc, rqi=rqi, pc={"m2m:dbg": str(message)}, rvi=rvi, ot=self._now())

    def __repr__(self) -> str:
        return f"Receiver(keys={self._keys!r}, state={self._state!r})"
