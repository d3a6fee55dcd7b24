"""Stateless DTLS 1.2 cookie exchange for DTLS servers (TS-0003 10.2.1, RFC 6347 4.2.1).

TS-0003 10.2.1 lets the security associations of clause 10.2 run over DTLS 1.2
(RFC 6347).  Before a DTLS server allocates anything for a peer it answers a
ClientHello without a valid cookie with a HelloVerifyRequest and forgets it,
so that a spoofed source address can neither make the server hold per-address
state nor make it send a full server flight (amplification).

Division of work (sans-I/O throughout):

* :func:`parse_client_hello` reads just enough of the datagram (one DTLS
  record holding one unfragmented ClientHello) to take the parameters
  RFC 6347 4.2.1 asks the cookie to cover; anything else is dropped unread
  by OpenSSL.
* :class:`CookieSecrets` holds the HMAC secret: 32 random octets, replaced
  every ``period`` (default 30 s) on an injected clock; cookies minted under
  the current or the previous secret are accepted, so a cookie lives between
  one and two periods.
* :class:`DTLSCookies` computes ``HMAC-SHA-256(secret, input)[:16]`` with
  ``input`` = client address || client port || the ClientHello's
  client_version, random, session_id, cipher_suites and compression_methods,
  each in its wire encoding with its length prefix (see :func:`cookie_input`);
  verification compares against every accepted secret with
  ``hmac.compare_digest`` and no early exit.
* :class:`HelloVerifier` is the server's front door: one reusable listening
  :class:`~m2msec.tls.engine.TLSEngine` runs OpenSSL's ``DTLSv1_listen``
  (which writes the HelloVerifyRequest itself and keeps nothing on failure);
  the cookie is generated and checked through OpenSSL's cookie callbacks,
  which ask a per-datagram oracle built here.  Only a ClientHello with a valid
  cookie yields an engine (OpenSSL verifies the same cookie once more when the
  handshake processes that ClientHello); the verifier then starts a fresh
  listening engine.

A ClientHello with a wrong cookie (forged, altered, truncated, minted for
another address/port or under an expired secret) is treated as one without a
cookie, as RFC 6347 4.2.1 says: it gets a fresh HelloVerifyRequest - no
bigger than the ClientHello - and no state.  (OpenSSL numbers every
HelloVerifyRequest message_seq 0, so an OpenSSL client that already took one
ignores the second and retries its cookie until its own timeout: the secret
period is chosen far longer than a ClientHello round trip for that reason.)
A ClientHello that carries a cookie but whose message_seq is not 1 is dropped
unanswered: it is no answer to a HelloVerifyRequest (RFC 6347 4.2.2).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from m2msec.errors import ParseError
from m2msec.tls.engine import Role, TLSContext, TLSEngine
from m2msec.tls.profiles import Transport

__all__ = [
    "COOKIE_LENGTH",
    "DEFAULT_SECRET_PERIOD",
    "SECRET_LENGTH",
    "ClientHello",
    "CookieParseError",
    "CookieSecrets",
    "DTLSCookies",
    "HelloVerifier",
    "ListenOutcome",
    "ListenResult",
    "address_octets",
    "compute_cookie",
    "cookie_input",
    "parse_client_hello",
    "parse_hello_verify_request",
]

Clock = Callable[[], datetime]
Address = Any  # an asyncio datagram address: (host, port) or (host, port, flowinfo, scope_id)

#: octets of HMAC-SHA-256 kept in the cookie (128 bits)
COOKIE_LENGTH = 16
#: octets of each HMAC secret
SECRET_LENGTH = 32
#: how long one secret mints cookies; the previous one is still accepted for one more period
DEFAULT_SECRET_PERIOD = timedelta(seconds=30)

_CT_HANDSHAKE = 22
_HT_CLIENT_HELLO = 1
_HT_HELLO_VERIFY_REQUEST = 3
_RECORD_HEADER = 13
_HANDSHAKE_HEADER = 12
_MAX_RECORD = 16384  # RFC 6347 4.1 / RFC 5246 6.2.1 plaintext limit, also OpenSSL's listen buffer


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CookieParseError(ParseError):
    """A datagram that is not one DTLS record holding one unfragmented ClientHello."""


@dataclass(frozen=True)
class ClientHello:
    """The parts of a DTLS ClientHello datagram the cookie exchange needs."""

    record_version: int
    record_sequence: int
    message_seq: int
    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: bytes  # the wire vector body (2 octets per suite)
    compression_methods: bytes


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise CookieParseError(f"DTLS ClientHello truncated in {what}")
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, prefix: int, what: str) -> bytes:
        return self.take(self.uint(prefix, what), what)

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos


def parse_client_hello(datagram: bytes) -> ClientHello:
    """Parse a datagram holding exactly one epoch-0 record with one whole ClientHello.

    Raises :class:`CookieParseError` for anything else (another content or
    handshake type, a fragment, trailing bytes, a malformed vector).
    """
    data = bytes(datagram)
    if len(data) < _RECORD_HEADER + _HANDSHAKE_HEADER:
        raise CookieParseError("datagram shorter than a DTLS record and handshake header")
    r = _Reader(data)
    if r.uint(1, "content type") != _CT_HANDSHAKE:
        raise CookieParseError("DTLS record is not a handshake record")
    record_version = r.uint(2, "record version")
    if record_version >> 8 != 0xFE:
        raise CookieParseError("record version is not a DTLS version")
    if r.uint(2, "epoch") != 0:
        raise CookieParseError("a ClientHello opening a handshake is sent in epoch 0")
    record_sequence = r.uint(6, "sequence number")
    length = r.uint(2, "record length")
    if length > _MAX_RECORD:
        raise CookieParseError("DTLS record longer than 2^14 octets")
    if length != r.left:
        raise CookieParseError("datagram does not hold exactly one DTLS record")
    if r.uint(1, "handshake type") != _HT_CLIENT_HELLO:
        raise CookieParseError("handshake message is not a ClientHello")
    body_length = r.uint(3, "handshake length")
    message_seq = r.uint(2, "message_seq")
    fragment_offset = r.uint(3, "fragment_offset")
    fragment_length = r.uint(3, "fragment_length")
    if fragment_offset != 0 or fragment_length != body_length or body_length != r.left:
        raise CookieParseError("ClientHello is fragmented or its lengths disagree")
    client_version = r.uint(2, "client_version")
    if client_version >> 8 != 0xFE:
        raise CookieParseError("client_version is not a DTLS version")
    random = r.take(32, "random")
    session_id = r.vector(1, "session_id")
    if len(session_id) > 32:
        raise CookieParseError("session_id longer than 32 octets")
    cookie = r.vector(1, "cookie")
    cipher_suites = r.vector(2, "cipher_suites")
    if not cipher_suites or len(cipher_suites) % 2:
        raise CookieParseError("cipher_suites vector empty or of odd length")
    compression_methods = r.vector(1, "compression_methods")
    if not compression_methods:
        raise CookieParseError("compression_methods vector empty")
    if r.left:
        if r.left < 2 or r.uint(2, "extensions") != r.left:
            raise CookieParseError("extensions length does not match the ClientHello")
    return ClientHello(record_version, record_sequence, message_seq, client_version, random, session_id, cookie,
                       cipher_suites, compression_methods)


def parse_hello_verify_request(datagram: bytes) -> tuple[int, bytes]:
    """``(server_version, cookie)`` of a datagram holding one HelloVerifyRequest record."""
    r = _Reader(bytes(datagram))
    if r.uint(1, "content type") != _CT_HANDSHAKE:
        raise CookieParseError("DTLS record is not a handshake record")
    r.take(2 + 2 + 6, "record header")
    if r.uint(2, "record length") != r.left:
        raise CookieParseError("datagram does not hold exactly one DTLS record")
    if r.uint(1, "handshake type") != _HT_HELLO_VERIFY_REQUEST:
        raise CookieParseError("handshake message is not a HelloVerifyRequest")
    body_length = r.uint(3, "handshake length")
    r.take(2, "message_seq")
    if r.uint(3, "fragment_offset") != 0 or r.uint(3, "fragment_length") != body_length or body_length != r.left:
        raise CookieParseError("HelloVerifyRequest is fragmented or its lengths disagree")
    version = r.uint(2, "server_version")
    cookie = r.vector(1, "cookie")
    if r.left:
        raise CookieParseError("trailing octets after the HelloVerifyRequest cookie")
    return version, cookie


def address_octets(address: Address) -> bytes:
    """Canonical octets of a datagram peer: len || IP (4 or 16 octets) || port (2 octets)."""
    host, port = address[0], int(address[1])
    try:
        ip = ipaddress.ip_address(host).packed
    except ValueError:
        ip = str(host).encode("utf-8")  # not an IP literal (not produced by asyncio's UDP endpoints)
    if len(ip) > 255 or not 0 <= port <= 0xFFFF:
        raise ValueError("unusable datagram peer address")
    return bytes([len(ip)]) + ip + port.to_bytes(2, "big")


def cookie_input(address: bytes, hello: ClientHello) -> bytes:
    """The HMAC input: peer address octets, then the ClientHello parameters of RFC 6347 4.2.1.

    ``address_octets(peer) || client_version (2) || random (32) ||
    session_id<0..32> || cipher_suites<2..2^16-2> || compression_methods<1..2^8-1>``,
    each vector with its length prefix as on the wire (1, 2 and 1 octets).
    """
    return b"".join((
        address,
        hello.client_version.to_bytes(2, "big"),
        hello.random,
        bytes([len(hello.session_id)]), hello.session_id,
        len(hello.cipher_suites).to_bytes(2, "big"), hello.cipher_suites,
        bytes([len(hello.compression_methods)]), hello.compression_methods,
    ))


def compute_cookie(secret: bytes, address: bytes, hello: ClientHello, length: int = COOKIE_LENGTH) -> bytes:
    """``HMAC-SHA-256(secret, cookie_input(address, hello))`` truncated to its first ``length`` octets."""
    return hmac.new(secret, cookie_input(address, hello), hashlib.sha256).digest()[:length]


class CookieSecrets:
    """The cookie HMAC secrets: a current one, rotated every ``period``, and the previous one.

    The first secret is drawn at construction; at the first use after each
    period boundary (measured on ``clock`` from construction) the current
    secret becomes the previous one and a fresh one is drawn.  When two or
    more boundaries passed unseen, the previous secret is gone too.
    """

    def __init__(self, *, period: timedelta = DEFAULT_SECRET_PERIOD, clock: Clock = _utcnow) -> None:
        if period <= timedelta(0):
            raise ValueError("cookie secret period must be positive")
        self.period = period
        self._clock = clock
        self._epoch = clock()
        self._generation = 0
        self._current = secrets.token_bytes(SECRET_LENGTH)
        self._previous: bytes | None = None

    def __repr__(self) -> str:
        return f"CookieSecrets(period={self.period}, generation={self._generation})"

    @property
    def generation(self) -> int:
        """How many times the secret was replaced (after bringing it up to date)."""
        self._advance()
        return self._generation

    def _advance(self) -> None:
        elapsed = self._clock() - self._epoch
        if elapsed < timedelta(0):
            return  # clock stepped back: keep the secrets we have
        generation = elapsed // self.period
        steps = generation - self._generation
        if steps <= 0:
            return
        self._previous = self._current if steps == 1 else None
        self._current = secrets.token_bytes(SECRET_LENGTH)
        self._generation = generation

    def rotate(self) -> None:
        """Replace the current secret now (the replaced one is still accepted for one period)."""
        self._advance()
        self._previous = self._current
        self._current = secrets.token_bytes(SECRET_LENGTH)

    def current(self) -> bytes:
        """The secret new cookies are minted under."""
        self._advance()
        return self._current

    def accepted(self) -> tuple[bytes, ...]:
        """Secrets whose cookies are still valid: the current one, then the previous one."""
        self._advance()
        return (self._current,) if self._previous is None else (self._current, self._previous)


class DTLSCookies:
    """Mints and verifies ``HMAC-SHA-256(secret, cookie_input(address, hello))[:length]``."""

    def __init__(self, secrets_: CookieSecrets | None = None, *, length: int = COOKIE_LENGTH) -> None:
        if not 8 <= length <= 32:
            raise ValueError("cookie length must be 8..32 octets")
        self.secrets = secrets_ if secrets_ is not None else CookieSecrets()
        self.length = length

    def __repr__(self) -> str:
        return f"DTLSCookies(length={self.length}, {self.secrets!r})"

    def mint(self, address: bytes, hello: ClientHello) -> bytes:
        """The cookie for this peer address and ClientHello under the current secret."""
        return compute_cookie(self.secrets.current(), address, hello, self.length)

    def verify(self, address: bytes, hello: ClientHello, cookie: bytes) -> bool:
        """Constant time: compares with the cookie of every accepted secret, no early exit."""
        ok = False
        for secret in self.secrets.accepted():
            ok |= hmac.compare_digest(compute_cookie(secret, address, hello, self.length), bytes(cookie))
        return ok


class _Oracle:
    """The engine's :class:`~m2msec.tls.engine.CookieOracle` for one datagram."""

    __slots__ = ("cookies", "address", "hello")

    def __init__(self, cookies: DTLSCookies, address: bytes, hello: ClientHello) -> None:
        self.cookies = cookies
        self.address = address
        self.hello = hello

    def __repr__(self) -> str:
        return "_Oracle(...)"

    def generate(self) -> bytes:
        return self.cookies.mint(self.address, self.hello)

    def verify(self, cookie: bytes) -> bool:
        return self.cookies.verify(self.address, self.hello, cookie)


class ListenOutcome(str, enum.Enum):
    ACCEPTED = "ACCEPTED"  # valid cookie: the engine continues the handshake
    HELLO_VERIFY = "HELLO_VERIFY"  # ClientHello without cookie: HelloVerifyRequest sent
    COOKIE_REJECTED = "COOKIE_REJECTED"  # wrong cookie: treated as no cookie (fresh HelloVerifyRequest)
    DROPPED = "DROPPED"  # not a ClientHello datagram: no answer


@dataclass
class ListenResult:
    outcome: ListenOutcome
    engine: TLSEngine | None = None  # ACCEPTED only
    replies: list[bytes] = field(default_factory=list)  # datagrams to send back to the peer


class HelloVerifier:
    """Stateless front door of a DTLS server (see the module docstring).

    ``receive(datagram, address)`` for every datagram from an address that has
    no session.  The verifier keeps one listening engine that belongs to no
    peer and counts outcomes in ``stats``; nothing else is kept per datagram.
    """

    def __init__(self, context: TLSContext, cookies: DTLSCookies | None = None) -> None:
        cfg = context.config
        if cfg.role is not Role.SERVER or cfg.transport is not Transport.DTLS:
            raise ValueError("HelloVerifier needs a DTLS server context")
        self.context = context
        self.cookies = cookies if cookies is not None else DTLSCookies()
        self.stats: Counter[ListenOutcome] = Counter()
        self._engine: TLSEngine | None = None

    def __repr__(self) -> str:
        return f"HelloVerifier({self.cookies!r}, stats={dict(self.stats)!r})"

    def receive(self, datagram: bytes, address: Address) -> ListenResult:
        result = self._receive(datagram, address)
        self.stats[result.outcome] += 1
        return result

    def _receive(self, datagram: bytes, address: Address) -> ListenResult:
        try:
            hello = parse_client_hello(datagram)
        except CookieParseError:
            return ListenResult(ListenOutcome.DROPPED)
        if hello.cookie and hello.message_seq != 1:
            # RFC 6347 4.2.2: the ClientHello answering a HelloVerifyRequest has message_seq 1, and
            # after DTLSv1_listen OpenSSL waits for message 1: any other would leave a dead session
            return ListenResult(ListenOutcome.DROPPED)
        oracle = _Oracle(self.cookies, address_octets(address), hello)
        engine = self._engine
        if engine is None:
            engine = self._engine = TLSEngine(self.context)
        if engine.dtls_listen(datagram, oracle):
            self._engine = None  # the engine now belongs to this peer
            return ListenResult(ListenOutcome.ACCEPTED, engine)
        replies = engine.datagrams_to_send()
        if not replies:
            return ListenResult(ListenOutcome.DROPPED)
        outcome = ListenOutcome.COOKIE_REJECTED if hello.cookie else ListenOutcome.HELLO_VERIFY
        return ListenResult(outcome, None, replies)
