"""PSKIdentityPeek (RFC 4279 2, TS-0003 10.2.2, 8.2.2.3): the psk_identity read from the client's
raw TLS 1.2 bytes - known hand-built records, and the bytes of real handshakes between two
sans-I/O engines (PSK: the identity; certificate: none); DTLSPSKIdentityPeek the same from
DTLS 1.2 datagrams (RFC 6347 4.1, 4.2.2)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
from m2msec.tls.engine import CertCredentials, PSKCredentials, Role, TLSConfig, TLSContext, TLSEngine
from m2msec.tls.pkiverify import pki_tls_kwargs
from m2msec.tls.profiles import Transport
from m2msec.tls.pskpeek import DTLSPSKIdentityPeek, PSKIdentityPeek


def _record(ctype: int, payload: bytes) -> bytes:
    return bytes([ctype, 3, 3]) + len(payload).to_bytes(2, "big") + payload


def _hs(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


IDENT = b"00112233445566778899aabbccddeeff@maf.example.com"
CKE = _hs(16, len(IDENT).to_bytes(2, "big") + IDENT)  # PSK ClientKeyExchange: the identity only
HELLO = _hs(1, b"\x03\x03" + bytes(40))


def test_identity_from_one_record() -> None:
    peek = PSKIdentityPeek()
    assert peek.feed(_record(22, HELLO)) is None and not peek.done
    assert peek.feed(_record(22, CKE) + _record(20, b"\x01")) == IDENT
    assert peek.done and peek.identity == IDENT
    assert peek.feed(_record(22, CKE)) is None  # once only


def test_identity_split_across_records_and_reads() -> None:
    """A handshake message may span records (RFC 5246 6.2.1) and a record several reads."""
    data = _record(22, HELLO + CKE[:5]) + _record(22, CKE[5:])
    peek = PSKIdentityPeek()
    got = [peek.feed(data[i:i + 3]) for i in range(0, len(data), 3)]
    assert [g for g in got if g is not None] == [IDENT]


def test_ecdhe_psk_identity_comes_first() -> None:
    body = len(IDENT).to_bytes(2, "big") + IDENT + b"\x41\x04" + bytes(64)  # then the ECDH point (RFC 5489 2)
    assert PSKIdentityPeek().feed(_record(22, _hs(16, body))) == IDENT


@pytest.mark.parametrize(("data", "why"), [
    (_record(22, _hs(11, b"\x00\x00\x00")) + _record(22, CKE), "client Certificate: a certificate handshake"),
    (_record(20, b"\x01") + _record(22, CKE), "ChangeCipherSpec before any CKE"),
    (_record(21, b"\x02\x28"), "alert"),
    (_record(22, _hs(16, b"\x00\x40abc")), "identity longer than the message"),
    (_record(22, _hs(16, b"\x00")), "truncated length"),
])
def test_no_identity(data: bytes, why: str) -> None:
    peek = PSKIdentityPeek()
    assert peek.feed(data) is None, why
    assert peek.done and peek.identity is None


def test_gives_up_after_max_bytes() -> None:
    peek = PSKIdentityPeek(max_bytes=100)
    assert peek.feed(bytes([22, 3, 3, 0xFF, 0xFF]) + bytes(200)) is None
    assert peek.done


def _handshake_bytes(client: TLSEngine, server: TLSEngine) -> bytes:
    """Run the handshake in memory; return every byte the client sent."""
    sent = bytearray()
    client.do_handshake()
    for _ in range(30):
        moved = False
        d = client.data_to_send()
        if d:
            sent += d
            server.receive_data(d)
            moved = True
        d = server.data_to_send()
        if d:
            client.receive_data(d)
            moved = True
        if not moved:
            break
    assert client.established and server.established
    return bytes(sent)


def test_identity_of_a_real_psk_handshake() -> None:
    kid, key = "ae7@sp.example.com", os.urandom(32)
    seen: list[bytes] = []

    def lookup(identity: bytes, _sni: str | None) -> bytes | None:
        seen.append(identity)
        return key if identity == kid.encode() else None

    client = TLSEngine(TLSContext(TLSConfig(role=Role.CLIENT, psk=PSKCredentials(kid.encode(), key))))
    server = TLSEngine(TLSContext(TLSConfig(role=Role.SERVER, psk_lookup=lookup)))
    data = _handshake_bytes(client, server)
    peek = PSKIdentityPeek()
    found = [x for x in (peek.feed(data[i:i + 7]) for i in range(0, len(data), 7)) if x is not None]
    assert found == [kid.encode()] == seen


def test_no_identity_in_a_real_certificate_handshake() -> None:
    now = datetime.now(UTC)
    ca = DevCA.create("peek CA", now=now)
    srv, cli = (ca.issue(CertificateFlavour.FQDN, [n], now=now) for n in ("srv.example.com", "cli.example.com"))

    def clock() -> datetime:
        return datetime.now(UTC)

    def cfg(role: Role, me: object, peer: str) -> TLSConfig:
        creds = CertCredentials(me.private_key, me.certificate, tuple(me.chain))  # type: ignore[attr-defined]
        return TLSConfig(role=role, credentials=creds, server_name="srv.example.com" if role is Role.CLIENT else None,
                         **pki_tls_kwargs(PeerCertInfo(CertificateFlavour.FQDN, peer), (ca.trust_anchor,), clock))

    data = _handshake_bytes(TLSEngine(TLSContext(cfg(Role.CLIENT, cli, "srv.example.com"))),
                            TLSEngine(TLSContext(cfg(Role.SERVER, srv, "cli.example.com"))))
    peek = PSKIdentityPeek()
    assert peek.feed(data) is None and peek.done and peek.identity is None


# --------------------------------------------------------------------------- DTLS 1.2 (RFC 6347 4.1, 4.2.2)

def _drecord(ctype: int, payload: bytes, epoch: int = 0, seq: int = 0) -> bytes:
    return (bytes([ctype, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
            + len(payload).to_bytes(2, "big") + payload)


def _dfrag(kind: int, body: bytes, *, msg_seq: int = 2, offset: int = 0, length: int | None = None) -> bytes:
    total = len(body) if length is None else length
    return (bytes([kind]) + total.to_bytes(3, "big") + msg_seq.to_bytes(2, "big") + offset.to_bytes(3, "big")
            + len(body).to_bytes(3, "big") + body)


CKE_BODY = len(IDENT).to_bytes(2, "big") + IDENT


def test_dtls_identity_from_one_datagram() -> None:
    """The client's flight in one datagram: CKE, ChangeCipherSpec, the encrypted Finished (epoch 1)."""
    dgram = (_drecord(22, _dfrag(16, CKE_BODY), seq=2) + _drecord(20, b"\x01", seq=3)
             + _drecord(22, os.urandom(40), epoch=1))
    peek = DTLSPSKIdentityPeek()
    assert peek.feed(_drecord(22, _dfrag(1, bytes(40), msg_seq=1), seq=1)) is None and not peek.done  # a ClientHello
    assert peek.feed(dgram) == IDENT
    assert peek.done and peek.identity == IDENT
    assert peek.feed(dgram) is None  # once only


def test_dtls_identity_fragmented_across_datagrams() -> None:
    """A CKE in three fragments, one per datagram; an overlapping retransmitted fragment is joined."""
    a, b, c = CKE_BODY[:1], CKE_BODY[1:20], CKE_BODY[20:]
    n = len(CKE_BODY)
    peek = DTLSPSKIdentityPeek()
    assert peek.feed(_drecord(22, _dfrag(16, a, length=n))) is None
    assert peek.feed(_drecord(22, _dfrag(16, CKE_BODY[:10], length=n))) is None  # overlaps: adds bytes 1-9
    assert peek.feed(_drecord(22, _dfrag(16, b[9:], offset=10, length=n))) is None
    assert not peek.done
    assert peek.feed(_drecord(22, _dfrag(16, c, offset=20, length=n))) == IDENT


def test_dtls_out_of_order_fragment_is_skipped() -> None:
    n = len(CKE_BODY)
    peek = DTLSPSKIdentityPeek()
    assert peek.feed(_drecord(22, _dfrag(16, CKE_BODY[20:], offset=20, length=n))) is None  # before offset 0
    assert peek.feed(_drecord(22, _dfrag(16, CKE_BODY[:20], length=n))) is None and not peek.done
    assert peek.feed(_drecord(22, _dfrag(16, CKE_BODY[20:], offset=20, length=n))) == IDENT  # retransmitted


@pytest.mark.parametrize(("dgram", "why"), [
    (_drecord(22, _dfrag(11, b"\x00\x00\x00")) + _drecord(22, _dfrag(16, CKE_BODY)), "client Certificate"),
    (_drecord(20, b"\x01") + _drecord(22, _dfrag(16, CKE_BODY)), "ChangeCipherSpec before any CKE"),
    (_drecord(21, b"\x02\x28"), "alert"),
    (_drecord(22, _dfrag(16, b"\x00\x40abc")), "identity longer than the message"),
    (_drecord(22, _dfrag(16, b"\x00")), "truncated length"),
])
def test_dtls_no_identity(dgram: bytes, why: str) -> None:
    peek = DTLSPSKIdentityPeek()
    assert peek.feed(dgram) is None, why
    assert peek.done and peek.identity is None


@pytest.mark.parametrize(("dgram", "why"), [
    (_drecord(22, _dfrag(16, CKE_BODY))[:-5], "record shorter than its length"),
    (_drecord(22, _dfrag(16, CKE_BODY)[:-5]), "fragment shorter than its fragment_length"),
    (_drecord(22, _dfrag(16, CKE_BODY, offset=5, length=10)), "fragment beyond the message length"),
    (_drecord(22, _dfrag(16, CKE_BODY), epoch=1), "encrypted"),
    (b"\x16\xfe\xfd", "shorter than a record header"),
])
def test_dtls_garbled_input_finds_nothing_and_keeps_looking(dgram: bytes, why: str) -> None:
    """Garbage is the engine's to refuse: the peek finds nothing in it and reads the next datagram."""
    peek = DTLSPSKIdentityPeek()
    assert peek.feed(dgram) is None and not peek.done, why
    assert peek.feed(_drecord(22, _dfrag(16, CKE_BODY))) == IDENT


def test_dtls_gives_up_after_max_bytes() -> None:
    peek = DTLSPSKIdentityPeek(max_bytes=100)
    assert peek.feed(_drecord(22, _dfrag(1, bytes(120), msg_seq=1))) is None
    assert peek.done


def _dtls_handshake_datagrams(client: TLSEngine, server: TLSEngine) -> list[bytes]:
    """Run a DTLS handshake in memory; return every datagram the client sent."""
    sent: list[bytes] = []
    client.do_handshake()
    for _ in range(30):
        moved = False
        for d in client.datagrams_to_send():
            sent.append(d)
            server.receive_data(d)
            moved = True
        for d in server.datagrams_to_send():
            client.receive_data(d)
            moved = True
        if not moved:
            break
    assert client.established and server.established
    return sent


def test_dtls_identity_of_a_real_psk_handshake() -> None:
    """(A real PSK ClientKeyExchange fits one datagram, even with a 128-byte identity and a 256-byte
    MTU: fragments are covered by the hand-built datagrams above.)"""
    kid = "00112233445566778899aabbccddeeff" * 3 + "@maf.example.com"
    key = os.urandom(32)
    seen: list[bytes] = []

    def lookup(identity: bytes, _sni: str | None) -> bytes | None:
        seen.append(identity)
        return key if identity == kid.encode() else None

    client = TLSEngine(TLSContext(TLSConfig(role=Role.CLIENT, transport=Transport.DTLS,
                                            psk=PSKCredentials(kid.encode(), key))))
    server = TLSEngine(TLSContext(TLSConfig(role=Role.SERVER, transport=Transport.DTLS, psk_lookup=lookup)))
    dgrams = _dtls_handshake_datagrams(client, server)
    peek = DTLSPSKIdentityPeek()
    found = [x for x in map(peek.feed, dgrams) if x is not None]
    assert found == [kid.encode()] == seen
