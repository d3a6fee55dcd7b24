"""Sans-I/O TLS 1.2 / DTLS 1.2 engine on pyOpenSSL memory BIOs.

Implements the (D)TLS layer of TS-0003 clause 10.2 (10.2.1 versions and SNI,
10.2.2 PSK suites, 10.2.3 ECDHE_ECDSA suites with mutual authentication) and
the RFC 5705 key export of clause 10.3.1.  The engine never touches a socket:
the caller feeds received bytes (``receive_data``) and sends what the engine
produces (``data_to_send`` for TLS, ``datagrams_to_send`` for DTLS).

Certificate mode: OpenSSL validates the peer's path against the configured
trust anchors; at depth 0 the verify callback hands the chain OpenSSL built
(leaf first, ending with the trust anchor) to the user's ``verify_peer``
hook (e.g. ``m2msec.pki.verify_peer_certificate`` with the expected
identifier, TS-0003 8.1.2.5); when the hook raises, the handshake aborts and
:class:`TLSHandshakeError` carries the hook's exception as ``__cause__``.
A server in certificate mode always requires a client certificate.

With ``verify_peer_authoritative=True`` the hook alone decides: OpenSSL's own
path-validation verdicts are ignored and, on the first verify-callback call,
the hook receives the chain OpenSSL assembled from the peer's certificates and
the trust anchors (leaf first, possibly incomplete when no anchor was found)
and must validate it itself - this is how :mod:`m2msec.tls.pkiverify` runs the
TS-0003 8.1.2.5 verification with an injected clock and precise reasons.  The
hook's return value is kept as ``TLSEngine.peer_verification``; an exception
may carry ``tls_alert`` (``"certificate_expired"``, ``"unknown_ca"``,
``"certificate_revoked"``, ``"certificate_unknown"``, ``"bad_certificate"``) to
choose the fatal alert sent to the peer.

A hook may also offer ``verify_der_chain(der_chain, load_chain)`` (same result or
exception as ``hook(chain)``): the engine then passes the chain as a tuple of DER
encodings (leaf first, as above) and a zero-argument ``load_chain`` returning the
``cryptography`` certificates (converted once, on first call), so that a hook with a
cache of earlier verdicts (e.g. ESCertKE's) can answer a hit without any conversion.
``verified_chain()`` converts lazily when the hook never needed the objects.

OCSP stapling (RFC 6066 section 8; TS-0003 8.1.2.2): a server with ``ocsp_staple``
answers a client's status_request with the DER OCSP response that callable returns for
its certificate; a client with ``check_ocsp_staple`` sends status_request and, once the
server's chain has verified (TLS 1.2 sends CertificateStatus after Certificate), hands
the stapled response and the verified chain to that callable (e.g.
:class:`m2msec.tls.pkiverify.OCSPStapleCheck`), whose exception aborts the handshake.

Session resumption is disabled (no tickets, no session cache): every
connection runs a full handshake, so the PSK identity / peer certificate of an
established engine always comes from this handshake's callbacks.

DTLS servers can run the stateless cookie exchange of RFC 6347 4.2.1 through
OpenSSL's ``DTLSv1_listen`` on the memory BIOs (:meth:`TLSEngine.dtls_listen`):
every DTLS server context has cookie generate/verify callbacks that ask the
:class:`CookieOracle` the caller put on the engine for this one datagram
(:mod:`m2msec.tls.dtls_cookie` computes the cookie); without an oracle no
cookie is issued or accepted.

Extended master secret (RFC 7627; ``TLSConfig.require_ems``, on by default): every oneM2M
key taken from a session (TS-0003 10.3.1) is an RFC 5705 export of the master secret, so
a session whose master secret is not bound to its handshake (triple handshake, RFC 7627
section 1) is refused.  The bindings lack ``SSL_CTX_set_client_hello_cb`` and
``SSL_get_extms_support`` answers only after the handshake, so a message callback reads
the peer's hello (ClientHello on a server, ServerHello on a client) for the
extended_master_secret extension (type 23).  Without it, the flight OpenSSL wrote in answer
(ServerHello... on a server, the key exchange flight on a client) is discarded before it
can leave and a plaintext fatal ``handshake_failure`` alert (the record header copied from
the first discarded record, epoch 0) takes its place: the handshake fails with
``NO_EXTENDED_MASTER_SECRET`` before any key exchange is sent, so no application data and
no export exist.  A session that still completes without EMS fails the same way, and the
exporter refuses any session without EMS.

Asynchronous peer status (TS-0003 8.1.2.2; ``TLSConfig.peer_status_check``, server, TLS and DTLS):
the bindings lack OpenSSL 3's ``SSL_set_retry_verify`` / ``SSL_ERROR_WANT_RETRY_VERIFY``, so a
verify hook cannot pause the handshake for a network query (an OCSP request about the client
certificate).  Instead, when ``SSL_do_handshake`` completes on the server of a certificate
handshake and ``peer_status_check(peer_verification)`` returns an awaitable, the final flight
OpenSSL wrote (ChangeCipherSpec, Finished) is taken out of the output BIO and held: the engine
stays HANDSHAKING, ``handshake_complete`` stays False, ``pending_status_check`` is the awaitable
and received bytes are buffered, not read.  The client cannot send application data before it
has the server's Finished (TLS 1.2 without False Start, and a full handshake every time), so no
request exists yet.  ``release_held_flight()`` puts the flight back and the engine is
ESTABLISHED; ``refuse_held_flight(exc)`` replaces the flight by a plaintext fatal alert (the
exception's ``tls_alert``, e.g. ``certificate_revoked``; our ChangeCipherSpec was never sent, so
the peer still reads plaintext) and the handshake fails PEER_REJECTED with ``exc`` as cause.  DTLS
the same way: the held flight's first record (our ChangeCipherSpec, epoch 0) gives the alert its
record header (epoch 0 and a sequence number the client has not seen), as for T12; the datagrams
the client retransmits meanwhile are the adapter's to hold (:mod:`m2msec.tls.dtls`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from m2msec.errors import M2MSecError
from m2msec.keys import split_exported
from m2msec.onem2m.rsc import ResponseStatusCode
from m2msec.tls import profiles
from m2msec.tls.profiles import AuthMode, Transport
from m2msec.tls.psk import (
    CallbackRecord,
    PSKCallbacks,
    PSKLookup,
    install_client_psk,
    install_server_psk,
    record_for_ssl,
    servername_of,
)

__all__ = [
    "Role",
    "TLSState",
    "TLSFailureReason",
    "TLSError",
    "TLSHandshakeError",
    "PSKCredentials",
    "CertCredentials",
    "TLSConfig",
    "TLSContext",
    "TLSEngine",
    "VerifyPeer",
    "CookieOracle",
    "hello_has_ems",
]

VerifyPeer = Callable[[list[x509.Certificate]], Any]
SelectCredentials = Callable[["str | None"], "CertCredentials | None"]

_SSL_AD_UNRECOGNIZED_NAME = 112
_SNI_CB_TYPE = "int (*)(SSL *, int *, void *)"
_VERIFY_CB_TYPE = "int (*)(int, X509_STORE_CTX *)"
_COOKIE_GEN_CB_TYPE = "int (*)(SSL *, unsigned char *, unsigned int *)"
_COOKIE_VERIFY_CB_TYPE = "int (*)(SSL *, unsigned char *, unsigned int)"
_COOKIE_ORACLE = "dtls_cookie_oracle"  # CallbackRecord.extra key
_MSG_CB_TYPE = "void (*)(int, int, int, const void *, size_t, SSL *, void *)"
#: input buffered while the final flight is held for a status check, at most (then the
#: handshake fails): a TLS 1.2 client sends nothing before our Finished
_HELD_INPUT_LIMIT = 16 * 1024
_PEER_EMS = "peer_ems"  # CallbackRecord.extra key: did the peer's hello carry extended_master_secret
_EXT_EMS = 23  # RFC 7627 extension type
_HANDSHAKE_FAILURE_ALERT = b"\x00\x02\x02\x28"  # record length 2, level fatal(2), handshake_failure(40)
_ALERT_CODES = {"bad_certificate": 42, "certificate_revoked": 44, "certificate_expired": 45,
                "certificate_unknown": 46, "unknown_ca": 48, "internal_error": 80}  # RFC 5246 7.2
_DTLS1_COOKIE_LENGTH: int = getattr(_lib, "DTLS1_COOKIE_LENGTH", 255)
_RECORD_PLAINTEXT_MAX = 16384  # one SSL_read returns at most one record's plaintext (RFC 5246 6.2.1)
_SSL_ERROR_WANT_READ: int = _lib.SSL_ERROR_WANT_READ
_SSL_STORE_CTX_IDX: int = _lib.SSL_get_ex_data_X509_STORE_CTX_idx()  # a process-wide constant index
# buffers that OpenSSL fills before Python reads them need no zeroing
_new_uncleared = _ffi.new_allocator(should_clear_after_alloc=False)


class CookieOracle(Protocol):
    """Mints and checks the RFC 6347 4.2.1 cookie for one received ClientHello."""

    def generate(self) -> bytes: ...

    def verify(self, cookie: bytes) -> bool: ...


class Role(str, enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class TLSState(str, enum.Enum):
    HANDSHAKING = "HANDSHAKING"
    ESTABLISHED = "ESTABLISHED"
    CLOSED = "CLOSED"
    FAILED = "FAILED"


_HANDSHAKING = TLSState.HANDSHAKING
_ESTABLISHED = TLSState.ESTABLISHED
_CLOSED = TLSState.CLOSED
_FAILED = TLSState.FAILED


class TLSFailureReason(str, enum.Enum):
    """Why a handshake failed (our classification; OpenSSL only gives alerts)."""

    UNKNOWN_PSK_IDENTITY = "UNKNOWN_PSK_IDENTITY"
    PSK_MISMATCH = "PSK_MISMATCH"  # Finished did not verify in a PSK handshake
    PROTOCOL_VERSION = "PROTOCOL_VERSION"
    NO_SHARED_CIPHER = "NO_SHARED_CIPHER"
    CERTIFICATE_REQUIRED = "CERTIFICATE_REQUIRED"
    CERTIFICATE_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"  # local path validation
    PEER_REJECTED = "PEER_REJECTED"  # the verify_peer hook raised
    BAD_CERTIFICATE_STATUS = "BAD_CERTIFICATE_STATUS"  # check_ocsp_staple refused the (missing) stapled response
    BAD_CERTIFICATE = "BAD_CERTIFICATE"  # the peer rejected our certificate
    UNRECOGNIZED_NAME = "UNRECOGNIZED_NAME"  # no credentials for the SNI
    BAD_RECORD_MAC = "BAD_RECORD_MAC"
    PEER_ALERT = "PEER_ALERT"  # any other fatal alert from the peer
    CONNECTION_CLOSED = "CONNECTION_CLOSED"  # EOF before the handshake finished
    TIMEOUT = "TIMEOUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    HANDSHAKE_FAILURE = "HANDSHAKE_FAILURE"
    NO_EXTENDED_MASTER_SECRET = "NO_EXTENDED_MASTER_SECRET"  # RFC 7627 required, the peer did not negotiate it


class TLSError(M2MSecError):
    """A (D)TLS engine failure outside the handshake (usage error, record error)."""

    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR


class TLSHandshakeError(TLSError):
    """The (D)TLS handshake failed; ``reason`` says why, ``detail`` adds context."""

    default_rsc = ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED

    def __init__(self, reason: TLSFailureReason, detail: str = "") -> None:
        super().__init__(f"TLS handshake failed: {reason.value}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PSKCredentials:
    """A client's PSK identity and key (RFC 4279); the key never appears in repr."""

    identity: bytes
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.identity or not self.key:
            raise ValueError("PSK identity and key must be non-empty")

    @classmethod
    def from_hex(cls, identity: str | bytes, key_hex: str) -> PSKCredentials:
        ident = identity.encode() if isinstance(identity, str) else identity
        return cls(ident, bytes.fromhex(key_hex))

    @classmethod
    def from_text(cls, identity: str | bytes, key_text: str) -> PSKCredentials:
        ident = identity.encode() if isinstance(identity, str) else identity
        return cls(ident, key_text.encode("utf-8"))


@dataclass(frozen=True, eq=False)
class CertCredentials:
    """Own private key, certificate and intermediate chain (leaf's issuer first)."""

    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def __repr__(self) -> str:
        return f"CertCredentials(subject={self.certificate.subject.rfc4514_string()!r}, chain={len(self.chain)})"


@dataclass(frozen=True, eq=False)
class TLSConfig:
    """Configuration of one side.

    PSK mode: a client sets ``psk``; a server sets ``psk_lookup(identity, sni)``.
    Certificate mode: ``credentials`` (and/or, on a server, ``select_credentials(sni)``),
    ``trust_anchors`` and optionally ``verify_peer``.  A server may enable both modes
    (TS-0003 10.2.1 requires IN servers to support all profile suites).
    """

    role: Role
    transport: Transport = Transport.TLS
    psk: PSKCredentials | None = None
    psk_lookup: PSKLookup | None = None
    psk_identity_hint: bytes | None = None
    credentials: CertCredentials | None = None
    select_credentials: SelectCredentials | None = None
    trust_anchors: Sequence[x509.Certificate] = ()
    verify_peer: VerifyPeer | None = None
    verify_peer_authoritative: bool = False  # the hook replaces OpenSSL's path validation
    server_name: str | None = None  # client: SNI host name to send
    mtu: int = profiles.DEFAULT_DTLS_MTU  # DTLS: max UDP payload
    cipher_suites: Sequence[profiles.CipherSuite] | None = None  # default: the profile
    # OCSP stapling (RFC 6066 8, TS-0003 8.1.2.2).  Server: ``ocsp_staple(own certificate)`` returns the
    # DER OCSP response to staple when a client asks (None/b"": none; an exception: none).  Client:
    # ``check_ocsp_staple(der, chain)`` makes the client send status_request and is called after the
    # peer's chain verified, with the stapled DER (b"" when none) and the verified chain (leaf first);
    # raising aborts the handshake (BAD_CERTIFICATE_STATUS, alert bad_certificate_status_response).
    ocsp_staple: Callable[[x509.Certificate], bytes | None] | None = None
    check_ocsp_staple: Callable[[bytes, list[x509.Certificate]], Any] | None = None
    # RFC 7627: refuse a session whose master secret is not the extended one (NO_EXTENDED_MASTER_SECRET)
    require_ems: bool = True
    # Server, TLS and DTLS, certificate handshakes: ``peer_status_check(peer_verification)`` is called once
    # OpenSSL completed the handshake; None means nothing to wait for, an awaitable holds the final
    # flight back (``TLSEngine.pending_status_check``) until the caller resolves it with
    # ``release_held_flight`` / ``refuse_held_flight`` (see the module docstring).
    peer_status_check: Callable[[Any], Any] | None = None
    # Server, PSK: ``psk_prefetch(psk_identity)`` is called by the asyncio adapters
    # (:mod:`m2msec.tls.aio`, :mod:`m2msec.tls.dtls`) when the client's ClientKeyExchange arrived,
    # before the engine reads it (:mod:`m2msec.tls.pskpeek`); an awaitable returned holds the
    # client's bytes (datagrams) back until it is done, so that ``psk_lookup`` can answer from a
    # cache (e.g. Kc retrieved from a MAF, TS-0003 8.2.2.3).  None: nothing to wait for.
    psk_prefetch: Callable[[bytes], Any] | None = None

    @property
    def modes(self) -> tuple[AuthMode, ...]:
        out: list[AuthMode] = []
        if self.psk is not None or self.psk_lookup is not None:
            out.append(AuthMode.PSK)
        if self.credentials is not None or self.select_credentials is not None or self.trust_anchors:
            out.append(AuthMode.CERTIFICATE)
        return tuple(out)


def _der_chain_of(store_ctx: Any) -> tuple[bytes, ...]:
    """DER of the chain OpenSSL built so far in ``store_ctx`` (leaf first).

    One memory BIO for the whole chain (``lib`` has ``i2d_X509_bio`` but no ``i2d_X509``):
    the certificates are encoded one after the other and the blob is cut at the recorded ends.
    """
    stack = _lib.X509_STORE_CTX_get1_chain(store_ctx)
    if stack == _ffi.NULL:
        return ()
    n = _lib.sk_X509_num(stack)
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    try:
        if bio == _ffi.NULL:
            raise TLSError("OpenSSL could not allocate a memory BIO")
        ends = [0]
        for i in range(n):
            if _lib.i2d_X509_bio(bio, _lib.sk_X509_value(stack, i)) != 1:
                raise TLSError("OpenSSL could not encode a peer certificate")
            ends.append(_lib.BIO_get_mem_data(bio, _ffi.NULL))
        blob = b""
        if n > 0:
            pp = _ffi.new("char **")
            total = _lib.BIO_get_mem_data(bio, pp)  # sets pp[0]: read it only afterwards
            blob = _ffi.buffer(pp[0], total)[:]
    finally:
        if bio != _ffi.NULL:
            _lib.BIO_free(bio)
        for i in range(n):  # get1_chain took a reference on every certificate
            _lib.X509_free(_lib.sk_X509_value(stack, i))
        _lib.sk_X509_free(stack)
    return tuple([blob[ends[i]:ends[i + 1]] for i in range(n)])


def _load_chain(der_chain: Sequence[bytes]) -> list[x509.Certificate]:
    # what pyOpenSSL's X509.to_cryptography() does: DER, then cryptography's parser
    return [x509.load_der_x509_certificate(d) for d in der_chain]


class _ChainLoader:
    """Converts a DER chain to ``cryptography`` certificates once, on first call."""

    __slots__ = ("der_chain", "chain")

    def __init__(self, der_chain: tuple[bytes, ...]) -> None:
        self.der_chain = der_chain
        self.chain: list[x509.Certificate] | None = None

    def __call__(self) -> list[x509.Certificate]:
        if self.chain is None:
            self.chain = _load_chain(self.der_chain)
        return list(self.chain)


def _run_hook(hook: Any, loader: _ChainLoader) -> Any:
    """Call ``hook``: through ``verify_der_chain`` when it has one (no conversion needed
    on a cache hit), else with the chain as ``cryptography`` certificates."""
    by_der = getattr(hook, "verify_der_chain", None)
    if by_der is not None:
        return by_der(loader.der_chain, loader)
    return hook(loader())


def _remember_chain(rec: CallbackRecord, loader: _ChainLoader) -> None:
    """Keep the verified chain for ``TLSEngine.verified_chain`` (converted lazily)."""
    if loader.chain is not None:
        rec.extra["verified_chain"] = loader.chain
    else:
        rec.extra["verified_chain_der"] = loader.der_chain


class TLSContext:
    """The compiled form of a :class:`TLSConfig`: pyOpenSSL contexts + callbacks.

    Build it once per server and create one :class:`TLSEngine` per connection.
    """

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        modes = config.modes
        if not modes:
            raise ValueError("configure PSK and/or certificate credentials")
        if config.role is Role.CLIENT and AuthMode.CERTIFICATE in modes:
            if config.credentials is None:
                raise ValueError("certificate mode is mutual: the client needs credentials")
        if AuthMode.CERTIFICATE in modes:
            if not config.trust_anchors:
                raise ValueError("certificate mode needs trust anchors")
            if config.role is Role.SERVER and config.credentials is None and config.select_credentials is None:
                raise ValueError("certificate-mode server needs credentials or select_credentials")
        if config.role is Role.SERVER and config.psk is not None:
            raise ValueError("a server looks PSKs up with psk_lookup, not psk")
        if config.role is Role.CLIENT and config.psk_lookup is not None:
            raise ValueError("a client offers one PSK (psk), not psk_lookup")
        self.suites = list(config.cipher_suites) if config.cipher_suites else profiles.suites_for(config.transport, modes)
        self._keepalive: list[Any] = []
        self._authoritative = bool(config.verify_peer_authoritative and config.verify_peer is not None)
        self._by_credentials: dict[int, tuple[CertCredentials, SSL.Context]] = {}
        self.ssl_context = self._build(config.credentials)
        if config.credentials is not None:
            self._by_credentials[id(config.credentials)] = (config.credentials, self.ssl_context)

    def __repr__(self) -> str:
        return f"TLSContext(role={self.config.role.value}, transport={self.config.transport.value}, suites={[s.iana_name for s in self.suites]})"

    # -- construction -------------------------------------------------------
    def _build(self, creds: CertCredentials | None) -> SSL.Context:
        cfg = self.config
        dtls = cfg.transport is Transport.DTLS
        if dtls:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            version = profiles.DTLS1_2_VERSION
        else:
            ctx = SSL.Context(SSL.TLS_METHOD)
            version = profiles.TLS1_2_VERSION
        ctx.set_min_proto_version(version)
        ctx.set_max_proto_version(version)
        ctx.set_cipher_list(profiles.cipher_string(self.suites).encode())
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | _lib.SSL_OP_NO_RENEGOTIATION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if dtls:
            ctx.set_options(SSL.OP_NO_QUERY_MTU)
        modes = cfg.modes
        if AuthMode.CERTIFICATE in modes:
            if _lib.SSL_CTX_set1_curves_list(ctx._context, profiles.ECDHE_GROUPS.encode()) != 1:
                raise TLSError("OpenSSL rejected the ECDHE group list")
            if _lib.SSL_CTX_set1_sigalgs_list(ctx._context, profiles.SIGNATURE_ALGORITHMS.encode()) != 1:
                raise TLSError("OpenSSL rejected the signature algorithm list")
            store = ctx.get_cert_store()
            assert store is not None
            for anchor in cfg.trust_anchors:
                store.add_cert(crypto.X509.from_cryptography(anchor))
            if creds is not None:
                ctx.use_certificate(creds.certificate)
                ctx.use_privatekey(creds.private_key)
                for c in creds.chain:
                    ctx.add_extra_chain_cert(c)
                ctx.check_privatekey()
            mode = _lib.SSL_VERIFY_PEER
            if cfg.role is Role.SERVER:
                mode |= _lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT
            verify_cb = _ffi.callback(_VERIFY_CB_TYPE, self._verify_callback)
            self._keepalive.append(verify_cb)
            _lib.SSL_CTX_set_verify(ctx._context, mode, verify_cb)
            if cfg.role is Role.SERVER and cfg.ocsp_staple is not None and creds is not None:
                ctx.set_ocsp_server_callback(_StapleSource(cfg.ocsp_staple, creds.certificate))
            if cfg.role is Role.CLIENT and cfg.check_ocsp_staple is not None:
                ctx.set_ocsp_client_callback(self._ocsp_client_callback)
        if AuthMode.PSK in modes:
            cbs: PSKCallbacks
            if cfg.role is Role.SERVER:
                assert cfg.psk_lookup is not None
                cbs = install_server_psk(ctx, cfg.psk_lookup, identity_hint=cfg.psk_identity_hint)
            else:
                assert cfg.psk is not None
                cbs = install_client_psk(ctx, cfg.psk.identity, cfg.psk.key)
            self._keepalive.append(cbs)
        if dtls and cfg.role is Role.SERVER:
            gen_cb = _ffi.callback(_COOKIE_GEN_CB_TYPE, _cookie_generate_callback)
            ver_cb = _ffi.callback(_COOKIE_VERIFY_CB_TYPE, _cookie_verify_callback)
            self._keepalive.extend((gen_cb, ver_cb))
            _lib.SSL_CTX_set_cookie_generate_cb(ctx._context, gen_cb)
            _lib.SSL_CTX_set_cookie_verify_cb(ctx._context, ver_cb)
        if cfg.require_ems:
            hello_cb = _ffi.callback(_MSG_CB_TYPE, _hello_watcher(dtls))
            self._keepalive.append(hello_cb)
            _lib.SSL_CTX_set_msg_callback(ctx._context, hello_cb)
        if cfg.role is Role.SERVER and cfg.select_credentials is not None:
            # only needed to switch credentials per SNI; engine.sni reads SSL_get_servername otherwise
            sni_cb = _ffi.callback(_SNI_CB_TYPE, self._servername_callback)
            self._keepalive.append(sni_cb)
            _lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, sni_cb)
        return ctx

    def _context_for(self, creds: CertCredentials) -> SSL.Context:
        hit = self._by_credentials.get(id(creds))
        if hit is not None and hit[0] is creds:
            return hit[1]
        ctx = self._build(creds)
        self._by_credentials[id(creds)] = (creds, ctx)
        return ctx

    # -- C callbacks (never raise) -------------------------------------------
    def _servername_callback(self, ssl: Any, alert: Any, arg: Any) -> int:
        rec = None
        try:
            rec = record_for_ssl(ssl)
            sni = servername_of(ssl)
            if rec is not None:
                rec.extra["sni"] = sni
            sel = self.config.select_credentials
            if sel is not None:
                creds = sel(sni)
                if creds is None:
                    creds = self.config.credentials
                if creds is None:
                    if AuthMode.PSK in self.config.modes:
                        return _lib.SSL_TLSEXT_ERR_OK  # PSK may still succeed
                    if rec is not None:
                        rec.fail("UNRECOGNIZED_NAME", f"no credentials for server name {sni!r}")
                    alert[0] = _SSL_AD_UNRECOGNIZED_NAME
                    return _lib.SSL_TLSEXT_ERR_ALERT_FATAL
                conn = SSL.Connection._reverse_mapping.get(ssl)
                if conn is not None and creds is not self.config.credentials:
                    conn.set_context(self._context_for(creds))
            return _lib.SSL_TLSEXT_ERR_OK
        except BaseException as exc:
            if rec is not None:
                rec.fail("INTERNAL_ERROR", f"credential selection raised {type(exc).__name__}", exc)
            alert[0] = 80  # internal_error
            return _lib.SSL_TLSEXT_ERR_ALERT_FATAL

    def _verify_callback(self, ok: int, store_ctx: Any) -> int:
        rec = None
        try:
            rec = record_for_ssl(_lib.X509_STORE_CTX_get_ex_data(store_ctx, _SSL_STORE_CTX_IDX))
            if self._authoritative:
                return self._authoritative_verify(store_ctx, rec)
            depth = _lib.X509_STORE_CTX_get_error_depth(store_ctx)
            if not ok:
                err = _lib.X509_STORE_CTX_get_error(store_ctx)
                text = _ffi.string(_lib.X509_verify_cert_error_string(err)).decode()
                if rec is not None:
                    rec.fail("CERTIFICATE_VERIFY_FAILED", f"{text} (depth {depth})")
                return 0
            if depth != 0 or rec is None or rec.extra.get("hook_done"):
                return 1
            loader = _ChainLoader(_der_chain_of(store_ctx))
            hook = self.config.verify_peer
            if hook is not None:
                try:
                    rec.extra["peer_verification"] = _run_hook(hook, loader)
                except BaseException as exc:
                    _remember_chain(rec, loader)
                    rec.fail("PEER_REJECTED", f"verify_peer rejected the peer: {exc}", exc)
                    _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_ERR_CERT_REJECTED)  # -> bad_certificate alert
                    return 0
            _remember_chain(rec, loader)
            rec.extra["hook_done"] = True
            return 1
        except BaseException as exc:
            if rec is not None:
                rec.fail("INTERNAL_ERROR", f"verify callback raised {type(exc).__name__}", exc)
            return 0


    def _ocsp_client_callback(self, conn: Any, ocsp_data: bytes, _data: Any) -> bool:
        """Client status callback (after the peer's chain verified): run ``check_ocsp_staple``."""
        rec = None
        try:
            data = conn.get_app_data()
            rec = data if isinstance(data, CallbackRecord) else None
            check = self.config.check_ocsp_staple
            assert check is not None
            result = check(bytes(ocsp_data), _validated_chain(conn, rec))
            if rec is not None:
                rec.extra["ocsp_staple"] = result
            return True
        except BaseException as exc:
            if rec is not None:
                rec.fail("BAD_CERTIFICATE_STATUS", f"stapled OCSP response refused: {exc}", exc)
            return False

    def _authoritative_verify(self, store_ctx: Any, rec: CallbackRecord | None) -> int:
        if rec is None:
            return 0
        if rec.extra.get("hook_done"):
            return 1
        loader = _ChainLoader(_der_chain_of(store_ctx))
        hook = self.config.verify_peer
        assert hook is not None
        try:
            result = _run_hook(hook, loader)
        except BaseException as exc:
            rec.fail("PEER_REJECTED", f"verify_peer rejected the peer: {exc}", exc)
            code = _ALERT_ERRORS.get(str(getattr(exc, "tls_alert", "")), _lib.X509_V_ERR_CERT_REJECTED)
            _lib.X509_STORE_CTX_set_error(store_ctx, code)
            return 0
        _remember_chain(rec, loader)
        rec.extra["peer_verification"] = result
        rec.extra["hook_done"] = True
        return 1


class _StapleSource:
    """Server status callback: the OCSP response to staple for ``cert`` (never raises)."""

    def __init__(self, source: Callable[[x509.Certificate], bytes | None], cert: x509.Certificate) -> None:
        self.source, self.cert = source, cert

    def __call__(self, conn: Any, _data: Any) -> bytes:
        try:
            der = self.source(self.cert)
        except Exception:  # noqa: BLE001 - no staple rather than no handshake
            return b""
        return bytes(der) if der else b""


def _validated_chain(conn: Any, rec: CallbackRecord | None) -> list[x509.Certificate]:
    """The peer's chain as verified: an authoritative hook's path + anchor, else OpenSSL's chain."""
    extra = rec.extra if rec is not None else {}
    pv = extra.get("peer_verification")
    path, anchor = getattr(pv, "path", None), getattr(pv, "anchor", None)
    if path and anchor is not None:
        return [*path, anchor]
    chain = extra.get("verified_chain")
    if chain is None and extra.get("verified_chain_der") is not None:
        chain = extra["verified_chain"] = _load_chain(extra["verified_chain_der"])
    if chain is None:
        chain = conn.get_verified_chain(as_cryptography=True) or []
    return list(chain)


def hello_has_ems(msg: bytes, *, dtls: bool) -> bool:
    """Does this ClientHello (type 1) or ServerHello (type 2) carry extended_master_secret?

    ``msg`` is the whole handshake message with its 4-octet (TLS) or 12-octet (DTLS) header
    (RFC 5246 7.4.1.2/7.4.1.3, RFC 6347 4.2.2).  A message that does not parse counts as
    "no" (the caller refuses the handshake).
    """
    try:
        p = (12 if dtls else 4) + 2 + 32  # header, version, random
        p += 1 + msg[p]  # session_id
        if msg[0] == 1:
            if dtls:
                p += 1 + msg[p]  # cookie
            p += 2 + int.from_bytes(msg[p:p + 2], "big")  # cipher_suites
            p += 1 + msg[p]  # compression_methods
        elif msg[0] == 2:
            p += 3  # cipher_suite, compression_method
        else:
            return False
        if p == len(msg):
            return False  # no extensions at all
        end = p + 2 + int.from_bytes(msg[p:p + 2], "big")
        if end != len(msg):
            return False
        p += 2
        while p + 4 <= end:
            ext_type = int.from_bytes(msg[p:p + 2], "big")
            ext_len = int.from_bytes(msg[p + 2:p + 4], "big")
            if ext_type == _EXT_EMS:
                return ext_len == 0 and p + 4 <= end  # RFC 7627 5.1: extension_data is empty
            p += 4 + ext_len
        return False
    except IndexError:
        return False


def _hello_watcher(dtls: bool) -> Callable[..., None]:
    """SSL_CTX_set_msg_callback: record in the connection's CallbackRecord whether the
    peer's hello carried extended_master_secret (never raises)."""

    def watch(write_p: int, version: int, content_type: int, buf: Any, length: int, ssl: Any, arg: Any) -> None:
        if write_p or content_type != 22 or length < 1:
            return
        try:
            kind = _ffi.cast("const unsigned char *", buf)[0]
            if kind != 1 and kind != 2:  # ClientHello (read by a server), ServerHello (read by a client)
                return
            rec = record_for_ssl(ssl)
            if rec is not None:
                rec.extra[_PEER_EMS] = hello_has_ems(_ffi.buffer(buf, length)[:], dtls=dtls)
        except BaseException:  # noqa: BLE001 - never into C; no verdict means the post-handshake check decides
            return

    return watch


def _cookie_oracle(ssl: Any) -> CookieOracle | None:
    rec = record_for_ssl(ssl)
    return rec.extra.get(_COOKIE_ORACLE) if rec is not None else None


def _cookie_generate_callback(ssl: Any, out: Any, outlen: Any) -> int:
    """SSL_CTX_set_cookie_generate_cb: the oracle's cookie (0 aborts, never raises)."""
    try:
        oracle = _cookie_oracle(ssl)
        if oracle is None:
            return 0
        cookie = bytes(oracle.generate())
        if not 0 < len(cookie) <= _DTLS1_COOKIE_LENGTH:
            return 0
        _ffi.memmove(out, cookie, len(cookie))
        outlen[0] = len(cookie)
        return 1
    except BaseException:
        return 0


def _cookie_verify_callback(ssl: Any, cookie: Any, length: int) -> int:
    """SSL_CTX_set_cookie_verify_cb: 1 when the oracle accepts the echoed cookie."""
    try:
        oracle = _cookie_oracle(ssl)
        if oracle is None:
            return 0
        return 1 if oracle.verify(_ffi.buffer(cookie, length)[:]) else 0
    except BaseException:
        return 0


# tls_alert hint of a rejecting hook -> X509 error whose alert OpenSSL sends (ssl_x509err2alert)
_ALERT_ERRORS: dict[str, int] = {
    "certificate_expired": _lib.X509_V_ERR_CERT_HAS_EXPIRED,
    "unknown_ca": _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    "bad_certificate": _lib.X509_V_ERR_CERT_REJECTED,
    "certificate_revoked": _lib.X509_V_ERR_CERT_REVOKED,
    # not in OpenSSL's x509 -> alert table, so the table's default certificate_unknown is sent
    # (X509_V_ERR_UNABLE_TO_GET_CRL would send unknown_ca)
    "certificate_unknown": _lib.X509_V_ERR_DIFFERENT_CRL_SCOPE,
}

# OpenSSL reason strings (lower case) -> our reasons, checked in order.
_REASON_TABLE: tuple[tuple[tuple[str, ...], TLSFailureReason], ...] = (
    (("unknown psk identity", "psk identity not found"), TLSFailureReason.UNKNOWN_PSK_IDENTITY),
    (
        ("unsupported protocol", "wrong version number", "alert protocol version", "version too low",
         "unsupported ssl version", "version too high", "bad protocol version"),
        TLSFailureReason.PROTOCOL_VERSION,
    ),
    (("no shared cipher", "no ciphers available", "wrong cipher returned", "no cipher match"),
     TLSFailureReason.NO_SHARED_CIPHER),
    (("alert unrecognized name",), TLSFailureReason.UNRECOGNIZED_NAME),
    (("peer did not return a certificate", "certificate required"), TLSFailureReason.CERTIFICATE_REQUIRED),
    (("certificate verify failed",), TLSFailureReason.CERTIFICATE_VERIFY_FAILED),
    (("alert bad certificate", "alert unknown ca", "alert certificate unknown", "alert unsupported certificate",
      "alert certificate expired", "alert certificate revoked", "alert access denied"),
     TLSFailureReason.BAD_CERTIFICATE),
    (("bad record mac", "decrypt error", "digest check failed", "decryption failed"), TLSFailureReason.BAD_RECORD_MAC),
    (("alert",), TLSFailureReason.PEER_ALERT),
    (("unexpected eof",), TLSFailureReason.CONNECTION_CLOSED),
)


def _error_strings(exc: BaseException) -> list[str]:
    out: list[str] = []
    if isinstance(exc, SSL.SysCallError):
        return [str(exc.args[1]) if len(exc.args) > 1 else str(exc)]
    args = exc.args[0] if exc.args else []
    if isinstance(args, list):
        for item in args:
            if isinstance(item, tuple) and item:
                out.append(str(item[-1]))
            else:
                out.append(str(item))
    else:
        out.append(str(args))
    return out


class TLSEngine:
    """One (D)TLS 1.2 connection, sans-I/O (see the module docstring)."""

    def __init__(self, context: TLSContext | TLSConfig, *, server_name: str | None = None) -> None:
        if isinstance(context, TLSConfig):
            context = TLSContext(context)
        self.context = context
        cfg = context.config
        self.role = cfg.role
        self.transport = cfg.transport
        self.callback_record = CallbackRecord()
        conn = self._conn = SSL.Connection(context.ssl_context, None)
        # the callbacks find the record through the Connection; giving them the record (not
        # the engine) avoids an engine <-> Connection cycle, so SSL_free runs as soon as the
        # engine is dropped instead of at the next garbage collection
        conn.set_app_data(self.callback_record)
        self._ssl = conn._ssl
        self._into_ssl = conn._into_ssl
        self._from_ssl = conn._from_ssl
        self._dtls = self.transport is Transport.DTLS
        self._mtu = cfg.mtu
        self._require_ems = cfg.require_ems
        self.state = _HANDSHAKING
        self.failure: TLSHandshakeError | None = None
        self._app_in: list[bytes] = []
        self._rbuf: Any = None  # cffi read buffer, allocated on first application-data read
        self._started = False
        self.handshake_complete = False
        self.pending_status_check: Any = None  # awaitable from TLSConfig.peer_status_check, while held
        self._held: bytes | None = None  # the final flight held back while the status check runs
        self._held_before = 0  # octets of the output that were queued before the held flight
        self._status_check = cfg.peer_status_check if self.role is Role.SERVER else None
        self._client_sni = server_name if server_name is not None else cfg.server_name
        if self._dtls:
            _lib.SSL_set_mtu(self._ssl, cfg.mtu)  # Connection.set_ciphertext_mtu
        if self.role is Role.CLIENT:
            if cfg.check_ocsp_staple is not None:
                conn.request_ocsp()  # status_request (RFC 6066 8)
            if self._client_sni:
                conn.set_tlsext_host_name(self._client_sni.encode("idna"))
            _lib.SSL_set_connect_state(self._ssl)  # Connection.set_connect_state
        else:
            _lib.SSL_set_accept_state(self._ssl)

    def __repr__(self) -> str:
        return (f"TLSEngine(role={self.role.value}, transport={self.transport.value}, state={self.state.value}, "
                f"cipher={self.cipher_name!r}, psk_identity={self.psk_identity!r})")

    # -- handshake ----------------------------------------------------------
    @property
    def established(self) -> bool:
        return self.state is _ESTABLISHED

    def do_handshake(self) -> TLSState:
        """Advance the handshake as far as the received data allows."""
        self._started = True
        if self.state is _HANDSHAKING:
            self._handshake_step()
        return self.state

    def _handshake_step(self) -> None:
        # SSL_do_handshake directly: "want read" is the common outcome and needs no exception
        ssl = self._ssl
        require_ems = self._require_ems
        if self._held is not None:
            return  # the status check decides; nothing is read meanwhile
        before = _lib.BIO_get_mem_data(self._from_ssl, _ffi.NULL) if (require_ems or self._status_check) else 0
        rc = _lib.SSL_do_handshake(ssl)
        if rc > 0:
            if require_ems and _lib.SSL_get_extms_support(ssl) != 1:
                raise self._refuse_no_ems(before, after_finished=True)
            if self._status_check is not None and self._hold_for_status(before):
                return
            self.state = _ESTABLISHED
            self.handshake_complete = True
            return
        if _lib.SSL_get_error(ssl, rc) == _SSL_ERROR_WANT_READ:
            if require_ems and self.callback_record.extra.get(_PEER_EMS) is False:
                err = self._refuse_no_ems(before, after_finished=False)
                if err is not None:
                    raise err
            return
        try:
            self._conn._raise_ssl_error(ssl, rc)  # pyOpenSSL's exception for this failure
        except SSL.WantReadError:
            return
        except (SSL.Error, SSL.SysCallError) as exc:
            raise self._fail(exc) from self._cause()
        raise self._fail(None, TLSFailureReason.HANDSHAKE_FAILURE, f"SSL_do_handshake returned {rc}")

    def _refuse_no_ems(self, before: int, *, after_finished: bool) -> TLSHandshakeError | None:
        """Fail the handshake for want of RFC 7627: what this step wrote (never sent) is
        replaced by a plaintext fatal handshake_failure alert.

        The alert's record header is the first discarded record's (epoch 0 in DTLS, with its
        sequence number, which the peer has not seen).  Returns None (refuse later) for a DTLS
        step that wrote nothing: there is no sequence number to use yet.
        """
        raw = self.data_to_send()  # everything pending; the first ``before`` octets were queued earlier
        kept, new = raw[:before], raw[before:]
        hlen = 13 if self._dtls else 5
        alert = b""
        if len(new) >= hlen and new[0] in (20, 22) and (not self._dtls or new[3:5] == b"\x00\x00"):
            alert = b"\x15" + new[1:hlen - 2] + _HANDSHAKE_FAILURE_ALERT
        elif not new and not after_finished:
            if self._dtls:
                return None
            alert = b"\x15\x03\x03" + _HANDSHAKE_FAILURE_ALERT  # TLS 1.2, before our ChangeCipherSpec
        out = kept + alert
        if out:
            _lib.BIO_write(self._from_ssl, out, len(out))
        if after_finished:
            detail = "the session has no extended master secret (RFC 7627)"
        elif self.role is Role.SERVER:
            detail = "the client did not offer the extended master secret extension (RFC 7627)"
        else:
            detail = "the server did not negotiate the extended master secret extension (RFC 7627)"
        return self._fail(None, TLSFailureReason.NO_EXTENDED_MASTER_SECRET, detail)

    def _hold_for_status(self, before: int) -> bool:
        """Ask ``peer_status_check``; when it returns an awaitable, hold the final flight back."""
        if self._negotiated_psk():  # a PSK handshake: no certificate, no status
            return False
        assert self._status_check is not None
        pv = self.peer_verification  # None (no authoritative verify hook): the check decides
        try:
            waiting = self._status_check(pv)
        except BaseException as exc:  # noqa: BLE001 - a synchronous refusal
            self._held, self._held_before = self.data_to_send(), before
            raise self.refuse_held_flight(exc) from exc
        if waiting is None:
            return False
        self._held, self._held_before = self.data_to_send(), before
        self.pending_status_check = waiting
        return True

    @property
    def holding_flight(self) -> bool:
        """Is the final flight held back for ``pending_status_check``?"""
        return self._held is not None and self.state is _HANDSHAKING

    def release_held_flight(self) -> bool:
        """The status check passed: send the held flight; the engine is ESTABLISHED.

        Buffered application data is decrypted (``receive_application_data``).  False when
        nothing was held or the handshake has failed meanwhile (e.g. the peer closed).
        """
        held = self._held
        if held is None or self.state is not _HANDSHAKING:
            return False
        self._held = None
        self.pending_status_check = None
        if held:
            _lib.BIO_write(self._from_ssl, held, len(held))
        self.state = _ESTABLISHED
        self.handshake_complete = True
        self._read_records()
        return True

    def refuse_held_flight(self, exc: BaseException) -> TLSHandshakeError:
        """The status check refused the peer (``exc``, optionally with ``tls_alert``): the held
        flight is replaced by a plaintext fatal alert and the handshake fails PEER_REJECTED."""
        held = self._held or b""
        before = min(self._held_before, len(held))
        self._held = None
        self.pending_status_check = None
        if self.state is not _HANDSHAKING:
            return self.failure or TLSHandshakeError(TLSFailureReason.PEER_REJECTED, str(exc))
        code = _ALERT_CODES.get(str(getattr(exc, "tls_alert", "")), _ALERT_CODES["bad_certificate"])
        if not self._dtls:
            out = held[:before] + b"\x15\x03\x03\x00\x02\x02" + bytes([code])  # before our ChangeCipherSpec
        else:  # the header of our first unsent record (ChangeCipherSpec, or a NewSessionTicket before
            # it): epoch 0, a sequence number the peer has not seen
            first = held[before:before + 13]
            alert = b"\x15" + first[1:11] + b"\x00\x02\x02" + bytes([code]) \
                if len(first) == 13 and first[0] in (20, 22) and first[3:5] == b"\x00\x00" else b""
            out = held[:before] + alert
        if out:
            _lib.BIO_write(self._from_ssl, out, len(out))
        self.callback_record.fail("PEER_REJECTED", f"peer status check refused the peer: {exc}", exc)
        err = self._fail(None)
        err.__cause__ = exc
        return err

    def _cause(self) -> BaseException | None:
        return self.callback_record.failure_cause

    def _fail(self, exc: BaseException | None, reason: TLSFailureReason | None = None, detail: str = "") -> TLSHandshakeError:
        rec = self.callback_record
        if reason is None and rec.failure_reason is not None:
            reason = TLSFailureReason(rec.failure_reason)
            detail = rec.failure_detail or ""
        if reason is None:
            strings = [s.lower() for s in (_error_strings(exc) if exc is not None else [])]
            joined = "; ".join(strings)
            reason = TLSFailureReason.HANDSHAKE_FAILURE
            for needles, r in _REASON_TABLE:
                if any(n in joined for n in needles):
                    reason = r
                    break
            if reason is TLSFailureReason.BAD_RECORD_MAC and self.state is _HANDSHAKING and \
                    AuthMode.PSK in self.context.config.modes and self._negotiated_psk():
                reason = TLSFailureReason.PSK_MISMATCH
            detail = joined
        err = TLSHandshakeError(reason, detail)
        if self.state is _HANDSHAKING:
            self.state = TLSState.FAILED
            self.failure = err
        return err

    def _negotiated_psk(self) -> bool:
        name = self._conn.get_cipher_name()
        return name is None or name.startswith("PSK")

    # -- bytes in/out -------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the peer (one whole datagram for DTLS).

        Advances the handshake and decrypts application data; raises
        :class:`TLSHandshakeError` when the handshake fails (the alert for the
        peer is then waiting in ``data_to_send``/``datagrams_to_send``).
        """
        state = self.state
        if state is _FAILED:
            raise self.failure or TLSError("engine failed")
        if state is _CLOSED or not data:
            if not data and not self._dtls and state is not _CLOSED:
                self._eof()
            return
        if type(data) is not bytes:
            data = bytes(data)
        n = _lib.BIO_write(self._into_ssl, data, len(data))  # Connection.bio_write without its checks
        if n <= 0:
            self._conn._handle_bio_errors(self._into_ssl, n)  # raises what Connection.bio_write raises
        if state is _HANDSHAKING:
            if self._held is not None:
                # buffered until the status check releases the flight; a client cannot send
                # application data before our Finished, so more than a few records is abuse
                if _lib.BIO_get_mem_data(self._into_ssl, _ffi.NULL) > _HELD_INPUT_LIMIT:
                    self._held = None
                    self.pending_status_check = None
                    raise self._fail(None, TLSFailureReason.HANDSHAKE_FAILURE,
                                     f"the peer sent more than {_HELD_INPUT_LIMIT} octets while its "
                                     "certificate status was checked")
                return
            if self.role is Role.SERVER or self._started:
                self._handshake_step()
            if self.state is not _ESTABLISHED:
                return
        self._read_records()

    def _eof(self) -> None:
        if self.state is _HANDSHAKING:
            raise self._fail(None, TLSFailureReason.CONNECTION_CLOSED, "transport closed during the handshake")
        self.state = _CLOSED

    def _read_records(self) -> None:
        """Decrypt what is buffered into ``_app_in`` (state ESTABLISHED)."""
        ssl = self._ssl
        dtls = self._dtls
        while self.state is _ESTABLISHED:
            if (not dtls and _lib.SSL_pending(ssl) <= 0
                    and _lib.BIO_get_mem_data(self._into_ssl, _ffi.NULL) <= 0):
                return  # nothing buffered: skip a recv that could only raise WantReadError
            rbuf = self._rbuf
            if rbuf is None:
                rbuf = self._rbuf = _new_uncleared("char[]", _RECORD_PLAINTEXT_MAX)
            rc = _lib.SSL_read(ssl, rbuf, _RECORD_PLAINTEXT_MAX)
            if rc > 0:
                self._app_in.append(_ffi.buffer(rbuf, rc)[:])
                continue
            if _lib.SSL_get_error(ssl, rc) == _SSL_ERROR_WANT_READ:
                return
            try:
                self._conn._raise_ssl_error(ssl, rc)  # ZeroReturnError, record-layer errors ...
                return
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self.state = _CLOSED
                try:
                    self._conn.shutdown()
                except SSL.Error:
                    pass
                return
            except (SSL.Error, SSL.SysCallError) as exc:
                self.state = _FAILED
                raise TLSError(f"TLS record layer failure: {'; '.join(_error_strings(exc))}") from None

    def data_to_send(self) -> bytes:
        """All bytes the engine wants sent to the peer (TLS byte stream)."""
        bio = self._from_ssl
        pending = _lib.BIO_get_mem_data(bio, _ffi.NULL)  # bytes waiting in the memory BIO
        if pending <= 0:
            return b""
        buf = _new_uncleared("char[]", pending)
        n = _lib.BIO_read(bio, buf, pending)
        return _ffi.buffer(buf, n)[:] if n > 0 else b""

    def datagrams_to_send(self) -> list[bytes]:
        """DTLS: pending records packed into datagrams of at most ``mtu`` bytes.

        The memory BIO is a byte stream, so datagram boundaries are rebuilt
        from the DTLS record headers (13 octets, length in the last two).
        OpenSSL already fragments handshake messages to the configured MTU.
        """
        raw = self.data_to_send()
        mtu = self._mtu
        size = len(raw)
        if size <= mtu:
            return [raw] if raw else []  # whole records that fit one datagram: nothing to split
        datagrams: list[bytes] = []
        start = pos = 0  # the current datagram is raw[start:pos]
        while pos < size:
            if size - pos < 13:
                raise TLSError("truncated DTLS record in OpenSSL output")
            end = pos + 13 + ((raw[pos + 11] << 8) | raw[pos + 12])
            if end - start > mtu and pos > start:
                datagrams.append(raw[start:pos])
                start = pos
            pos = end
        datagrams.append(raw[start:pos])
        return datagrams

    # -- DTLS cookie exchange (RFC 6347 4.2.1) --------------------------------
    def dtls_listen(self, datagram: bytes, oracle: CookieOracle) -> bool:
        """DTLS server: run OpenSSL's stateless ``DTLSv1_listen`` over one datagram.

        True: the datagram was a ClientHello whose cookie ``oracle.verify``
        accepted; the engine keeps it and continues the handshake on the next
        ``do_handshake`` (OpenSSL checks the cookie once more through the same
        oracle).  False: nothing was kept - a ClientHello without a valid cookie
        has its HelloVerifyRequest waiting in ``datagrams_to_send``, anything
        else was dropped - and the same engine can listen again.
        """
        if not self._dtls or self.role is not Role.SERVER or self._started or self.state is not _HANDSHAKING:
            raise TLSError("dtls_listen needs a DTLS server engine that has not started its handshake")
        extra = self.callback_record.extra
        extra[_COOKIE_ORACLE] = oracle
        data = bytes(datagram)
        if not data:
            return False
        if _lib.BIO_write(self._into_ssl, data, len(data)) != len(data):
            _lib.ERR_clear_error()
            raise TLSError("OpenSSL memory BIO refused the datagram")
        peer = _ffi.gc(_lib.BIO_ADDR_new(), _lib.BIO_ADDR_free)  # a memory BIO has no peer: left cleared
        rc = _lib.DTLSv1_listen(self._ssl, peer)
        if rc == 1:
            return True
        _lib.ERR_clear_error()  # DTLSv1_listen leaves its reasons for dropping a packet on the error queue
        del extra[_COOKIE_ORACLE]
        left = _lib.BIO_get_mem_data(self._into_ssl, _ffi.NULL)
        if left > 0:  # only a datagram longer than OpenSSL's read buffer: discard the rest
            _lib.BIO_read(self._into_ssl, _new_uncleared("char[]", left), left)
        return False

    # -- DTLS timers ----------------------------------------------------------
    def get_timeout(self) -> float | None:
        """DTLS: seconds until ``handle_timeout`` must be called (None: no timer)."""
        if self.transport is not Transport.DTLS:
            return None
        return self._conn.DTLSv1_get_timeout()

    def handle_timeout(self) -> bool:
        """DTLS: retransmit the last flight if the timer expired (True if it did)."""
        if self.transport is not Transport.DTLS or self.state is not _HANDSHAKING:
            return False
        if self._require_ems and self.callback_record.extra.get(_PEER_EMS) is False:
            raise self._fail(None, TLSFailureReason.NO_EXTENDED_MASTER_SECRET,
                             "the server did not negotiate the extended master secret extension (RFC 7627)")
        try:
            return self._conn.DTLSv1_handle_timeout()
        except (SSL.Error, SSL.SysCallError) as exc:
            raise self._fail(exc, TLSFailureReason.TIMEOUT, "DTLS retransmission limit reached") from None

    # -- application data -------------------------------------------------
    def send_application_data(self, data: bytes) -> None:
        if self.state is not _ESTABLISHED:
            raise TLSError(f"cannot send application data in state {self.state.value}")
        view = memoryview(bytes(data))
        step = self._conn.get_cleartext_mtu() if self.transport is Transport.DTLS else 16384
        step = max(1, step)
        while view:
            n = self._conn.send(view[:step])
            view = view[n:]

    def receive_application_data(self) -> bytes:
        """Decrypted application data received so far (and not yet returned)."""
        data = b"".join(self._app_in)
        self._app_in.clear()
        return data

    def receive_application_records(self) -> list[bytes]:
        """As ``receive_application_data`` but one item per record (DTLS datagram)."""
        data = list(self._app_in)
        self._app_in.clear()
        return data

    def close(self) -> None:
        """Send close_notify (collect it with ``data_to_send``) and mark the engine CLOSED."""
        if self.state is _ESTABLISHED:
            try:
                self._conn.shutdown()
            except (SSL.Error, SSL.SysCallError):
                pass
        if self.state is not _FAILED:
            self.state = TLSState.CLOSED

    # -- session facts -----------------------------------------------------
    def export_keying_material(self, label: str, length: int = profiles.EXPORTER_LENGTH,
                               context: bytes | None = None) -> bytes:
        """RFC 5705 exporter (TS-0003 10.3.1); still available after close_notify."""
        if not self.handshake_complete or self.state is _FAILED:
            raise TLSError(f"keying material export needs an established session (state {self.state.value})")
        if self._require_ems and _lib.SSL_get_extms_support(self._ssl) != 1:
            raise TLSError("keying material export refused: the session has no extended master secret (RFC 7627)")
        lab = label.encode("ascii")
        out = _new_uncleared("unsigned char[]", length)
        if context is None:
            rc = _lib.SSL_export_keying_material(self._ssl, out, length, lab, len(lab), _ffi.NULL, 0, 0)
        else:
            rc = _lib.SSL_export_keying_material(self._ssl, out, length, lab, len(lab), context, len(context), 1)
        if rc != 1:  # let pyOpenSSL raise exactly what it raises for this failure
            return self._conn.export_keying_material(lab, length, context)
        return _ffi.buffer(out, length)[:]

    def export_onem2m_key(self, label: str) -> tuple[bytes, bytes]:
        """``(key, key_id)`` from a 48-byte export (``m2msec.keys.split_exported``, TS-0003 10.3.1)."""
        return split_exported(self.export_keying_material(label, profiles.EXPORTER_LENGTH))

    def peer_certificate_chain(self) -> list[x509.Certificate]:
        """The certificates the peer sent, leaf first (empty in PSK mode)."""
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        if leaf is not None and (not chain or chain[0] != leaf):
            chain = [leaf, *chain]
        return list(chain)

    def verified_chain(self) -> list[x509.Certificate]:
        """The chain OpenSSL built and passed to ``verify_peer`` (leaf ... trust anchor)."""
        extra = self.callback_record.extra
        chain = extra.get("verified_chain")
        if chain is None:
            der = extra.get("verified_chain_der")
            if der is None:
                return []
            chain = extra["verified_chain"] = _load_chain(der)  # converted on first request only
        return list(chain)

    @property
    def ocsp_staple_result(self) -> Any:
        """What ``check_ocsp_staple`` returned for the stapled response (None otherwise)."""
        return self.callback_record.extra.get("ocsp_staple")

    @property
    def peer_verification(self) -> Any:
        """What an authoritative ``verify_peer`` hook returned (None otherwise)."""
        return self.callback_record.extra.get("peer_verification")

    @property
    def psk_identity(self) -> bytes | None:
        return self.callback_record.psk_identity

    @property
    def psk_digest(self) -> bytes | None:
        """Server, PSK mode: SHA-256 of the pre-shared key this session's handshake used (to
        tell later whether the key behind ``psk_identity`` is still the same; never the key)."""
        return self.callback_record.psk_digest

    @property
    def psk_identity_hint(self) -> bytes | None:
        return self.callback_record.psk_identity_hint

    @property
    def sni(self) -> str | None:
        if self.role is Role.CLIENT:
            return self._client_sni
        sni = self.callback_record.extra.get("sni")
        if sni is None:
            name = self._conn.get_servername()
            sni = name.decode("utf-8", "replace") if name else None
        return sni

    @property
    def cipher_name(self) -> str | None:
        return self._conn.get_cipher_name()

    @property
    def cipher_suite(self) -> profiles.CipherSuite | None:
        name = self.cipher_name
        for s in profiles.ALL_SUITES:
            if s.openssl_name == name:
                return s
        return None

    @property
    def protocol_version(self) -> str | None:
        if self.state is _HANDSHAKING:
            return None
        return self._conn.get_protocol_version_name()
