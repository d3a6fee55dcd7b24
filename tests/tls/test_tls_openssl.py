"""Interoperability with the system ``openssl`` CLI (real subprocesses, 127.0.0.1, ephemeral ports).

Our side runs in-process (client) or as ``python -m m2msec.tls.cli`` (server); both directions must
agree with openssl's ``-keymatexport`` output (TS-0003 10.3.1).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from _tlshelp import OPENSSL, PKI, Proc, free_port, keying_material, make_pki, openssl_server

from m2msec.tls import PSKCredentials, Role, TLSConfig, Transport
from m2msec.tls import profiles
from m2msec.tls.aio import open_connection
from m2msec.tls.dtls import open_dtls_connection

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")

ID = "test@onem2m.com"
LABEL = profiles.EXPORTER_BOOTSTRAP
EXPORT = ["-keymatexport", LABEL, "-keymatexportlen", "48"]


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


def our_client_export(port: int, cfg: TLSConfig, dtls: bool = False) -> tuple[bytes, str]:
    async def main() -> tuple[bytes, str]:
        if dtls:
            s = await open_dtls_connection("127.0.0.1", port, cfg, timeout=5)
            out = s.engine.export_keying_material(LABEL), s.engine.cipher_name or ""
            s.close()
            return out
        _, w = await open_connection("127.0.0.1", port, cfg, timeout=5)
        out = w.engine.export_keying_material(LABEL), w.engine.cipher_name or ""
        w.close()
        return out

    return asyncio.run(main())


# TD_M2M_SE_01: Kpsa "123456", KpsaID "test@onem2m.com", TLS_PSK_WITH_AES_128_CBC_SHA256,
# with the PSK read as hex (3 octets) and as text (6 ASCII characters).
@pytest.mark.parametrize("cred", [PSKCredentials.from_hex(ID, "123456"), PSKCredentials.from_text(ID, "123456")],
                         ids=["hex", "text"])
def test_td_m2m_se_01_our_client_vs_openssl_server(cred: PSKCredentials) -> None:
    args = ["-tls1_2", "-psk", cred.key.hex(), "-psk_identity", ID, "-nocert",
            "-cipher", "PSK-AES128-CBC-SHA256", *EXPORT]
    with openssl_server(args) as (proc, port):
        ours, cipher = our_client_export(port, TLSConfig(Role.CLIENT, psk=cred))
        theirs = keying_material(proc.wait_for(r"Keying material: [0-9A-F]+").string)
    assert cipher == "PSK-AES128-CBC-SHA256"
    assert ours == theirs


def test_our_client_vs_openssl_server_certificates(pki: PKI, tmp_path: Path) -> None:
    k, c, a = pki.write(tmp_path, "server", pki.leaf("in-cse.example"))
    args = ["-tls1_2", "-cert", str(c), "-cert_chain", str(tmp_path / "chain.pem"), "-key", str(k),
            "-CAfile", str(a), "-Verify", "1",
            "-verify_return_error", "-cipher", "ECDHE-ECDSA-AES128-SHA256", *EXPORT]
    seen: list[str] = []
    cfg = TLSConfig(Role.CLIENT, credentials=pki.creds(pki.leaf("ae.example")), trust_anchors=[pki.root.cert],
                    verify_peer=lambda ch: seen.append(ch[0].subject.rfc4514_string()), server_name="in-cse.example")
    with openssl_server(args) as (proc, port):
        ours, cipher = our_client_export(port, cfg)
        text = proc.wait_for(r"Keying material: [0-9A-F]+").string
    assert ours == keying_material(text) and cipher == "ECDHE-ECDSA-AES128-SHA256"
    assert seen == ["CN=in-cse.example"]
    assert "CN = ae.example" in text or "CN=ae.example" in text  # openssl saw our client certificate


def test_our_dtls_client_vs_openssl_dtls_server() -> None:
    args = ["-dtls1_2", "-psk", "123456", "-psk_identity", ID, "-nocert",
            "-cipher", "PSK-AES128-CCM8:@SECLEVEL=0", *EXPORT]
    with openssl_server(args, dtls=True) as (proc, port):
        ours, cipher = our_client_export(port, TLSConfig(Role.CLIENT, Transport.DTLS,
                                                         psk=PSKCredentials.from_hex(ID, "123456")), dtls=True)
        theirs = keying_material(proc.wait_for(r"Keying material: [0-9A-F]+").string)
    assert cipher == "PSK-AES128-CCM8" and ours == theirs


# -- openssl s_client against our command-line server ---------------------------------------


def our_server(args: list[str]) -> tuple[Proc, int]:
    proc = Proc([sys.executable, "-m", "m2msec.tls.cli", "server", "--once", "--timeout", "15",
                 "--export-label", LABEL, *args])
    m = proc.wait_for(r"listening: 127\.0\.0\.1:(\d+)")
    return proc, int(m.group(1))


def s_client(port: int, args: list[str], *, hold: float = 3.0) -> Proc:
    cmd = f"sleep {hold} | exec {OPENSSL} s_client -connect 127.0.0.1:{port} " + " ".join(args)
    return Proc(["/bin/sh", "-c", cmd])


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ": "):
            return line[len(name) + 2 :]
    raise AssertionError(f"{name} not in {text}")


@pytest.mark.parametrize("as_text", [False, True], ids=["hex", "text"])
def test_openssl_client_vs_our_server_psk(as_text: bool) -> None:
    psk_args = ["--psk-text", "123456"] if as_text else ["--psk-hex", "123456"]
    hexkey = b"123456".hex() if as_text else "123456"
    server, port = our_server(["--psk-identity", ID, *psk_args])
    client = s_client(port, ["-tls1_2", "-psk", hexkey, "-psk_identity", ID, *EXPORT])
    try:
        theirs = keying_material(client.wait_for(r"Keying material: [0-9A-F]+").string)
        out = server.wait_for(r"key: [0-9a-f]{64}").string
    finally:
        client.kill()
        server.kill()
    assert bytes.fromhex(_field(out, "key_id")) == theirs[:16]
    assert bytes.fromhex(_field(out, "key")) == theirs[16:]
    assert _field(out, "psk_identity") == ID and _field(out, "cipher") == "PSK-AES128-CBC-SHA256"


def test_openssl_client_vs_our_server_certificates(pki: PKI, tmp_path: Path) -> None:
    sk, sc, ca = pki.write(tmp_path, "server", pki.leaf("in-cse.example"))
    ck, cc, _ = pki.write(tmp_path, "client", pki.leaf("ae.example"))
    server, port = our_server(["--key", str(sk), "--cert", str(sc), "--ca", str(ca),
                               "--peer-id", "ae.example", "--peer-flavour", "fqdn"])
    client = s_client(port, ["-tls1_2", "-cert", str(cc), "-cert_chain", str(tmp_path / "chain.pem"), "-key", str(ck),
                             "-CAfile", str(ca), "-verify_return_error",
                             "-servername", "in-cse.example", *EXPORT])
    try:
        theirs = keying_material(client.wait_for(r"Keying material: [0-9A-F]+").string)
        out = server.wait_for(r"key: [0-9a-f]{64}").string
    finally:
        client.kill()
        server.kill()
    assert bytes.fromhex(_field(out, "key_id") + _field(out, "key")) == theirs
    assert _field(out, "peer_subject") == "CN=ae.example" and _field(out, "sni") == "in-cse.example"
    assert _field(out, "cipher") == "ECDHE-ECDSA-AES128-SHA256"


def test_our_server_rejects_wrong_peer_id_from_openssl(pki: PKI, tmp_path: Path) -> None:
    sk, sc, ca = pki.write(tmp_path, "server", pki.leaf("in-cse.example"))
    ck, cc, _ = pki.write(tmp_path, "client", pki.leaf("intruder.example"))
    server, port = our_server(["--key", str(sk), "--cert", str(sc), "--ca", str(ca),
                               "--peer-id", "ae.example", "--peer-flavour", "fqdn"])
    client = s_client(port, ["-tls1_2", "-cert", str(cc), "-cert_chain", str(tmp_path / "chain.pem"),
                             "-key", str(ck), "-CAfile", str(ca)])
    try:
        out = server.wait_for(r"detail: .*").string
        assert server.wait(10) == 1
    finally:
        client.kill()
        server.kill()
    assert _field(out, "error") == "PEER_REJECTED" and "intruder.example" in _field(out, "detail")
    assert _field(out, "reason") == "IDENTIFIER_MISMATCH"


@pytest.mark.parametrize(("flag", "cipher"), [("-tls1_3", None), ("-tls1_1", "PSK-AES128-CBC-SHA:@SECLEVEL=0"),
                                              ("-tls1_2", "PSK-AES256-GCM-SHA384")])
def test_our_server_refuses_openssl_outside_profile(flag: str, cipher: str | None) -> None:
    server, port = our_server(["--psk-identity", ID, "--psk-hex", "123456"])
    args = [flag, "-psk", "123456", "-psk_identity", ID] + (["-cipher", cipher] if cipher else [])
    client = s_client(port, args)
    try:
        out = server.wait_for(r"detail: .*").string
    finally:
        client.kill()
        server.kill()
    expected = "NO_SHARED_CIPHER" if flag == "-tls1_2" else "PROTOCOL_VERSION"
    assert _field(out, "error") == expected


def test_openssl_dtls_client_vs_our_dtls_server() -> None:
    server, port = our_server(["--dtls", "--psk-identity", ID, "--psk-hex", "123456"])
    cmd = (f"sleep 3 | exec {OPENSSL} s_client -dtls1_2 -connect 127.0.0.1:{port} -psk 123456 -psk_identity {ID} "
           f"-cipher PSK-AES128-CCM8:@SECLEVEL=0 " + " ".join(EXPORT))
    client = Proc(["/bin/sh", "-c", cmd])
    try:
        theirs = keying_material(client.wait_for(r"Keying material: [0-9A-F]+").string)
        out = server.wait_for(r"key: [0-9a-f]{64}").string
    finally:
        client.kill()
        server.kill()
    assert bytes.fromhex(_field(out, "key_id") + _field(out, "key")) == theirs
    assert _field(out, "protocol") == "DTLSv1.2" and _field(out, "cipher") == "PSK-AES128-CCM8"


def test_free_port_helper_is_ephemeral() -> None:
    assert free_port() > 1024
