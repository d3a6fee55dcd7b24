"""RFC 6347 4.2.1 stateless cookie exchange of the DTLS server (m2msec.tls.dtls_cookie, TS-0003 10.2.1).

Three levels: the ClientHello parser and cookie construction against hand-built vectors; the
sans-I/O HelloVerifier with our client engine in memory; the asyncio DTLS server on 127.0.0.1 fed
raw UDP datagrams, our client and ``openssl s_client -dtls1_2``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from _tlshelp import OPENSSL, PKI, Proc, keying_material, make_pki, pump
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from m2msec.errors import ParseError
from m2msec.tls import PSKCredentials, Role, TLSConfig, TLSContext, TLSEngine, TLSError, Transport, profiles
from m2msec.tls.dtls import DTLSServer, DTLSSession, open_dtls_connection, start_dtls_server
from m2msec.tls.dtls_cookie import (
    COOKIE_LENGTH,
    ClientHello,
    CookieParseError,
    CookieSecrets,
    DTLSCookies,
    HelloVerifier,
    ListenOutcome,
    address_octets,
    compute_cookie,
    cookie_input,
    parse_client_hello,
    parse_hello_verify_request,
)

ID = "test@onem2m.com"
KEY = bytes.fromhex("123456")
LABEL = profiles.EXPORTER_BOOTSTRAP
PEER = ("127.0.0.1", 40000)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def server_cfg(**kw: Any) -> TLSConfig:
    return TLSConfig(Role.SERVER, Transport.DTLS, psk_lookup=lambda i, sni: KEY if i == ID.encode() else None, **kw)


def client_cfg() -> TLSConfig:
    return TLSConfig(Role.CLIENT, Transport.DTLS, psk=PSKCredentials.from_hex(ID, "123456"))


def first_hello(cfg: TLSConfig | None = None) -> tuple[TLSEngine, bytes]:
    client = TLSEngine(cfg or client_cfg())
    client.do_handshake()
    (ch1,) = client.datagrams_to_send()
    return client, ch1


def with_cookie(ch: bytes, cookie: bytes) -> bytes:
    """Re-encode a ClientHello datagram with another cookie (lengths fixed up, nothing else changed)."""
    body = ch[25:]
    pos = 34 + 1 + body[34]  # client_version, random, session_id
    body = body[:pos] + bytes([len(cookie)]) + cookie + body[pos + 1 + body[pos]:]
    n = len(body).to_bytes(3, "big")
    hs = ch[13:14] + n + ch[17:19] + b"\x00\x00\x00" + n
    return ch[:11] + (len(hs) + len(body)).to_bytes(2, "big") + hs + body


def hello_bytes(*, ctype: int = 22, rver: bytes = b"\xfe\xfd", epoch: bytes = b"\x00\x00", htype: int = 1,
                frag_off: bytes = b"\x00\x00\x00", cver: bytes = b"\xfe\xfd", sid: bytes = b"",
                cookie: bytes = b"", suites: bytes = b"\xc0\xa8", comp: bytes = b"\x00",
                ext: bytes = b"", ext_len: int | None = None, trailing: bytes = b"") -> bytes:
    """A hand-built DTLS ClientHello datagram (every field overridable for the negative tests)."""
    body = (cver + bytes(range(32)) + bytes([len(sid)]) + sid + bytes([len(cookie)]) + cookie
            + len(suites).to_bytes(2, "big") + suites + bytes([len(comp)]) + comp)
    if ext or ext_len is not None:
        body += (len(ext) if ext_len is None else ext_len).to_bytes(2, "big") + ext
    n = len(body).to_bytes(3, "big")
    hs = bytes([htype]) + n + b"\x00\x00" + frag_off + n + body
    return bytes([ctype]) + rver + epoch + b"\x00\x00\x00\x00\x00\x07" + len(hs).to_bytes(2, "big") + hs + trailing


# -- level 1: parser, cookie construction, secrets ------------------------------------------------


def test_parse_hand_built_client_hello() -> None:
    h = parse_client_hello(hello_bytes(sid=b"\x05" * 32, cookie=b"\xaa" * 16, ext=b"\x00\x17\x00\x00"))
    assert h == ClientHello(0xFEFD, 7, 0, 0xFEFD, bytes(range(32)), b"\x05" * 32, b"\xaa" * 16, b"\xc0\xa8", b"\x00")


def test_parse_our_client_hello_and_its_cookie_echo() -> None:
    client, ch1 = first_hello()
    h1 = parse_client_hello(ch1)
    assert (h1.client_version, h1.cookie, h1.message_seq, h1.record_sequence) == (0xFEFD, b"", 0, 0)
    assert b"\xc0\xa8" in [h1.cipher_suites[i:i + 2] for i in range(0, len(h1.cipher_suites), 2)]  # PSK_AES_128_CCM_8
    verifier = HelloVerifier(TLSContext(server_cfg()))
    (hvr,) = verifier.receive(ch1, PEER).replies
    version, cookie = parse_hello_verify_request(hvr)
    assert version == 0xFEFF and len(cookie) == COOKIE_LENGTH  # OpenSSL sends HVR as DTLS 1.0 (RFC 6347 4.2.1)
    client.receive_data(hvr)
    (ch2,) = client.datagrams_to_send()
    h2 = parse_client_hello(ch2)
    assert h2.cookie == cookie and h2.message_seq == 1 and h2.record_sequence == 1
    # RFC 6347 4.2.1: the client repeats the parameters the cookie covers
    assert (h2.client_version, h2.random, h2.session_id, h2.cipher_suites, h2.compression_methods) == \
        (h1.client_version, h1.random, h1.session_id, h1.cipher_suites, h1.compression_methods)
    assert with_cookie(ch2, cookie) == ch2
    assert parse_client_hello(with_cookie(ch1, cookie)).cookie == cookie


def test_with_cookie_helper_reencodes_exactly() -> None:
    _, ch1 = first_hello()
    assert with_cookie(ch1, b"") == ch1
    h = parse_client_hello(with_cookie(ch1, b"\x01" * 20))
    assert h.cookie == b"\x01" * 20 and h.random == parse_client_hello(ch1).random


@pytest.mark.parametrize(("datagram", "needle"), [
    (b"\x16\xfe\xfd" + bytes(20), "shorter"),
    (hello_bytes(ctype=23), "not a handshake record"),
    (hello_bytes(rver=b"\x03\x03"), "not a DTLS version"),
    (hello_bytes(epoch=b"\x00\x01"), "epoch 0"),
    (hello_bytes(trailing=b"\x00"), "exactly one DTLS record"),
    (hello_bytes()[:-1], "exactly one DTLS record"),
    (hello_bytes(htype=3), "not a ClientHello"),
    (hello_bytes(frag_off=b"\x00\x00\x01"), "fragmented"),
    (hello_bytes(cver=b"\x03\x03"), "client_version"),
    (hello_bytes(sid=b"\x01" * 33), "session_id longer"),
    (hello_bytes(suites=b""), "cipher_suites"),
    (hello_bytes(suites=b"\xc0\xa8\x00"), "cipher_suites"),
    (hello_bytes(comp=b""), "compression_methods vector empty"),
    (hello_bytes(ext=b"\x00\x17\x00\x00", ext_len=3), "extensions length"),
])
def test_parse_rejects(datagram: bytes, needle: str) -> None:
    with pytest.raises(CookieParseError, match=needle) as ei:
        parse_client_hello(datagram)
    assert isinstance(ei.value, ParseError) and int(ei.value.rsc) == 4000


def test_parse_rejects_record_over_2_14() -> None:
    d = bytearray(hello_bytes())
    d[11:13] = (16385).to_bytes(2, "big")
    with pytest.raises(CookieParseError, match="2\\^14"):
        parse_client_hello(bytes(d) + bytes(16385 - (len(d) - 13)))


def test_parse_rejects_truncated_cookie_vector() -> None:
    d = bytearray(hello_bytes(cookie=b"\xaa" * 4))
    d[25 + 34 + 1] = 200  # cookie length beyond the message
    with pytest.raises(CookieParseError, match="truncated in cookie"):
        parse_client_hello(bytes(d))


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_parse_never_raises_anything_else(noise: bytes, at: int, patch: bytes) -> None:
    base = bytearray(hello_bytes(cookie=b"\x01" * 16, ext=b"\x00\x17\x00\x00"))
    at = at % len(base)
    base[at:at + len(patch)] = patch
    for candidate in (bytes(base), noise):
        try:
            parse_client_hello(candidate)
        except CookieParseError:
            pass


def test_parse_hello_verify_request_rejects() -> None:
    good = bytes.fromhex("16feff0000000000000000001f030000130000000000000013feff10") + b"C" * 16
    assert parse_hello_verify_request(good) == (0xFEFF, b"C" * 16)
    with pytest.raises(CookieParseError, match="not a HelloVerifyRequest"):
        parse_hello_verify_request(hello_bytes())
    with pytest.raises(CookieParseError, match="exactly one"):
        parse_hello_verify_request(good + b"\x00")
    with pytest.raises(CookieParseError, match="not a handshake"):
        parse_hello_verify_request(b"\x17" + good[1:])


def test_address_octets() -> None:
    assert address_octets(("192.0.2.1", 5684)) == bytes.fromhex("04c0000201" "1634")
    assert address_octets(("2001:db8::1", 443, 0, 0)) == b"\x10" + bytes.fromhex("20010db8" + "00" * 11 + "01") + b"\x01\xbb"
    assert address_octets(("192.0.2.1", 5685)) != address_octets(("192.0.2.1", 5684))
    with pytest.raises(ValueError):
        address_octets(("192.0.2.1", 70000))


def test_cookie_known_vector() -> None:
    """Construction pinned byte by byte; the MAC checked with cryptography's HMAC, not hmac."""
    hello = parse_client_hello(hello_bytes(sid=b"\x05\x06", cookie=b"\xff" * 16, suites=b"\xc0\xa8\x00\xff"))
    addr = address_octets(("192.0.2.1", 5684))
    expected_input = (bytes.fromhex("04c00002011634") + b"\xfe\xfd" + bytes(range(32)) + b"\x02\x05\x06"
                      + b"\x00\x04\xc0\xa8\x00\xff" + b"\x01\x00")
    assert cookie_input(addr, hello) == expected_input  # the echoed cookie itself is not an input
    secret = bytes([0x0B]) * 32
    mac = HMAC(secret, hashes.SHA256())
    mac.update(expected_input)
    full = mac.finalize()
    assert compute_cookie(secret, addr, hello) == full[:16]
    assert compute_cookie(secret, addr, hello, 32) == full


def test_cookie_covers_every_input() -> None:
    c = DTLSCookies()
    addr = address_octets(PEER)
    base = parse_client_hello(hello_bytes())
    cookie = c.mint(addr, base)
    assert c.verify(addr, base, cookie)
    assert c.verify(addr, parse_client_hello(hello_bytes(cookie=cookie)), cookie)  # echo does not change it
    variants = [
        hello_bytes(cver=b"\xfe\xff"), hello_bytes(sid=b"\x01"), hello_bytes(suites=b"\xc0\xa8\xc0\xae"),
        hello_bytes(comp=b"\x00\x01"),
    ]
    for v in variants:
        assert not c.verify(addr, parse_client_hello(v), cookie)
    other_random = ClientHello(**{**base.__dict__, "random": bytes(32)})
    assert not c.verify(addr, other_random, cookie)
    assert not c.verify(address_octets(("127.0.0.1", 40001)), base, cookie)
    assert not c.verify(address_octets(("127.0.0.2", 40000)), base, cookie)
    assert not c.verify(addr, base, cookie[:-1])
    assert not c.verify(addr, base, cookie + b"\x00")
    assert not c.verify(addr, base, bytes([cookie[0] ^ 1]) + cookie[1:])
    assert not c.verify(addr, base, b"")
    assert not DTLSCookies().verify(addr, base, cookie)  # another server secret
    with pytest.raises(ValueError):
        DTLSCookies(length=33)
    with pytest.raises(ValueError):
        DTLSCookies(length=4)


def test_secret_rotation_and_expiry() -> None:
    clock = FakeClock()
    s = CookieSecrets(period=timedelta(seconds=30), clock=clock)
    c = DTLSCookies(s)
    addr, hello = address_octets(PEER), parse_client_hello(hello_bytes())
    first = s.current()
    cookie = c.mint(addr, hello)
    clock.advance(29)
    assert s.current() == first and s.accepted() == (first,) and c.verify(addr, hello, cookie)
    clock.advance(2)  # 31 s: rotated, the first secret is the previous one
    assert s.current() != first and s.accepted()[1] == first and s.generation == 1
    assert c.verify(addr, hello, cookie) and c.mint(addr, hello) != cookie
    clock.advance(30)  # 61 s: the first secret is gone
    assert first not in s.accepted() and not c.verify(addr, hello, cookie)
    # two periods unseen: the previous secret is dropped as well
    mid = c.mint(addr, hello)
    clock.advance(65)
    assert s.accepted() == (s.current(),) and not c.verify(addr, hello, mid)
    # a clock stepping back keeps the secrets
    now = s.current()
    clock.advance(-1000)
    assert s.current() == now
    s.rotate()
    assert s.accepted()[1] == now and s.current() != now
    with pytest.raises(ValueError):
        CookieSecrets(period=timedelta(0))


def test_secrets_never_in_repr() -> None:
    s = CookieSecrets()
    c = DTLSCookies(s)
    v = HelloVerifier(TLSContext(server_cfg()), c)
    for text in (repr(s), repr(c), repr(v)):
        assert s.current().hex() not in text and repr(s.current()) not in text
    assert len(s.current()) == 32 and s.current() != CookieSecrets().current()


# -- level 2: HelloVerifier with our client engine, in memory ---------------------------------------


def test_verifier_psk_handshake_in_memory() -> None:
    verifier = HelloVerifier(TLSContext(server_cfg()))
    client, ch1 = first_hello()
    r1 = verifier.receive(ch1, PEER)
    assert r1.outcome is ListenOutcome.HELLO_VERIFY and r1.engine is None and len(r1.replies) == 1
    assert len(r1.replies[0]) < len(ch1)  # no amplification
    assert parse_hello_verify_request(r1.replies[0])[1] == verifier.cookies.mint(address_octets(PEER),
                                                                                  parse_client_hello(ch1))
    listening = verifier._engine
    client.receive_data(r1.replies[0])
    (ch2,) = client.datagrams_to_send()
    r2 = verifier.receive(ch2, PEER)
    assert r2.outcome is ListenOutcome.ACCEPTED and r2.replies == [] and r2.engine is listening
    server = r2.engine
    assert server is not None and verifier._engine is None  # the next ClientHello gets a fresh engine
    server.do_handshake()
    pump(client, server)
    assert client.export_keying_material(LABEL) == server.export_keying_material(LABEL)
    assert server.psk_identity == ID.encode() and server.cipher_name == "PSK-AES128-CCM8"
    assert verifier.stats == {ListenOutcome.HELLO_VERIFY: 1, ListenOutcome.ACCEPTED: 1}


def test_verifier_certificate_handshake_in_memory() -> None:
    pki: PKI = make_pki()
    scfg = TLSConfig(Role.SERVER, Transport.DTLS, credentials=pki.creds(pki.leaf("mn-cse.example")),
                     trust_anchors=[pki.root.cert], mtu=400)
    ccfg = TLSConfig(Role.CLIENT, Transport.DTLS, credentials=pki.creds(pki.leaf("asn.example")),
                     trust_anchors=[pki.root.cert], mtu=400)
    verifier = HelloVerifier(TLSContext(scfg))
    client, ch1 = first_hello(ccfg)
    (hvr,) = verifier.receive(ch1, PEER).replies
    client.receive_data(hvr)
    (ch2,) = client.datagrams_to_send()
    server = verifier.receive(ch2, PEER).engine
    assert server is not None
    server.do_handshake()
    pump(client, server)
    assert client.export_keying_material(LABEL) == server.export_keying_material(LABEL)
    assert server.peer_certificate_chain()[0].subject.rfc4514_string() == "CN=asn.example"


def test_verifier_rejections_keep_nothing() -> None:
    clock = FakeClock()
    verifier = HelloVerifier(TLSContext(server_cfg()), DTLSCookies(CookieSecrets(clock=clock)))
    client, ch1 = first_hello()
    (hvr,) = verifier.receive(ch1, PEER).replies
    client.receive_data(hvr)
    (ch2,) = client.datagrams_to_send()
    cookie = parse_client_hello(ch2).cookie
    listening = verifier._engine
    bad = {
        "forged": with_cookie(ch2, os.urandom(16)),
        "garbled": with_cookie(ch2, bytes([cookie[0] ^ 0x80]) + cookie[1:]),
        "truncated": with_cookie(ch2, cookie[:15]),
        "extended": with_cookie(ch2, cookie + b"\x00"),
        "max-length": with_cookie(ch2, os.urandom(255)),
    }
    for name, dgram in bad.items():
        r = verifier.receive(dgram, PEER)
        assert r.outcome is ListenOutcome.COOKIE_REJECTED and r.engine is None, name
        (again,) = r.replies
        assert parse_hello_verify_request(again)[1] == cookie and len(again) < len(dgram), name
    for other in (("127.0.0.1", 40001), ("127.0.0.2", 40000)):
        r = verifier.receive(ch2, other)
        assert r.outcome is ListenOutcome.COOKIE_REJECTED and r.engine is None
        assert parse_hello_verify_request(r.replies[0])[1] != cookie
    # not a ClientHello: no answer at all
    for junk in (b"", b"\x17\xfe\xfd" + bytes(30), ch2[:40], hvr, ch2 + b"\x00"):
        r = verifier.receive(junk, PEER)
        assert r.outcome is ListenOutcome.DROPPED and r.replies == [] and r.engine is None
    assert verifier._engine is listening  # one listening engine throughout, owned by no peer
    assert "dtls_cookie_oracle" not in listening.callback_record.extra
    clock.advance(61)  # cookie minted two periods ago: expired
    r = verifier.receive(ch2, PEER)
    assert r.outcome is ListenOutcome.COOKIE_REJECTED and parse_hello_verify_request(r.replies[0])[1] != cookie
    # a ClientHello with a (valid) cookie that answers no HelloVerifyRequest (message_seq 0): dropped
    fresh, c1 = first_hello()
    fresh.receive_data(verifier.receive(c1, PEER).replies[0])
    (c2,) = fresh.datagrams_to_send()
    seq0 = c2[:17] + b"\x00\x00" + c2[19:]
    assert parse_client_hello(seq0).message_seq == 0 and parse_client_hello(seq0).cookie
    r = verifier.receive(seq0, PEER)
    assert r.outcome is ListenOutcome.DROPPED and r.replies == [] and r.engine is None
    # while the genuine answer under the current secret gets through
    r = verifier.receive(c2, PEER)
    assert r.outcome is ListenOutcome.ACCEPTED and r.engine is not None
    r.engine.do_handshake()
    pump(fresh, r.engine)
    assert fresh.export_keying_material(LABEL) == r.engine.export_keying_material(LABEL)


def test_oracle_failure_is_contained() -> None:
    class Broken:
        def generate(self) -> bytes:
            raise RuntimeError("boom")

        def verify(self, cookie: bytes) -> bool:
            raise RuntimeError("boom")

    class TooLong:
        def generate(self) -> bytes:
            return b"x" * 256

        def verify(self, cookie: bytes) -> bool:
            return True

    _, ch1 = first_hello()
    for oracle in (Broken(), TooLong()):
        engine = TLSEngine(server_cfg())
        assert engine.dtls_listen(ch1, oracle) is False
        assert engine.datagrams_to_send() == []
    engine = TLSEngine(server_cfg())
    assert engine.dtls_listen(with_cookie(ch1, b"\x01" * 16), Broken()) is False  # verify raised: not accepted
    # no stale OpenSSL error is left behind to break the next handshake on this thread
    verifier = HelloVerifier(TLSContext(server_cfg()))
    client, ch = first_hello()
    client.receive_data(verifier.receive(ch, PEER).replies[0])
    srv = verifier.receive(client.datagrams_to_send()[0], PEER).engine
    assert srv is not None
    srv.do_handshake()
    pump(client, srv)


def test_listen_and_verifier_need_a_dtls_server() -> None:
    class Yes:
        def generate(self) -> bytes:
            return b"c" * 16

        def verify(self, cookie: bytes) -> bool:
            return True

    with pytest.raises(TLSError, match="dtls_listen"):
        TLSEngine(client_cfg()).dtls_listen(b"x", Yes())
    with pytest.raises(TLSError, match="dtls_listen"):
        TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, s: KEY)).dtls_listen(b"x", Yes())
    engine = TLSEngine(server_cfg())
    client, ch1 = first_hello()
    assert engine.dtls_listen(ch1, Yes()) is False
    (hvr,) = engine.datagrams_to_send()
    assert parse_hello_verify_request(hvr)[1] == b"c" * 16
    client.receive_data(hvr)
    assert engine.dtls_listen(client.datagrams_to_send()[0], Yes()) is True
    engine.do_handshake()
    assert engine.datagrams_to_send()  # the server flight for the accepted ClientHello
    with pytest.raises(TLSError, match="dtls_listen"):  # an engine that started its handshake is a peer's
        engine.dtls_listen(ch1, Yes())
    with pytest.raises(ValueError):
        HelloVerifier(TLSContext(client_cfg()))
    with pytest.raises(ValueError):
        HelloVerifier(TLSContext(TLSConfig(Role.SERVER, psk_lookup=lambda i, s: KEY)))


# -- level 3: the asyncio DTLS server over real UDP ------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo_export(session: DTLSSession) -> None:
    while data := await session.recv():
        session.send(data + session.engine.export_keying_material(LABEL))


class RawPeer:
    """A connected UDP socket on 127.0.0.1 driven through the event loop."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", port))
        self.addr = self.sock.getsockname()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65535), timeout)
        except asyncio.TimeoutError:
            return None

    async def exchange(self, data: bytes, quiet: float = 0.3) -> list[bytes]:
        """Send one datagram and collect every answer until ``quiet`` seconds pass without one."""
        await self.send(data)
        out = []
        first = await self.recv()
        while first is not None:
            out.append(first)
            first = await self.recv(quiet)
        return out

    def close(self) -> None:
        self.sock.close()


def test_raw_client_hello_gets_one_small_hello_verify_request_and_no_session() -> None:
    async def main() -> None:
        server = await start_dtls_server(echo_export, "127.0.0.1", 0, server_cfg())
        peer = RawPeer(server.sockname[1])
        try:
            client, ch1 = first_hello()
            replies = await peer.exchange(ch1)
            assert len(replies) == 1  # one HelloVerifyRequest, no flight, no retransmission timer
            assert len(replies[0]) < len(ch1)
            _, cookie = parse_hello_verify_request(replies[0])
            assert len(cookie) == 16
            assert server.sessions == {} and peer.addr not in server.sessions
            assert server.hello_verifier is not None
            assert server.hello_verifier.stats == {ListenOutcome.HELLO_VERIFY: 1}
            # the same ClientHello again: the same cookie (stateless, same secret), still nothing held
            assert [parse_hello_verify_request(d)[1] for d in await peer.exchange(ch1)] == [cookie]
            assert server.sessions == {}
            # and a minimal hand-built ClientHello (the worst case for amplification) is answered smaller too
            tiny = hello_bytes()
            (hvr,) = await peer.exchange(tiny)
            assert len(hvr) < len(tiny) and server.sessions == {}
        finally:
            peer.close()
            server.close()

    run(main())


def test_bad_cookies_over_udp_get_no_session_then_the_real_one_completes() -> None:
    clock = FakeClock()

    async def main() -> None:
        server = await start_dtls_server(echo_export, "127.0.0.1", 0, server_cfg(),
                                         cookies=DTLSCookies(CookieSecrets(clock=clock)))
        peer, other = RawPeer(server.sockname[1]), RawPeer(server.sockname[1])
        try:
            client, ch1 = first_hello()
            (hvr,) = await peer.exchange(ch1)
            client.receive_data(hvr)
            (ch2,) = client.datagrams_to_send()
            cookie = parse_client_hello(ch2).cookie
            tampered = [with_cookie(ch2, os.urandom(16)), with_cookie(ch2, cookie[:-1] + bytes([cookie[-1] ^ 1])),
                        with_cookie(ch2, cookie[:8]), with_cookie(ch2, b"")]
            for dgram in tampered:
                (answer,) = await peer.exchange(dgram)
                assert parse_hello_verify_request(answer)[1] == cookie and len(answer) < len(dgram)
                assert server.sessions == {}
            # the valid cookie from another port of the same host
            (answer,) = await other.exchange(ch2)
            assert parse_hello_verify_request(answer)[1] != cookie
            assert server.sessions == {}
            # garbage from a stranger: silence
            assert await other.exchange(b"\x17\xfe\xfd" + bytes(40)) == []
            assert server.hello_verifier is not None
            assert server.hello_verifier.stats[ListenOutcome.COOKIE_REJECTED] == 4
            assert server.hello_verifier.stats[ListenOutcome.HELLO_VERIFY] == 2  # ch1, empty cookie
            assert server.hello_verifier.stats[ListenOutcome.DROPPED] == 1
            # the genuine CH2 from the genuine port: a session, a full handshake over raw UDP
            await peer.send(ch2)
            while not client.established:
                data = await peer.recv()
                assert data is not None, "server flight missing"
                client.receive_data(data)
                for d in client.datagrams_to_send():
                    await peer.send(d)
            assert list(server.sessions) == [peer.addr]
            client.send_application_data(b"ping")
            for d in client.datagrams_to_send():
                await peer.send(d)
            reply = await peer.recv()
            assert reply is not None
            client.receive_data(reply)
            assert client.receive_application_data() == b"ping" + client.export_keying_material(LABEL)
            # an expired secret: the cookie no longer opens a session for the other port's peer either
            client2, c1 = first_hello()
            (h,) = await other.exchange(c1)
            client2.receive_data(h)
            (c2,) = client2.datagrams_to_send()
            clock.advance(61)
            (answer,) = await other.exchange(c2)
            assert parse_hello_verify_request(answer)[1] != parse_client_hello(c2).cookie
            assert other.addr not in server.sessions
        finally:
            peer.close()
            other.close()
            server.close()

    run(main())


def test_our_client_completes_and_exports_equal_keys() -> None:
    async def main() -> None:
        server = await start_dtls_server(echo_export, "127.0.0.1", 0, server_cfg())
        try:
            s = await open_dtls_connection(*server.sockname, client_cfg(), timeout=5)
            s.send(b"x")
            reply = await s.recv(5)
            assert reply == b"x" + s.engine.export_keying_material(LABEL)
            assert server.hello_verifier is not None
            assert server.hello_verifier.stats == {ListenOutcome.HELLO_VERIFY: 1, ListenOutcome.ACCEPTED: 1}
            s.close()
        finally:
            server.close()

    run(main())


def test_cookie_exchange_can_be_turned_off() -> None:
    async def main() -> None:
        server = await start_dtls_server(echo_export, "127.0.0.1", 0, server_cfg(), cookie_exchange=False)
        peer = RawPeer(server.sockname[1])
        try:
            assert server.hello_verifier is None
            _, ch1 = first_hello()
            replies = await peer.exchange(ch1)
            assert list(server.sessions) == [peer.addr]  # the old behaviour: state at once
            assert replies and replies[0][0] == 22 and replies[0][13] == 2  # a ServerHello flight at once
            s = await open_dtls_connection(*server.sockname, client_cfg(), timeout=5)
            s.send(b"y")
            assert await s.recv(5) == b"y" + s.engine.export_keying_material(LABEL)
            s.close()
        finally:
            peer.close()
            server.close()

    run(main())


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
def test_openssl_s_client_through_the_cookie_exchange() -> None:
    exported: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(session: DTLSSession) -> None:
        exported.put_nowait(session.engine.export_keying_material(LABEL, 48))
        await session.recv()

    async def main() -> None:
        server: DTLSServer = await start_dtls_server(handler, "127.0.0.1", 0, server_cfg())
        port = server.sockname[1]
        cmd = (f"sleep 5 | exec {OPENSSL} s_client -dtls1_2 -connect 127.0.0.1:{port} -psk 123456 -psk_identity {ID} "
               f"-cipher PSK-AES128-CCM8:@SECLEVEL=0 -keymatexport {LABEL} -keymatexportlen 48")
        proc = Proc(["/bin/sh", "-c", cmd])
        try:
            ours = await asyncio.wait_for(exported.get(), 15)
            for _ in range(200):
                if "Keying material: " in proc.text and "\n" in proc.text.split("Keying material: ")[1]:
                    break
                await asyncio.sleep(0.05)
            theirs = keying_material(proc.text)
            assert ours == theirs
            assert server.hello_verifier is not None
            assert server.hello_verifier.stats[ListenOutcome.HELLO_VERIFY] == 1
            assert server.hello_verifier.stats[ListenOutcome.ACCEPTED] == 1
        finally:
            proc.kill()
            server.close()

    run(main())

