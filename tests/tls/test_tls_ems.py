"""RFC 7627 extended master secret required by the (D)TLS 1.2 engine (``TLSConfig.require_ems``).

Levels: ``hello_has_ems`` against hand-built hello messages; engine pairs in memory (PSK and
certificate, TLS and DTLS, both roles) against a legacy peer built from our own engine with
OpenSSL's ``SSL_OP_NO_EXTENDED_MASTER_SECRET``; real ``openssl s_client``/``s_server`` processes
whose EMS is switched off through an ``OPENSSL_CONF`` ``Options = -ExtendedMasterSecret`` (the
3.0 command line has no ``-no_ems``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from _tlshelp import OPENSSL, PKI, Proc, free_port, keying_material, make_pki, pump
from OpenSSL._util import lib as _lib

from m2msec.tls import (
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
from m2msec.tls.aio import open_connection
from m2msec.tls.dtls import open_dtls_connection
from m2msec.tls.engine import hello_has_ems

SSL_OP_NO_EXTENDED_MASTER_SECRET = 0x1  # ssl.h SSL_OP_BIT(0); not exported by the binding
ID = b"test@onem2m.com"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
LABEL = profiles.EXPORTER_BOOTSTRAP
NO = TLSFailureReason.NO_EXTENDED_MASTER_SECRET


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


# -- hello_has_ems ------------------------------------------------------------------------------

def _exts(*items: tuple[int, bytes]) -> bytes:
    body = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in items)
    return len(body).to_bytes(2, "big") + body


def _hello(kind: int, exts: bytes | None, *, dtls: bool) -> bytes:
    body = (b"\xfe\xfd" if dtls else b"\x03\x03") + bytes(32) + b"\x00"  # version, random, empty session_id
    if kind == 1:
        body += (b"\x00" if dtls else b"") + b"\x00\x02\x00\xae" + b"\x01\x00"  # cookie, suites, compression
    else:
        body += b"\x00\xae\x00"
    body += exts if exts is not None else b""
    n = len(body).to_bytes(3, "big")
    header = bytes([kind]) + n + ((b"\x00\x00" + b"\x00\x00\x00" + n) if dtls else b"")
    return header + body


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
@pytest.mark.parametrize("kind", [1, 2], ids=["ClientHello", "ServerHello"])
def test_hello_has_ems(kind: int, dtls: bool) -> None:
    assert hello_has_ems(_hello(kind, _exts((0xFF01, b"\x00"), (23, b"")), dtls=dtls), dtls=dtls)
    assert hello_has_ems(_hello(kind, _exts((23, b"")), dtls=dtls), dtls=dtls)
    assert not hello_has_ems(_hello(kind, _exts((0xFF01, b"\x00"), (22, b"")), dtls=dtls), dtls=dtls)
    assert not hello_has_ems(_hello(kind, None, dtls=dtls), dtls=dtls)  # no extensions block
    assert not hello_has_ems(_hello(kind, _exts((23, b"x")), dtls=dtls), dtls=dtls)  # RFC 7627 5.1: empty
    good = _hello(kind, _exts((23, b"")), dtls=dtls)
    assert not hello_has_ems(good[:-1], dtls=dtls)  # truncated: extensions length disagrees
    assert not hello_has_ems(good + b"\x00", dtls=dtls)  # trailing octet
    assert not hello_has_ems(good[:20], dtls=dtls)
    assert not hello_has_ems(bytes([3]) + good[1:], dtls=dtls)  # not a hello
    assert not hello_has_ems(good, dtls=not dtls)  # wrong header length: does not parse


# -- engine pairs in memory ---------------------------------------------------------------------

def _legacy(cfg: TLSConfig) -> TLSContext:
    """A peer without RFC 7627: our engine with EMS switched off in OpenSSL (not required either)."""
    ctx = TLSContext(cfg)
    ctx.ssl_context.set_options(SSL_OP_NO_EXTENDED_MASTER_SECRET)
    return ctx


def _configs(mode: str, transport: Transport, pki: PKI, *, client_ems: bool, server_ems: bool,
             client_require: bool = True, server_require: bool = True) -> tuple[TLSEngine, TLSEngine]:
    if mode == "psk":
        c = TLSConfig(Role.CLIENT, transport, psk=PSKCredentials(ID, KEY), require_ems=client_require)
        s = TLSConfig(Role.SERVER, transport, psk_lookup=lambda i, sni: KEY if i == ID else None,
                      require_ems=server_require)
    else:
        c = TLSConfig(Role.CLIENT, transport, credentials=pki.creds(pki.leaf("ae.example")),
                      trust_anchors=[pki.root.cert], server_name="in-cse.example", require_ems=client_require)
        s = TLSConfig(Role.SERVER, transport, credentials=pki.creds(pki.leaf("in-cse.example")),
                      trust_anchors=[pki.root.cert], require_ems=server_require)
    cc = TLSContext(c) if client_ems else _legacy(c)
    sc = TLSContext(s) if server_ems else _legacy(s)
    return TLSEngine(cc), TLSEngine(sc)


def _out(e: TLSEngine) -> list[bytes]:
    return e.datagrams_to_send() if e.transport is Transport.DTLS else [d for d in [e.data_to_send()] if d]


def _alert_record(records: list[bytes], dtls: bool) -> None:
    """Exactly one plaintext record: fatal handshake_failure, epoch 0."""
    assert len(records) == 1
    r = records[0]
    if dtls:
        assert len(r) == 15 and r[0] == 0x15 and r[1:3] == b"\xfe\xfd" and r[3:5] == b"\x00\x00"
        assert r[11:] == b"\x00\x02\x02\x28"
    else:
        assert r == b"\x15\x03\x03\x00\x02\x02\x28"


MODES = [("psk", Transport.TLS), ("psk", Transport.DTLS), ("cert", Transport.TLS), ("cert", Transport.DTLS)]
IDS = ["psk-tls", "psk-dtls", "cert-tls", "cert-dtls"]


@pytest.mark.parametrize(("mode", "transport"), MODES, ids=IDS)
def test_default_handshake_negotiates_ems(mode: str, transport: Transport, pki: PKI) -> None:
    c, s = _configs(mode, transport, pki, client_ems=True, server_ems=True)
    pump(c, s)
    for e in (c, s):
        assert _lib.SSL_get_extms_support(e._ssl) == 1
        assert e.callback_record.extra["peer_ems"] is True
    assert c.export_keying_material(LABEL) == s.export_keying_material(LABEL)


@pytest.mark.parametrize(("mode", "transport"), MODES, ids=IDS)
def test_server_refuses_legacy_client_before_server_hello(mode: str, transport: Transport, pki: PKI) -> None:
    c, s = _configs(mode, transport, pki, client_ems=False, server_ems=True, client_require=False)
    c.do_handshake()
    hello = _out(c)
    with pytest.raises(TLSHandshakeError) as ei:
        for d in hello:
            s.receive_data(d)
    assert ei.value.reason is NO and "client did not offer" in ei.value.detail
    assert s.state is TLSState.FAILED and s.failure is ei.value
    alert = _out(s)
    _alert_record(alert, transport is Transport.DTLS)  # no ServerHello ever left
    with pytest.raises(TLSHandshakeError) as ci:
        c.receive_data(alert[0])
    assert ci.value.reason is TLSFailureReason.PEER_ALERT and "handshake failure" in ci.value.detail
    with pytest.raises(TLSError):
        s.export_keying_material(LABEL)
    with pytest.raises(TLSError):
        s.send_application_data(b"x")
    with pytest.raises(TLSHandshakeError):  # a failed engine stays failed
        s.receive_data(b"\x17\x03\x03\x00\x01x")
    assert s.receive_application_data() == b""


@pytest.mark.parametrize(("mode", "transport"), MODES, ids=IDS)
def test_client_refuses_legacy_server_before_key_exchange(mode: str, transport: Transport, pki: PKI) -> None:
    c, s = _configs(mode, transport, pki, client_ems=True, server_ems=False, server_require=False)
    c.do_handshake()
    for d in _out(c):
        s.receive_data(d)
    flight = _out(s)
    with pytest.raises(TLSHandshakeError) as ei:
        for d in flight:
            c.receive_data(d)
    assert ei.value.reason is NO and "server did not negotiate" in ei.value.detail
    alert = _out(c)
    _alert_record(alert, transport is Transport.DTLS)  # no ClientKeyExchange / Certificate / Finished
    with pytest.raises(TLSHandshakeError) as si:
        s.receive_data(alert[0])
    assert si.value.reason is TLSFailureReason.PEER_ALERT and "handshake failure" in si.value.detail
    assert s.psk_identity is None  # the server never saw a key exchange
    with pytest.raises(TLSError):
        c.export_keying_material(LABEL)


def test_tls_client_refuses_on_server_hello_alone() -> None:
    """ServerHello arriving in its own TCP segment: refused at once, with a synthesised alert."""
    c, s = _configs("psk", Transport.TLS, None, client_ems=True, server_ems=False,  # type: ignore[arg-type]
                    server_require=False)
    c.do_handshake()
    s.receive_data(c.data_to_send())
    flight = s.data_to_send()
    hello_len = 5 + int.from_bytes(flight[3:5], "big")
    c.receive_data(flight[:hello_len - 10])  # not even the whole ServerHello yet
    assert c.state is TLSState.HANDSHAKING
    with pytest.raises(TLSHandshakeError) as ei:
        c.receive_data(flight[hello_len - 10:hello_len])
    assert ei.value.reason is NO
    assert c.data_to_send() == b"\x15\x03\x03\x00\x02\x02\x28"


def _records(datagrams: list[bytes]) -> list[bytes]:
    """Each DTLS record of ``datagrams`` as a datagram of its own."""
    out = []
    for d in datagrams:
        while d:
            n = 13 + int.from_bytes(d[11:13], "big")
            out.append(d[:n])
            d = d[n:]
    return out


def test_dtls_client_waits_for_a_flight_then_refuses(pki: PKI) -> None:
    """DTLS: a ServerHello datagram alone produces no output; refused when the flight is due."""
    c, s = _configs("cert", Transport.DTLS, pki, client_ems=True, server_ems=False, server_require=False)
    c.do_handshake()
    for d in c.datagrams_to_send():
        s.receive_data(d)
    flight = _records(s.datagrams_to_send())
    assert len(flight) > 1 and flight[0][13] == 2  # ServerHello first, alone
    c.receive_data(flight[0])
    assert c.state is TLSState.HANDSHAKING and c.datagrams_to_send() == []
    with pytest.raises(TLSHandshakeError) as ei:
        for d in flight[1:]:
            c.receive_data(d)
    assert ei.value.reason is NO
    _alert_record(c.datagrams_to_send(), True)


def test_dtls_client_timer_refuses_after_legacy_server_hello(pki: PKI) -> None:
    c, s = _configs("cert", Transport.DTLS, pki, client_ems=True, server_ems=False, server_require=False)
    c.do_handshake()
    for d in c.datagrams_to_send():
        s.receive_data(d)
    c.receive_data(_records(s.datagrams_to_send())[0])
    assert c.state is TLSState.HANDSHAKING
    with pytest.raises(TLSHandshakeError) as ei:
        c.handle_timeout()
    assert ei.value.reason is NO and c.state is TLSState.FAILED


@pytest.mark.parametrize(("mode", "transport"), MODES, ids=IDS)
@pytest.mark.parametrize("legacy", ["client", "server"])
def test_require_ems_false_accepts_legacy_peer(mode: str, transport: Transport, legacy: str, pki: PKI) -> None:
    c, s = _configs(mode, transport, pki, client_ems=legacy != "client", server_ems=legacy != "server",
                    client_require=False, server_require=False)
    pump(c, s)
    assert _lib.SSL_get_extms_support(c._ssl) == 0 and _lib.SSL_get_extms_support(s._ssl) == 0
    assert c.export_keying_material(LABEL) == s.export_keying_material(LABEL)
    c.send_application_data(b"ping")
    for d in _out(c):
        s.receive_data(d)
    assert s.receive_application_data() == b"ping"


def test_exporter_refuses_a_session_without_ems() -> None:
    """A completed non-EMS session on an engine that requires EMS cannot export."""
    c, s = _configs("psk", Transport.TLS, None, client_ems=False, server_ems=True,  # type: ignore[arg-type]
                    client_require=False, server_require=False)
    pump(c, s)
    c._require_ems = True  # the guard itself, independent of the handshake-time refusal
    with pytest.raises(TLSError, match="extended master secret"):
        c.export_keying_material(LABEL)
    with pytest.raises(TLSError, match="extended master secret"):
        c.export_onem2m_key(LABEL)


def test_only_our_side_requires_when_asked() -> None:
    """require_ems=False on the server, legacy client: the server accepts (the flag is per side)."""
    c, s = _configs("psk", Transport.DTLS, None, client_ems=False, server_ems=True,  # type: ignore[arg-type]
                    client_require=False, server_require=False)
    pump(c, s)
    assert s.callback_record.extra.get("peer_ems") is None  # no watcher installed without require_ems
    assert c.established and s.established


# -- real openssl processes ---------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
EXPORT = f"-keymatexport {LABEL} -keymatexportlen 48"
PSK_TLS = f"-tls1_2 -psk {KEY.hex()} -psk_identity {ID.decode()} -cipher PSK-AES128-CBC-SHA256"
PSK_DTLS = f"-dtls1_2 -psk {KEY.hex()} -psk_identity {ID.decode()} -cipher PSK-AES128-CCM8:@SECLEVEL=0"


@pytest.fixture(scope="module")
def noems_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ems") / "noems.cnf"
    p.write_text("openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\n"
                 "system_default = sd\n[sd]\nOptions = -ExtendedMasterSecret\n")
    return p


def _s_server(conf: Path | None, args: str, *, dtls: bool) -> tuple[Proc, int]:
    port = free_port(2 if dtls else 1)
    env = f"OPENSSL_CONF={conf} " if conf else ""
    proc = Proc(["/bin/sh", "-c", f"sleep 15 | {env}exec {OPENSSL} s_server -accept 127.0.0.1:{port} {args}"])
    proc.wait_for("ACCEPT")
    return proc, port


def _our_client(port: int, cfg: TLSConfig) -> bytes:
    async def main() -> bytes:
        if cfg.transport is Transport.DTLS:
            s = await open_dtls_connection("127.0.0.1", port, cfg, timeout=5)
            out = s.engine.export_keying_material(LABEL)
            s.close()
            return out
        _, w = await open_connection("127.0.0.1", port, cfg, timeout=5)
        out = w.engine.export_keying_material(LABEL)
        w.close()
        return out

    return asyncio.run(main())


@needs_openssl
@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
def test_our_client_vs_openssl_server_without_ems(dtls: bool, noems_conf: Path) -> None:
    transport = Transport.DTLS if dtls else Transport.TLS
    args = f"-nocert {PSK_DTLS if dtls else PSK_TLS} {EXPORT}"
    proc, port = _s_server(noems_conf, args, dtls=dtls)
    try:
        with pytest.raises(TLSHandshakeError) as ei:
            _our_client(port, TLSConfig(Role.CLIENT, transport, psk=PSKCredentials(ID, KEY)))
        assert ei.value.reason is NO
        if not dtls:  # openssl prints the alert it received (DTLS s_server goes on listening quietly)
            proc.wait_for(r"alert handshake failure")
    finally:
        proc.kill()
    proc, port = _s_server(noems_conf, args, dtls=dtls)
    try:
        ours = _our_client(port, TLSConfig(Role.CLIENT, transport, psk=PSKCredentials(ID, KEY), require_ems=False))
        text = proc.wait_for(r"Keying material: [0-9A-F]+").string
    finally:
        proc.kill()
    assert ours == keying_material(text)


@needs_openssl
def test_our_client_vs_openssl_certificate_server_without_ems(pki: PKI, tmp_path: Path, noems_conf: Path) -> None:
    k, c, a = pki.write(tmp_path, "server", pki.leaf("in-cse.example"))
    args = (f"-tls1_2 -cert {c} -cert_chain {tmp_path / 'chain.pem'} -key {k} -CAfile {a} -Verify 1 "
            f"-cipher ECDHE-ECDSA-AES128-SHA256 {EXPORT}")
    cfg = TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("ae.example")), trust_anchors=[pki.root.cert],
                    server_name="in-cse.example")
    proc, port = _s_server(noems_conf, args, dtls=False)
    try:
        with pytest.raises(TLSHandshakeError) as ei:
            _our_client(port, cfg)
        assert ei.value.reason is NO
        proc.wait_for(r"alert handshake failure")
    finally:
        proc.kill()
    proc, port = _s_server(None, args, dtls=False)  # the same server with EMS: accepted
    try:
        ours = _our_client(port, cfg)
        text = proc.wait_for(r"Keying material: [0-9A-F]+").string
    finally:
        proc.kill()
    assert ours == keying_material(text)


def _our_server(args: list[str]) -> tuple[Proc, int]:
    proc = Proc([sys.executable, "-m", "m2msec.tls.cli", "server", "--once", "--timeout", "15",
                 "--export-label", LABEL, *args])
    return proc, int(proc.wait_for(r"listening: 127\.0\.0\.1:(\d+)").group(1))


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ": "):
            return line[len(name) + 2:]
    raise AssertionError(f"{name} not in {text}")


@needs_openssl
@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
def test_openssl_client_without_ems_vs_our_server(dtls: bool, noems_conf: Path) -> None:
    server, port = _our_server((["--dtls"] if dtls else []) + ["--psk-identity", ID.decode(), "--psk-hex", KEY.hex()])
    client = Proc(["/bin/sh", "-c", f"sleep 3 | OPENSSL_CONF={noems_conf} exec {OPENSSL} s_client "
                   f"-connect 127.0.0.1:{port} {PSK_DTLS if dtls else PSK_TLS}"])
    try:
        out = server.wait_for(r"detail: .*").string
        assert server.wait(10) == 1
        client.wait_for(r"alert handshake failure")
    finally:
        client.kill()
        server.kill()
    assert _field(out, "error") == "NO_EXTENDED_MASTER_SECRET"
    assert "client did not offer" in _field(out, "detail")
    assert "Cipher is PSK" not in client.text  # no session was established on the openssl side


@needs_openssl
def test_openssl_certificate_client_without_ems_vs_our_server(pki: PKI, tmp_path: Path, noems_conf: Path) -> None:
    sk, sc, ca = pki.write(tmp_path, "server", pki.leaf("in-cse.example"))
    ck, cc, _ = pki.write(tmp_path, "client", pki.leaf("ae.example"))
    server, port = _our_server(["--key", str(sk), "--cert", str(sc), "--ca", str(ca),
                                "--peer-id", "ae.example", "--peer-flavour", "fqdn"])
    client = Proc(["/bin/sh", "-c", f"sleep 3 | OPENSSL_CONF={noems_conf} exec {OPENSSL} s_client "
                   f"-connect 127.0.0.1:{port} -tls1_2 -cert {cc} -cert_chain {tmp_path / 'chain.pem'} "
                   f"-key {ck} -CAfile {ca} -servername in-cse.example"])
    try:
        out = server.wait_for(r"detail: .*").string
        assert server.wait(10) == 1
        client.wait_for(r"alert handshake failure")
    finally:
        client.kill()
        server.kill()
    assert _field(out, "error") == "NO_EXTENDED_MASTER_SECRET"


@needs_openssl
def test_cli_allow_no_ems_server_accepts_openssl_client_without_ems(noems_conf: Path) -> None:
    server, port = _our_server(["--allow-no-ems", "--psk-identity", ID.decode(), "--psk-hex", KEY.hex()])
    client = Proc(["/bin/sh", "-c", f"sleep 3 | OPENSSL_CONF={noems_conf} exec {OPENSSL} s_client "
                   f"-connect 127.0.0.1:{port} {PSK_TLS} {EXPORT}"])
    try:
        theirs = keying_material(client.wait_for(r"Keying material: [0-9A-F]+").string)
        out = server.wait_for(r"key: [0-9a-f]{64}").string
        assert "Extended master secret: no" in client.wait_for(r"Extended master secret: \w+").group(0)
    finally:
        client.kill()
        server.kill()
    assert bytes.fromhex(_field(out, "key_id") + _field(out, "key")) == theirs


@needs_openssl
@pytest.mark.parametrize("allow", [False, True], ids=["default", "allow-no-ems"])
def test_cli_client_vs_openssl_server_without_ems(allow: bool, noems_conf: Path) -> None:
    proc, port = _s_server(noems_conf, f"-nocert {PSK_TLS} {EXPORT}", dtls=False)
    client = Proc([sys.executable, "-m", "m2msec.tls.cli", "client", "--port", str(port), "--timeout", "5",
                   "--psk-identity", ID.decode(), "--psk-hex", KEY.hex(), "--export-label", LABEL]
                  + (["--allow-no-ems"] if allow else []))
    try:
        rc = client.wait(20)
        if allow:
            theirs = keying_material(proc.wait_for(r"Keying material: [0-9A-F]+").string)
    finally:
        client.kill()
        proc.kill()
    if allow:
        assert rc == 0
        out = client.text
        assert bytes.fromhex(_field(out, "key_id") + _field(out, "key")) == theirs
    else:
        assert rc != 0 and "NO_EXTENDED_MASTER_SECRET" in client.text
