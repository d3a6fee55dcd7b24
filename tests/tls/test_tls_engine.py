"""TLSEngine in-process over memory BIOs: every mode, exporter agreement, every rejection path."""

from __future__ import annotations

import hashlib

import pytest
from _tlshelp import PKI, flush_alert, make_pki, pump
from cryptography import x509
from OpenSSL import SSL

from m2msec.tls import (
    CertCredentials,
    PSKCredentials,
    Role,
    TLSConfig,
    TLSContext,
    TLSEngine,
    TLSError,
    TLSFailureReason,
    TLSHandshakeError,
    TLSState,
    Transport,
)
from m2msec.tls import profiles
from m2msec.tls.psk import install_client_psk, install_server_psk

KPSA_ID = b"test@onem2m.com"
KPSA_HEX = bytes.fromhex("123456")
LABELS = [profiles.EXPORTER_BOOTSTRAP, profiles.EXPORTER_CONNECTION, profiles.EXPORTER_ESCERTKE]


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


def psk_pair(transport: Transport, *, identity: bytes = KPSA_ID, key: bytes = KPSA_HEX,
             store: dict[bytes, bytes] | None = None, sni: str | None = None) -> tuple[TLSEngine, TLSEngine]:
    store = {KPSA_ID: KPSA_HEX} if store is None else store
    c = TLSEngine(TLSConfig(Role.CLIENT, transport, psk=PSKCredentials(identity, key), server_name=sni))
    s = TLSEngine(TLSConfig(Role.SERVER, transport, psk_lookup=lambda i, n: store.get(i)))
    return c, s


def cert_pair(pki: PKI, transport: Transport, *, client_hook=None, server_hook=None, mtu: int = 1200,
              client_name: str = "client.example", server_name: str = "server.example") -> tuple[TLSEngine, TLSEngine]:
    c = TLSEngine(TLSConfig(Role.CLIENT, transport, credentials=pki.creds(pki.leaf(client_name)),
                            trust_anchors=[pki.root.cert], verify_peer=client_hook, server_name=server_name, mtu=mtu))
    s = TLSEngine(TLSConfig(Role.SERVER, transport, credentials=pki.creds(pki.leaf(server_name)),
                            trust_anchors=[pki.root.cert], verify_peer=server_hook, mtu=mtu))
    return c, s


def assert_exports_agree(c: TLSEngine, s: TLSEngine) -> None:
    seen = set()
    for label in LABELS:
        a, b = c.export_keying_material(label), s.export_keying_material(label)
        assert a == b and len(a) == 48
        seen.add(a)
        key, key_id = c.export_onem2m_key(label)
        assert (key, key_id) == (a[16:], a[:16])
    assert len(seen) == len(LABELS)  # labels separate the outputs
    assert c.export_keying_material("EXPORTER-x", 48, b"ctx") != c.export_keying_material("EXPORTER-x", 48)


# -- successful handshakes ------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(Transport))
def test_psk_handshake_and_export(transport: Transport) -> None:
    c, s = psk_pair(transport, sni="mef.example.com")
    pump(c, s)
    suite = profiles.suites_for(transport, [profiles.AuthMode.PSK])[0]
    for e in (c, s):
        assert e.state is TLSState.ESTABLISHED
        assert e.cipher_name == suite.openssl_name and e.cipher_suite is suite
        assert e.psk_identity == KPSA_ID
        assert e.peer_certificate_chain() == []
    assert c.protocol_version == s.protocol_version == ("DTLSv1.2" if transport is Transport.DTLS else "TLSv1.2")
    assert s.sni == "mef.example.com"
    assert_exports_agree(c, s)
    c.send_application_data(b"ping")
    flush_alert(c, s)
    assert s.receive_application_data() == b"ping"
    s.send_application_data(b"pong" * 1000)
    flush_alert(s, c)
    assert c.receive_application_data() == b"pong" * 1000


@pytest.mark.parametrize("transport", list(Transport))
def test_certificate_handshake_mutual_with_hooks(pki: PKI, transport: Transport) -> None:
    seen: dict[str, list[x509.Certificate]] = {}
    c, s = cert_pair(pki, transport, client_hook=lambda ch: seen.setdefault("client", ch),
                     server_hook=lambda ch: seen.setdefault("server", ch))
    pump(c, s)
    suite = profiles.suites_for(transport, [profiles.AuthMode.CERTIFICATE])[0]
    assert c.cipher_name == s.cipher_name == suite.openssl_name
    # the hooks got the full chain leaf -> intermediate -> anchor
    assert [x.subject for x in seen["client"]] == [
        s.context.config.credentials.certificate.subject, pki.inter.cert.subject, pki.root.cert.subject]
    assert seen["server"][0] == c.context.config.credentials.certificate
    # peer chains as sent, leaf first, on both sides
    assert c.peer_certificate_chain() == [s.context.config.credentials.certificate, pki.inter.cert]
    assert s.peer_certificate_chain() == [c.context.config.credentials.certificate, pki.inter.cert]
    assert s.verified_chain() == seen["server"]
    assert c.psk_identity is None
    assert_exports_agree(c, s)


def test_psk_as_text_and_as_hex_are_different_keys() -> None:
    """TD_M2M_SE_01: Kpsa "123456" as 3 octets or as 6 ASCII characters; both work, they differ."""
    text = PSKCredentials.from_text("test@onem2m.com", "123456")
    hexa = PSKCredentials.from_hex("test@onem2m.com", "123456")
    assert (text.key, hexa.key) == (b"123456", b"\x12\x34\x56")
    for cred in (text, hexa):
        c = TLSEngine(TLSConfig(Role.CLIENT, psk=cred))
        s = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, n, k=cred.key: k if i == KPSA_ID else None))
        pump(c, s)
        assert c.cipher_name == "PSK-AES128-CBC-SHA256"
    # a client with the text form against a server holding the hex form fails
    c = TLSEngine(TLSConfig(Role.CLIENT, psk=text))
    s = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, n: hexa.key))
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.PSK_MISMATCH


def test_dtls_datagrams_respect_mtu_and_timer(pki: PKI) -> None:
    c, s = cert_pair(pki, Transport.DTLS, mtu=300)
    c.do_handshake()
    first = c.datagrams_to_send()
    assert first and all(len(d) <= 300 for d in first)
    assert c.get_timeout() is not None and 0 < c.get_timeout() <= 1.5
    # drive the rest while checking every datagram of the certificate flights fits the MTU
    for d in first:
        s.receive_data(d)
    sizes = []
    for _ in range(10):
        for a, b in ((s, c), (c, s)):
            for d in a.datagrams_to_send():
                sizes.append(len(d))
                b.receive_data(d)
        if c.established and s.established:
            break
    assert c.established and s.established
    assert max(sizes) <= 300 and len(sizes) > 4  # certificate flights were fragmented
    big = b"x" * 2000
    c.send_application_data(big)
    dgrams = c.datagrams_to_send()
    assert len(dgrams) > 1 and all(len(d) <= 300 for d in dgrams)
    for d in dgrams:
        s.receive_data(d)
    assert s.receive_application_data() == big


def test_dtls_retransmits_lost_flight() -> None:
    c, s = psk_pair(Transport.DTLS)
    c.do_handshake()
    lost = c.datagrams_to_send()  # ClientHello lost
    assert lost
    assert c.get_timeout() is not None
    # force expiry: OpenSSL's timer uses the wall clock; handle_timeout only acts once due
    import time

    time.sleep(c.get_timeout() + 0.05)
    assert c.handle_timeout() is True
    again = c.datagrams_to_send()
    assert again and again[0][13:] != b""  # a retransmitted ClientHello
    for d in again:
        s.receive_data(d)
    pump(c, s)
    assert c.established and s.established


def test_tls_engine_has_no_dtls_timer() -> None:
    c, _ = psk_pair(Transport.TLS)
    assert c.get_timeout() is None and c.handle_timeout() is False


# -- SNI ---------------------------------------------------------------------------------------


def test_sni_selects_psk() -> None:
    keys = {("mef-a.example", KPSA_ID): b"A" * 16, ("mef-b.example", KPSA_ID): b"B" * 16}
    calls: list[tuple[bytes, str | None]] = []

    def lookup(identity: bytes, sni: str | None) -> bytes | None:
        calls.append((identity, sni))
        return keys.get((sni or "", identity))

    server_ctx = TLSContext(TLSConfig(Role.SERVER, psk_lookup=lookup))
    for name, key in (("mef-a.example", b"A" * 16), ("mef-b.example", b"B" * 16)):
        c = TLSEngine(TLSConfig(Role.CLIENT, psk=PSKCredentials(KPSA_ID, key), server_name=name))
        s = TLSEngine(server_ctx)
        pump(c, s)
        assert s.sni == name
    assert calls == [(KPSA_ID, "mef-a.example"), (KPSA_ID, "mef-b.example")]
    # the wrong SNI for this key -> B's key is chosen -> mismatch
    c = TLSEngine(TLSConfig(Role.CLIENT, psk=PSKCredentials(KPSA_ID, b"A" * 16), server_name="mef-b.example"))
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, TLSEngine(server_ctx))
    assert ei.value.reason is TLSFailureReason.PSK_MISMATCH


def test_sni_selects_certificate(pki: PKI) -> None:
    a, b = pki.leaf("cse-a.example"), pki.leaf("cse-b.example")
    creds = {"cse-a.example": pki.creds(a), "cse-b.example": pki.creds(b)}
    server_ctx = TLSContext(TLSConfig(Role.SERVER, select_credentials=creds.get, trust_anchors=[pki.root.cert]))
    client_creds = pki.creds(pki.leaf("ae.example"))
    for name, leaf in (("cse-a.example", a), ("cse-b.example", b), ("cse-a.example", a)):
        c = TLSEngine(TLSConfig(Role.CLIENT, credentials=client_creds, trust_anchors=[pki.root.cert],
                                server_name=name))
        s = TLSEngine(server_ctx)
        pump(c, s)
        assert c.peer_certificate_chain()[0] == leaf.cert
        assert s.sni == name
    # unknown name, no default credentials -> unrecognized_name
    c = TLSEngine(TLSConfig(Role.CLIENT, credentials=client_creds, trust_anchors=[pki.root.cert],
                            server_name="other.example"))
    s = TLSEngine(server_ctx)
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.UNRECOGNIZED_NAME
    assert s.failure is not None and s.failure.reason is TLSFailureReason.UNRECOGNIZED_NAME


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(Transport))
def test_unknown_psk_identity(transport: Transport) -> None:
    c, s = psk_pair(transport, identity=b"stranger@onem2m.com")
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY
    assert s.state is TLSState.FAILED and s.psk_identity == b"stranger@onem2m.com"
    with pytest.raises(TLSHandshakeError) as ec:
        flush_alert(s, c)
    assert ec.value.reason is TLSFailureReason.UNKNOWN_PSK_IDENTITY  # from the peer's alert
    assert c.state is TLSState.FAILED
    with pytest.raises(TLSError):
        s.export_keying_material(profiles.EXPORTER_BOOTSTRAP)


def test_wrong_psk_tls() -> None:
    c, s = psk_pair(Transport.TLS, key=b"123456")
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.PSK_MISMATCH
    with pytest.raises(TLSHandshakeError) as ec:
        flush_alert(s, c)
    assert ec.value.reason is TLSFailureReason.PSK_MISMATCH


def test_wrong_psk_dtls_never_establishes() -> None:
    """DTLS (RFC 6347 4.1.2.7) silently drops records that fail the MAC: no alert, the
    handshake stalls and the adapters report TIMEOUT (see test_tls_aio)."""
    c, s = psk_pair(Transport.DTLS, key=b"123456")
    with pytest.raises(AssertionError, match="stalled"):
        pump(c, s)
    assert c.state is TLSState.HANDSHAKING and s.state is TLSState.HANDSHAKING
    with pytest.raises(TLSError):
        s.export_keying_material(profiles.EXPORTER_BOOTSTRAP)


def test_lookup_exception_never_reaches_c() -> None:
    def lookup(identity: bytes, sni: str | None) -> bytes | None:
        raise RuntimeError("store down")

    c = TLSEngine(TLSConfig(Role.CLIENT, psk=PSKCredentials(KPSA_ID, KPSA_HEX)))
    s = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lookup))
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.INTERNAL_ERROR
    assert isinstance(ei.value.__cause__, RuntimeError)


@pytest.mark.parametrize("transport", list(Transport))
def test_verify_hook_rejection_reaches_caller(pki: PKI, transport: Transport) -> None:
    class WrongPeer(Exception):
        pass

    def reject(chain: list[x509.Certificate]) -> None:
        raise WrongPeer(f"expected CSE-ID /cse-x, got {chain[0].subject.rfc4514_string()}")

    c, s = cert_pair(pki, transport, client_hook=reject)
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.PEER_REJECTED
    assert isinstance(ei.value.__cause__, WrongPeer)
    assert "expected CSE-ID /cse-x" in str(ei.value)
    # the server side of the same handshake hears a bad_certificate alert
    with pytest.raises(TLSHandshakeError) as es:
        flush_alert(c, s)
    assert es.value.reason is TLSFailureReason.BAD_CERTIFICATE

    c, s = cert_pair(pki, transport, server_hook=reject)
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.PEER_REJECTED and s.state is TLSState.FAILED


def test_untrusted_and_expired_certificates(pki: PKI) -> None:
    other = make_pki()
    c = TLSEngine(TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("c.example")),
                            trust_anchors=[other.root.cert]))
    s = TLSEngine(TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("s.example")),
                            trust_anchors=[pki.root.cert]))
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.CERTIFICATE_VERIFY_FAILED
    assert "unable to get local issuer certificate" in ei.value.detail
    with pytest.raises(TLSHandshakeError) as es:
        flush_alert(c, s)
    assert es.value.reason is TLSFailureReason.BAD_CERTIFICATE  # the server hears the client's alert

    c = TLSEngine(TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("c.example", expired=True)),
                            trust_anchors=[pki.root.cert]))
    s = TLSEngine(TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("s.example")),
                            trust_anchors=[pki.root.cert]))
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.CERTIFICATE_VERIFY_FAILED
    assert "expired" in ei.value.detail


# -- peers outside the profile (raw pyOpenSSL contexts play the peer) --------------------------


def _raw_peer(role: Role, *, version: tuple[int, int], ciphers: bytes, psk: bool = True,
              tls13_suites: bytes | None = None) -> tuple[SSL.Connection, list[object]]:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(version[0])
    ctx.set_max_proto_version(version[1])
    ctx.set_cipher_list(ciphers)
    if tls13_suites is not None:
        ctx.set_tls13_ciphersuites(tls13_suites)
    keep: list[object] = []
    if psk:
        keep.append(install_client_psk(ctx, KPSA_ID, KPSA_HEX) if role is Role.CLIENT
                    else install_server_psk(ctx, lambda i, n: KPSA_HEX))
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state() if role is Role.CLIENT else conn.set_accept_state()
    return conn, keep


def _drive_raw_client(raw: SSL.Connection, server: TLSEngine) -> TLSHandshakeError:
    with pytest.raises(TLSHandshakeError) as ei:
        for _ in range(10):
            try:
                raw.do_handshake()
            except SSL.WantReadError:
                pass
            data = raw.bio_read(65536)
            server.receive_data(data)
            back = server.data_to_send()
            if back:
                raw.bio_write(back)
    return ei.value


def test_tls13_only_client_is_refused() -> None:
    raw, _keep = _raw_peer(Role.CLIENT, version=(SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION), ciphers=b"ALL")
    server = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, n: KPSA_HEX))
    assert _drive_raw_client(raw, server).reason is TLSFailureReason.PROTOCOL_VERSION


def test_tls11_only_client_is_refused() -> None:
    raw, _keep = _raw_peer(Role.CLIENT, version=(SSL.TLS1_1_VERSION, SSL.TLS1_1_VERSION),
                           ciphers=b"PSK-AES128-CBC-SHA:@SECLEVEL=0")
    server = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, n: KPSA_HEX))
    assert _drive_raw_client(raw, server).reason is TLSFailureReason.PROTOCOL_VERSION


@pytest.mark.parametrize("suite", [b"PSK-AES256-GCM-SHA384", b"PSK-AES128-CBC-SHA", b"PSK-CHACHA20-POLY1305"])
def test_non_profile_suite_is_refused(suite: bytes) -> None:
    raw, _keep = _raw_peer(Role.CLIENT, version=(SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION), ciphers=suite)
    server = TLSEngine(TLSConfig(Role.SERVER, psk_lookup=lambda i, n: KPSA_HEX))
    assert _drive_raw_client(raw, server).reason is TLSFailureReason.NO_SHARED_CIPHER


def test_client_refuses_tls13_only_server() -> None:
    raw, _keep = _raw_peer(Role.SERVER, version=(SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION), ciphers=b"ALL")
    client = TLSEngine(TLSConfig(Role.CLIENT, psk=PSKCredentials(KPSA_ID, KPSA_HEX)))
    client.do_handshake()
    raw.bio_write(client.data_to_send())
    with pytest.raises(SSL.Error):
        raw.do_handshake()
    with pytest.raises(TLSHandshakeError) as ei:
        client.receive_data(raw.bio_read(65536))
    assert ei.value.reason is TLSFailureReason.PROTOCOL_VERSION


def test_client_offers_only_the_profile() -> None:
    """What our ClientHello offers: TLS 1.2 and exactly the profile suite."""
    client = TLSEngine(TLSConfig(Role.CLIENT, psk=PSKCredentials(KPSA_ID, KPSA_HEX)))
    client.do_handshake()
    hello = client.data_to_send()
    assert hello[0] == 22 and hello[5] == 1  # handshake / client_hello
    body = hello[9:]
    assert body[0:2] == b"\x03\x03"  # client_version TLS 1.2
    sid_len = body[34]
    pos = 35 + sid_len
    n = int.from_bytes(body[pos : pos + 2], "big")
    suites = {int.from_bytes(body[pos + 2 + i : pos + 4 + i], "big") for i in range(0, n, 2)}
    assert suites - {0x00FF} == {0x00AE}  # + the renegotiation SCSV


# -- API hygiene -------------------------------------------------------------------------------


def test_reprs_hide_secrets(pki: PKI) -> None:
    cred = PSKCredentials(KPSA_ID, b"super-secret-psk")
    assert "super-secret" not in repr(cred)
    c, s = psk_pair(Transport.TLS, key=b"super-secret-psk", store={KPSA_ID: b"super-secret-psk"})
    pump(c, s)
    for obj in (c, s, c.context, c.callback_record):
        assert "super-secret" not in repr(obj)
        assert hashlib.sha256(b"super-secret-psk").hexdigest() not in repr(obj)
    leaf = pki.leaf("x.example")
    r = repr(CertCredentials(leaf.key, leaf.cert))
    assert "x.example" in r and "PRIVATE" not in r and "EllipticCurvePrivateKey" not in r


def test_configuration_errors(pki: PKI) -> None:
    with pytest.raises(ValueError):
        TLSContext(TLSConfig(Role.CLIENT))
    with pytest.raises(ValueError):  # mutual auth: a certificate client needs its own credentials
        TLSContext(TLSConfig(Role.CLIENT, trust_anchors=[pki.root.cert]))
    with pytest.raises(ValueError):
        TLSContext(TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("a.example"))))  # no anchors
    with pytest.raises(ValueError):
        PSKCredentials(b"", b"k")
    c, _ = psk_pair(Transport.TLS)
    with pytest.raises(TLSError):
        c.send_application_data(b"too early")
    with pytest.raises(TLSError):
        c.export_keying_material(profiles.EXPORTER_BOOTSTRAP)


def test_server_requires_client_certificate(pki: PKI) -> None:
    """A client without a certificate cannot complete a certificate-mode handshake."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA256")
    raw = SSL.Connection(ctx, None)
    raw.set_connect_state()
    server = TLSEngine(TLSConfig(Role.SERVER, credentials=pki.creds(pki.leaf("s.example")),
                                 trust_anchors=[pki.root.cert]))
    assert _drive_raw_client(raw, server).reason is TLSFailureReason.CERTIFICATE_REQUIRED


def test_close_notify() -> None:
    c, s = psk_pair(Transport.TLS)
    pump(c, s)
    c.close()
    assert c.state is TLSState.CLOSED
    flush_alert(c, s)
    assert s.state is TLSState.CLOSED
    with pytest.raises(TLSError):
        s.send_application_data(b"after close")
