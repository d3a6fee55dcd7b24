"""ESCertKE Initiating and Terminating End-Points, sans-I/O (TS-0003 8.7.2.2 B and C).

h11-style: each end-point is an explicit state machine fed with bytes; the four ESCertKE
Messages are the exact bytes of the four TLS 1.2 flights of table 8.7.2.2-1, produced and
consumed by :class:`m2msec.tls.TLSEngine` in certificate mode (TS-0003 10.2.3, TLS
transport profile ``TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256``), with mutual certificate
authentication by :func:`m2msec.tls.pkiverify.pki_verify_hook` (TS-0003 8.1.2.5, injected
clock).  On success both export ``EXPORTER-oneM2M-ESCertKE`` (48 octets, 10.3.1) and cache
the pairwiseE2EKey with the peer identity in :class:`~m2msec.escertke.keys.ESCertKEKeys`.

Triggering (step B):

* :class:`InitiatingEndPoint` (own credentials) is commanded with a :class:`TerminatorInfo`
  (certificate information of 8.1.2.4 - flavour, identifier, trust anchors - and the
  Terminating End-Point's identity: where Message 1 goes and what the key is bound to),
  and returns an :class:`Initiator` for one procedure.
* :class:`TerminatingEndPoint` is configured with :class:`InitiatorInfo` entries
  (certificate information, trust anchors, identity); the Notify originator (``From``)
  selects the entry, an originator with none is refused before any TLS processing.

Both info classes also carry the certificate status settings of TS-0003 8.1.2.2: ``crls``
(a :class:`~m2msec.pki.crl.CRLStore`, kept by reference so that its owner's refreshes
apply; a sequence of CRL objects is wrapped in a new store) and ``revocation`` (``off``,
``if-available`` - the default -, ``require``).  A revoked peer certificate fails the
handshake like any other certificate failure (AUTHENTICATION_FAILED, 4106, the
:class:`~m2msec.pki.CertificateVerificationError` with reason REVOKED as the cause of
the cause).  Both settings take part in the infos' equality and hash (the store by
identity), so configurations that differ only in them get separate TLS contexts.

Procedure state (profile decisions): the Terminating End-Point keeps at most one unfinished
procedure per Initiator identity; a new (never seen) Message 1 replaces it; a Message 1
whose ClientHello.random was already seen within ``replay_window`` is refused; Message 3
needs an unfinished, unexpired procedure (default ``procedure_timeout`` 60 s); a failed,
expired or abandoned procedure leaves nothing cached.  TLS engines cannot be serialised, so
unfinished procedures live in the instance's memory (Messages 1 and 3 of one procedure
must reach the same instance); established keys go to the shared store when configured.

The key cache receives the peer configuration's ``crls``/``revocation`` and the CRL store's
generation read before the peer's certificate was verified, so that a certificate revoked
after the procedure ends the key (see :mod:`m2msec.escertke.keys`).
"""

from __future__ import annotations

import enum
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.escertke.errors import ESCertKEError, Reason
from m2msec.escertke.keys import ESCertKEKeys, ESCertKEResult
from m2msec.escertke.messages import classify, client_hello_random, first_kind
from m2msec.keys import EXPORT_LENGTH, LABEL_ESCERTKE
from m2msec.onem2m.timestamps import Clock, ensure_utc
from m2msec.pki import PeerCertInfo, VerifiedPeer
from m2msec.pki.crl import CRLStore, RevocationPolicy, RevocationStatus, as_store
from m2msec.tls import CertCredentials, Role, TLSConfig, TLSContext, TLSEngine, TLSError, TLSHandshakeError
from m2msec.tls import profiles
from m2msec.tls.pkiverify import pki_tls_kwargs

__all__ = [
    "DEFAULT_PROCEDURE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE1_PER_WINDOW",
    "DEFAULT_REPLAY_WINDOW",
    "Initiator",
    "InitiatorInfo",
    "InitiatorState",
    "InitiatingEndPoint",
    "TerminatorInfo",
    "TerminatingEndPoint",
    "TerminatorState",
]

DEFAULT_PROCEDURE_TIMEOUT = timedelta(seconds=60)
DEFAULT_REPLAY_WINDOW = timedelta(minutes=10)
DEFAULT_MAX_MESSAGE1_PER_WINDOW = 1000
_SUITES = (profiles.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,)


def _normalise_status(info: Any) -> None:
    """``crls``: a :class:`CRLStore` (kept as is) or CRL objects (wrapped in a new store);
    ``revocation``: a :class:`RevocationPolicy` (ValueError for an unknown policy name)."""
    object.__setattr__(info, "crls", as_store(info.crls))
    object.__setattr__(info, "revocation", RevocationPolicy(info.revocation))


@dataclass(frozen=True)
class TerminatorInfo:
    """Step B arguments of the Initiating End-Point's command.

    ``identity`` is bound to the key and is where Message 1 goes (``address`` overrides
    the Notify target, e.g. a resource path on a CSE)."""

    cert_info: PeerCertInfo
    trust_anchors: tuple[x509.Certificate, ...]
    identity: str
    address: str | None = None
    server_name: str | None = None  # SNI to send (optional)
    #: certificate status (TS-0003 8.1.2.2) of the Terminating End-Point's certificate path;
    #: the store is kept by reference (its owner's refreshes apply) and compared by identity
    crls: CRLStore | None = None
    revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("the Terminating End-Point's identity is required")
        if not self.trust_anchors:
            raise ValueError("at least one trust anchor is required")
        object.__setattr__(self, "trust_anchors", tuple(self.trust_anchors))
        _normalise_status(self)

    @property
    def notify_target(self) -> str:
        return self.address or self.identity


@dataclass(frozen=True)
class InitiatorInfo:
    """Step B configuration of the Terminating End-Point for one authorised Initiator.

    ``identity`` is bound to the key; ``originators`` are further Notify ``From`` values
    accepted for it (e.g. the SP-relative form a CSE rewrites an AE-ID to)."""

    cert_info: PeerCertInfo
    trust_anchors: tuple[x509.Certificate, ...]
    identity: str
    originators: frozenset[str] = field(default_factory=frozenset)
    #: certificate status (TS-0003 8.1.2.2) of the Initiating End-Point's certificate path
    crls: CRLStore | None = None
    revocation: RevocationPolicy | str = RevocationPolicy.IF_AVAILABLE

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("the Initiating End-Point's identity is required")
        if not self.trust_anchors:
            raise ValueError("at least one trust anchor is required")
        object.__setattr__(self, "trust_anchors", tuple(self.trust_anchors))
        object.__setattr__(self, "originators", frozenset(self.originators))
        _normalise_status(self)


class InitiatorState(str, enum.Enum):
    IDLE = "IDLE"  # nothing sent
    AWAIT_MESSAGE_2 = "AWAIT_MESSAGE_2"
    AWAIT_MESSAGE_4 = "AWAIT_MESSAGE_4"
    DONE = "DONE"
    FAILED = "FAILED"


class TerminatorState(str, enum.Enum):
    AWAIT_MESSAGE_3 = "AWAIT_MESSAGE_3"
    DONE = "DONE"
    FAILED = "FAILED"


def _status_generation(info: TerminatorInfo | InitiatorInfo) -> int | None:
    """The peer's CRL store generation, read before the handshake verifies the peer's certificate:
    the key cache re-checks the path on first use if the store changed after this read."""
    return info.crls.generation if info.crls is not None else None


def _export(engine: TLSEngine) -> bytes:
    return engine.export_keying_material(LABEL_ESCERTKE, EXPORT_LENGTH)


def _handshake_error(exc: TLSHandshakeError, side: str) -> ESCertKEError:
    cause = exc.__cause__
    detail = f"{cause}" if cause is not None else exc.args[0]
    return ESCertKEError(Reason.AUTHENTICATION_FAILED, f"{side}: {exc.reason.value}: {detail}")


class _CachedVerify:
    """``pki_verify_hook`` with a cache of successful verifications of identical chains.

    A chain (the exact certificates, compared by DER) that passed TS-0003 8.1.2.5 for this
    peer configuration passes again while the injected clock is inside the validity of
    every certificate on its path and of the trust anchor; signatures, identifier, flavour
    and name constraints cannot change for the same DER.  Failures are never cached.

    Certificate status (8.1.2.2) can change for the same DER, so with a revocation policy
    other than ``off`` and a :class:`CRLStore` an entry also records the store's
    :attr:`CRLStore.generation` read *before* the verification: any refresh of the store
    (``add`` of a newer CRL, ``replace``) makes every older entry miss, and the chain is
    verified in full against the new CRLs (a certificate revoked after the first
    handshake is refused from the next one on).  Under ``require`` an entry is moreover
    only used while the CRLs that made the path GOOD are still current: from the latest
    thisUpdate to the earliest nextUpdate of the CRLs of the path's issuers that were
    current at verification time (after that the full verification reports
    REVOCATION_UNKNOWN for a stale CRL).  Under ``if-available`` a CRL going stale turns
    GOOD into the also accepted *undetermined*, so no such bound is needed.

    The TLS engine calls :meth:`verify_der_chain` with the DER encodings OpenSSL already
    has, so a hit needs no conversion to ``cryptography`` objects; only a miss loads them
    and runs the full verification.
    """

    def __init__(self, hook: Any, clock: Clock, size: int = 256, *, crls: CRLStore | None = None,
                 revocation: RevocationPolicy | str = RevocationPolicy.OFF) -> None:
        self._hook = hook
        self._clock = clock
        self._size = size
        self._revocation = RevocationPolicy(revocation)
        #: the store whose generation guards the entries (None: status cannot change)
        self._crls = crls if self._revocation is not RevocationPolicy.OFF else None
        # DER chain -> (not before, not after (inclusive), generation, result)
        self._ok: OrderedDict[tuple[bytes, ...], tuple[datetime, datetime, int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, chain: list[x509.Certificate]) -> Any:
        key = tuple(c.public_bytes(Encoding.DER) for c in chain)
        return self.verify_der_chain(key, lambda: list(chain))

    def _generation(self) -> int:
        return self._crls.generation if self._crls is not None else 0

    def verify_der_chain(self, der_chain: tuple[bytes, ...],
                         load_chain: Callable[[], list[x509.Certificate]]) -> Any:
        key = der_chain if type(der_chain) is tuple else tuple(der_chain)
        generation = self._generation()  # read before verifying: a refresh meanwhile voids the entry
        with self._lock:
            hit = self._ok.get(key)
        now = ensure_utc(self._clock(), what="clock()")
        if hit is not None:
            nb, na, gen, result = hit
            if gen == generation and nb <= now <= na:  # validity and CRL state re-checked on every hit
                return result
        chain = load_chain()
        result = self._hook(chain)  # raises on failure: nothing is cached
        certs = [*chain, *([result.trust_anchor] if getattr(result, "trust_anchor", None) is not None else [])]
        window: tuple[datetime, datetime] | None = (max(c.not_valid_before_utc for c in certs),
                                                    min(c.not_valid_after_utc for c in certs))
        if self._revocation is RevocationPolicy.REQUIRE and self._crls is not None:
            window = self._crl_window(result, now, *window)
        with self._lock:
            if window is None:
                self._ok.pop(key, None)
            else:
                self._ok[key] = (*window, generation, result)
                while len(self._ok) > self._size:
                    self._ok.popitem(last=False)
        return result

    def _crl_window(self, result: Any, now: datetime, nb: datetime,
                    na: datetime) -> tuple[datetime, datetime] | None:
        """Narrow [nb, na] to when every CRL that gave a GOOD status on the path is still current
        (None: do not cache)."""
        assert self._crls is not None
        for cert, status in zip(getattr(result, "path", ()), getattr(result, "revocation", ()), strict=False):
            if status is not RevocationStatus.GOOD:
                continue
            current = [c for c in self._crls.for_issuer(cert.issuer)
                       if c.next_update_utc is not None and c.last_update_utc <= now < c.next_update_utc]
            if not current:  # the store changed under the verification: leave it to the next one
                return None
            nb = max(nb, *(c.last_update_utc for c in current))
            na = min(na, *(c.next_update_utc - _TICK for c in current if c.next_update_utc is not None))
        return (nb, na) if nb <= na else None


_TICK = timedelta(microseconds=1)  # nextUpdate is exclusive, the cache window inclusive


_BY_IDENTITY_MAX = 256


def _context_by_identity(by_id: dict[int, tuple[Any, TLSContext]], key: Any) -> TLSContext | None:
    """The context last found for this very ``key`` object (a frozen, so unchanged, peer
    configuration) without hashing it: hashing its trust anchors walks their ASN.1."""
    hit = by_id.get(id(key))
    return hit[1] if hit is not None and hit[0] is key else None


def _remember_identity(by_id: dict[int, tuple[Any, TLSContext]], key: Any, ctx: TLSContext) -> None:
    if len(by_id) >= _BY_IDENTITY_MAX:  # callers building a new equal object per call: stay bounded
        by_id.clear()
    by_id[id(key)] = (key, ctx)  # the entry holds ``key``, so its id cannot be reused meanwhile


def _tls_context(role: Role, credentials: CertCredentials, peer: TerminatorInfo | InitiatorInfo,
                 clock: Clock) -> TLSContext:
    kw = pki_tls_kwargs(peer.cert_info, peer.trust_anchors, clock, crls=peer.crls, revocation=peer.revocation)
    kw["verify_peer"] = _CachedVerify(kw["verify_peer"], clock, crls=peer.crls,
                                      revocation=RevocationPolicy(peer.revocation))
    return TLSContext(TLSConfig(role=role, credentials=credentials, cipher_suites=_SUITES, **kw))


# ------------------------------------------------------------------ Initiating End-Point


class Initiator:
    """One ESCertKE Procedure at the Initiating End-Point (8.7.2.2 C.1.a, e, i)."""

    def __init__(self, context: TLSContext, target: TerminatorInfo, *, clock: Clock,
                 keys: ESCertKEKeys | None = None) -> None:
        self.target = target
        self._clock = clock
        self._keys = keys
        self._engine = TLSEngine(context, server_name=target.server_name)
        self.state = InitiatorState.IDLE
        self.result: ESCertKEResult | None = None
        self.error: ESCertKEError | None = None
        self._status_generation: int | None = None  # target.crls.generation before verifying Message 2

    def __repr__(self) -> str:
        return f"Initiator(peer={self.target.identity!r}, state={self.state.value})"

    def _expect(self, state: InitiatorState, what: str) -> None:
        if self.state is not state:
            raise ESCertKEError(Reason.OUT_OF_ORDER, f"{what} in state {self.state.value}")

    def _abort(self, err: ESCertKEError) -> ESCertKEError:
        self.state = InitiatorState.FAILED
        self.error = err
        return err

    def message_1(self) -> bytes:
        """C.1.a: generate ESCertKE Message 1 (ClientHello)."""
        self._expect(InitiatorState.IDLE, "Message 1 requested")
        self._engine.do_handshake()
        out = self._engine.data_to_send()
        if first_kind(out) != 1:
            raise self._abort(ESCertKEError(Reason.MALFORMED, "TLS engine produced no ClientHello"))
        self.state = InitiatorState.AWAIT_MESSAGE_2
        return out

    def receive_message_2(self, message: bytes) -> bytes:
        """C.1.e: process Message 2, return Message 3.  Verifies the Terminating
        End-Point's certificate (8.1.2.5)."""
        self._expect(InitiatorState.AWAIT_MESSAGE_2, "Message 2 received")
        kind = classify(message)
        if kind != 2:
            raise self._abort(ESCertKEError(
                Reason.MALFORMED if kind is None else Reason.OUT_OF_ORDER,
                "expected ESCertKE Message 2 (ServerHello ... ServerHelloDone)"
                + ("" if kind is None else f", got Message {kind}")))
        self._status_generation = _status_generation(self.target)
        try:
            self._engine.receive_data(message)
        except TLSHandshakeError as exc:
            raise self._abort(_handshake_error(exc, "Terminating End-Point refused")) from exc
        except TLSError as exc:
            raise self._abort(ESCertKEError(Reason.MALFORMED, f"Message 2: {exc.args[0]}")) from exc
        out = self._engine.data_to_send()
        if self._engine.established or first_kind(out) != 3:
            raise self._abort(ESCertKEError(Reason.MALFORMED, "Message 2 is not a complete flight"))
        self.state = InitiatorState.AWAIT_MESSAGE_4
        return out

    def receive_message_4(self, message: bytes) -> ESCertKEResult:
        """C.1.i and C.2: process Message 4, export and cache the pairwiseE2EKey."""
        self._expect(InitiatorState.AWAIT_MESSAGE_4, "Message 4 received")
        kind = classify(message)
        if kind != 4:
            raise self._abort(ESCertKEError(
                Reason.MALFORMED if kind is None else Reason.OUT_OF_ORDER,
                "expected ESCertKE Message 4 (ChangeCipherSpec, Finished)"
                + ("" if kind is None else f", got Message {kind}")))
        try:
            self._engine.receive_data(message)
        except TLSHandshakeError as exc:
            raise self._abort(_handshake_error(exc, "Message 4 did not verify")) from exc
        except TLSError as exc:
            raise self._abort(ESCertKEError(Reason.MALFORMED, f"Message 4: {exc.args[0]}")) from exc
        if not self._engine.established or self._engine.data_to_send() or self._engine.receive_application_data():
            raise self._abort(ESCertKEError(Reason.MALFORMED, "Message 4 is not exactly the final flight"))
        now = ensure_utc(self._clock(), what="clock()")
        peer = self._engine.peer_verification
        res = ESCertKEResult.from_exported(
            _export(self._engine), peer_id=self.target.identity, role="initiator", established_at=now,
            expires_at=self._keys.expiry_from(now) if self._keys is not None else None,
            peer=peer if isinstance(peer, VerifiedPeer) else None)
        if self._keys is not None:
            self._keys.add(res, crls=self.target.crls, revocation=self.target.revocation,
                           checked_generation=self._status_generation)
        self.result = res
        self.state = InitiatorState.DONE
        return res


class InitiatingEndPoint:
    """An end-point's Initiating role: own credentials, clock, key cache, TLS contexts."""

    def __init__(self, credentials: CertCredentials, *, clock: Clock, keys: ESCertKEKeys | None = None) -> None:
        self.credentials = credentials
        self.clock = clock
        self.keys = keys if keys is not None else ESCertKEKeys(clock=clock)
        self._contexts: dict[TerminatorInfo, TLSContext] = {}
        self._contexts_by_id: dict[int, tuple[Any, TLSContext]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InitiatingEndPoint({self.credentials!r}, {self.keys!r})"

    def initiate(self, target: TerminatorInfo) -> Initiator:
        """Step B command: a new procedure with ``target`` (call ``message_1()`` next)."""
        with self._lock:
            ctx = _context_by_identity(self._contexts_by_id, target)
            if ctx is None:
                ctx = self._contexts.get(target)
                if ctx is None:
                    ctx = _tls_context(Role.CLIENT, self.credentials, target, self.clock)
                    self._contexts[target] = ctx
                _remember_identity(self._contexts_by_id, target, ctx)
        return Initiator(ctx, target, clock=self.clock, keys=self.keys)


# ------------------------------------------------------------------ Terminating End-Point


@dataclass(eq=False)
class _Procedure:
    ident: str
    initiator: InitiatorInfo
    engine: TLSEngine
    expires_at: datetime
    state: TerminatorState = TerminatorState.AWAIT_MESSAGE_3


class TerminatingEndPoint:
    """The Terminating End-Point (8.7.2.2 C.1.c, C.1.g, C.2) for configured Initiators.

    :meth:`handle` takes the Notify originator and the ``escertkeMessage`` octets and
    returns the octets of the answering message (2 or 4) or raises :class:`ESCertKEError`.
    """

    def __init__(self, credentials: CertCredentials, initiators: Iterable[InitiatorInfo] = (), *, clock: Clock,
                 keys: ESCertKEKeys | None = None, procedure_timeout: timedelta = DEFAULT_PROCEDURE_TIMEOUT,
                 replay_window: timedelta = DEFAULT_REPLAY_WINDOW, max_procedures: int = 10000,
                 max_message1_per_window: int = DEFAULT_MAX_MESSAGE1_PER_WINDOW) -> None:
        self.credentials = credentials
        self.clock = clock
        self.keys = keys if keys is not None else ESCertKEKeys(clock=clock)
        self.procedure_timeout = procedure_timeout
        self.replay_window = replay_window
        self.max_procedures = max_procedures
        #: the replay table holds every accepted ClientHello.random for ``replay_window``; this
        #: caps each configured Initiator's share of it (memory stays bounded by the number of
        #: configured Initiators, whatever the clock does)
        self.max_message1_per_window = max_message1_per_window
        self._initiators: dict[str, InitiatorInfo] = {}
        self._contexts: dict[InitiatorInfo, TLSContext] = {}
        self._contexts_by_id: dict[int, tuple[Any, TLSContext]] = {}
        self._procedures: OrderedDict[str, _Procedure] = OrderedDict()
        self._seen: OrderedDict[bytes, tuple[datetime, str]] = OrderedDict()  # random -> (until, Initiator)
        self._seen_per_initiator: dict[str, int] = {}
        self._lock = threading.Lock()
        for i in initiators:
            self.configure(i)

    def __repr__(self) -> str:
        return (f"TerminatingEndPoint(initiators={sorted({i.identity for i in self._initiators.values()})}, "
                f"unfinished={len(self._procedures)})")

    def configure(self, info: InitiatorInfo) -> None:
        """Authorise an Initiating End-Point (may be called at any time, 8.7.2.2 B)."""
        with self._lock:
            for name in (info.identity, *info.originators):
                self._initiators[name] = info

    def unconfigure(self, identity: str) -> None:
        with self._lock:
            for name in [n for n, i in self._initiators.items() if i.identity == identity]:
                del self._initiators[name]
            self._procedures.pop(identity, None)

    def unfinished(self) -> dict[str, TerminatorState]:
        """Identities with an unfinished procedure (for tests and monitoring)."""
        with self._lock:
            self._purge(self._now())
            return {k: p.state for k, p in self._procedures.items()}

    def _now(self) -> datetime:
        return ensure_utc(self.clock(), what="clock()")

    def _purge(self, now: datetime) -> None:
        for k in [k for k, p in self._procedures.items() if p.expires_at <= now]:
            del self._procedures[k]
        while self._seen:
            first = next(iter(self._seen))
            until, who = self._seen[first]
            if until > now:
                break
            del self._seen[first]
            left = self._seen_per_initiator[who] - 1
            if left:
                self._seen_per_initiator[who] = left
            else:
                del self._seen_per_initiator[who]

    def _context(self, info: InitiatorInfo) -> TLSContext:
        ctx = _context_by_identity(self._contexts_by_id, info)
        if ctx is None:
            ctx = self._contexts.get(info)
            if ctx is None:
                ctx = _tls_context(Role.SERVER, self.credentials, info, self.clock)
                self._contexts[info] = ctx
            _remember_identity(self._contexts_by_id, info, ctx)
        return ctx

    def handle(self, originator: str | None, message: bytes) -> bytes:
        """Process ESCertKE Message 1 or 3 from ``originator``; return Message 2 or 4."""
        kind = classify(message)
        if kind is None:
            raise ESCertKEError(Reason.MALFORMED, "escertkeMessage is not a TLS 1.2 handshake flight")
        with self._lock:
            info = self._initiators.get(originator) if originator else None
            if info is None:
                raise ESCertKEError(Reason.UNKNOWN_INITIATOR,
                                    f"no ESCertKE Initiating End-Point is configured for {originator!r}")
            now = self._now()
            if kind == 3:
                pending = self._procedures.get(info.identity)
                if pending is not None and pending.expires_at <= now:
                    del self._procedures[info.identity]
                    raise ESCertKEError(Reason.EXPIRED, f"the procedure with {info.identity!r} has expired")
            self._purge(now)
            if kind == 1:
                return self._message_1(info, message, now)
            if kind == 3:
                proc = self._procedures.pop(info.identity, None)
            else:
                raise ESCertKEError(Reason.OUT_OF_ORDER, f"Message {kind} is sent by the Terminating End-Point")
        if proc is None:
            raise ESCertKEError(Reason.NO_PROCEDURE, f"Message 3 from {info.identity!r} without an unfinished procedure")
        return self._message_3(proc, message)

    def _message_1(self, info: InitiatorInfo, message: bytes, now: datetime) -> bytes:
        rnd = client_hello_random(message)
        if rnd is None:
            raise ESCertKEError(Reason.MALFORMED, "Message 1 is not a ClientHello")
        if rnd in self._seen:
            raise ESCertKEError(Reason.REPLAYED, "Message 1 (this ClientHello.random) was already received")
        if self._seen_per_initiator.get(info.identity, 0) >= self.max_message1_per_window:
            raise ESCertKEError(Reason.RATE_LIMITED,
                                f"more than {self.max_message1_per_window} Message 1 from {info.identity!r} "
                                f"within {self.replay_window}")
        engine = TLSEngine(self._context(info))
        try:
            engine.receive_data(message)
        except TLSHandshakeError as exc:
            raise _handshake_error(exc, "Message 1 refused") from exc
        except TLSError as exc:
            raise ESCertKEError(Reason.MALFORMED, f"Message 1: {exc.args[0]}") from exc
        out = engine.data_to_send()
        if first_kind(out) != 2 or engine.established:
            raise ESCertKEError(Reason.MALFORMED, "Message 1 is not a complete ClientHello flight")
        self._seen[rnd] = (now + self.replay_window, info.identity)
        self._seen_per_initiator[info.identity] = self._seen_per_initiator.get(info.identity, 0) + 1
        self._procedures.pop(info.identity, None)  # a new Message 1 replaces the unfinished procedure
        while len(self._procedures) >= self.max_procedures:
            self._procedures.popitem(last=False)
        self._procedures[info.identity] = _Procedure(secrets.token_hex(8), info, engine, now + self.procedure_timeout)
        return out

    def _message_3(self, proc: _Procedure, message: bytes) -> bytes:
        engine = proc.engine
        generation = _status_generation(proc.initiator)
        try:
            engine.receive_data(message)
        except TLSHandshakeError as exc:
            proc.state = TerminatorState.FAILED
            raise _handshake_error(exc, "Message 3 refused") from exc
        except TLSError as exc:
            proc.state = TerminatorState.FAILED
            raise ESCertKEError(Reason.MALFORMED, f"Message 3: {exc.args[0]}") from exc
        out = engine.data_to_send()
        if not engine.established or first_kind(out) != 4 or engine.receive_application_data():
            proc.state = TerminatorState.FAILED
            raise ESCertKEError(Reason.MALFORMED, "Message 3 is not exactly the Initiating End-Point's flight")
        now = self._now()
        peer = engine.peer_verification
        res = ESCertKEResult.from_exported(
            _export(engine), peer_id=proc.initiator.identity, role="terminator", established_at=now,
            expires_at=self.keys.expiry_from(now), peer=peer if isinstance(peer, VerifiedPeer) else None)
        self.keys.add(res, crls=proc.initiator.crls, revocation=proc.initiator.revocation,
                      checked_generation=generation)
        proc.state = TerminatorState.DONE
        return out
