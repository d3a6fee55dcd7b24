"""ESCertKE against the system ``openssl`` CLI (TS-0003 8.7.2.2 C, 10.3.1).

The four ESCertKE Messages are plain TLS 1.2 flights, so an ``openssl s_server`` /
``s_client`` is a valid Terminating / Initiating End-Point once a small bridge relays the
flights between its socket and our sans-I/O end-point; both sides must export the same
``EXPORTER-oneM2M-ESCertKE`` value.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from _escertke_support import INI_ID, PKI, initiator_info, terminator_info  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tls"))
from _tlshelp import OPENSSL, Proc, keying_material, openssl_server  # noqa: E402

from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from m2msec.escertke import InitiatingEndPoint, TerminatingEndPoint, classify  # noqa: E402
from m2msec.escertke.messages import CHANGE_CIPHER_SPEC, HANDSHAKE, split_records  # noqa: E402
from m2msec.keys import LABEL_ESCERTKE  # noqa: E402

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
EXPORT = ["-keymatexport", LABEL_ESCERTKE, "-keymatexportlen", "48"]


def _handshake_types(records: list[tuple[int, bytes]]) -> list[int]:
    data = b"".join(f for t, f in records if t == HANDSHAKE)
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos + 1 : pos + 4], "big")
        if pos + 4 + n > len(data):
            break
        out.append(data[pos])
        pos += 4 + n
    return out


def _complete(buf: bytes, message: int) -> bool:
    records = split_records(buf)
    if records is None:
        return False
    if message in (3, 4):  # ... ChangeCipherSpec, Finished (encrypted)
        types = [t for t, _ in records]
        return CHANGE_CIPHER_SPEC in types and types.index(CHANGE_CIPHER_SPEC) < len(types) - 1
    pre = [(t, f) for t, f in records if t == HANDSHAKE]
    return (1 if message == 1 else 14) in _handshake_types(pre)


def read_flight(sock: socket.socket, message: int) -> bytes:
    buf = b""
    while not _complete(buf, message):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"peer closed before completing Message {message}: {buf[:64].hex()}")
        buf += chunk
    return buf


def write_pem(tmp: Path, stem: str, creds, key_pem: bytes) -> tuple[Path, Path]:
    key, cert = tmp / f"{stem}.key", tmp / f"{stem}.pem"
    key.write_bytes(key_pem)
    cert.write_bytes(creds.certificate.public_bytes(Encoding.PEM))
    (tmp / f"{stem}-chain.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in creds.chain))
    return key, cert


def test_our_initiator_vs_openssl_s_server(pki: PKI, clock, tmp_path: Path) -> None:
    key, cert = write_pem(tmp_path, "ter", pki.ter, pki.ter_key_pem)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.trust_anchor.public_bytes(Encoding.PEM))
    args = ["-tls1_2", "-cert", str(cert), "-cert_chain", str(tmp_path / "ter-chain.pem"), "-key", str(key), "-Verify", "1", "-CAfile", str(ca),
            "-verify_return_error", "-cipher", "ECDHE-ECDSA-AES128-SHA256", *EXPORT]
    ini = InitiatingEndPoint(pki.ini, clock=clock)
    proc = ini.initiate(terminator_info(pki))
    with openssl_server(args) as (server, port), socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(proc.message_1())
        m2 = read_flight(sock, 2)
        assert classify(m2) == 2
        sock.sendall(proc.receive_message_2(m2))
        res = proc.receive_message_4(read_flight(sock, 4))
        theirs = keying_material(server.wait_for(r"Keying material: [0-9A-F]+").string)
    assert theirs == res.key_id + res.key  # pairwiseE2EKeyID = 16 MSB, pairwiseE2EKey = 32 LSB
    assert res.peer is not None and res.peer.identifier.endswith("/id-in/Cae-ter")


def test_openssl_s_client_vs_our_terminator(pki: PKI, clock, tmp_path: Path) -> None:
    key, cert = write_pem(tmp_path, "ini", pki.ini, pki.ini_key_pem)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.trust_anchor.public_bytes(Encoding.PEM))
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock)
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(10)
        port = lsock.getsockname()[1]
        cmd = (f"sleep 5 | exec {OPENSSL} s_client -connect 127.0.0.1:{port} -tls1_2 -cert {cert} -key {key} "
               f"-cert_chain {tmp_path / 'ini-chain.pem'} -CAfile {ca} -verify_return_error -cipher ECDHE-ECDSA-AES128-SHA256 " + " ".join(EXPORT))
        client = Proc(["/bin/sh", "-c", cmd])
        try:
            conn, _ = lsock.accept()
            with conn:
                conn.settimeout(10)
                conn.sendall(ter.handle(INI_ID, read_flight(conn, 1)))
                conn.sendall(ter.handle(INI_ID, read_flight(conn, 3)))
                theirs = keying_material(client.wait_for(r"Keying material: [0-9A-F]+").string)
        finally:
            client.kill()
    res = ter.keys.for_peer(INI_ID)
    assert res is not None and theirs == res.key_id + res.key
    assert res.peer is not None and res.peer.identifier.endswith("/id-in/Cae-ini")


def test_openssl_s_client_with_untrusted_certificate_is_refused(pki: PKI, clock, tmp_path: Path) -> None:
    from m2msec.escertke import ESCertKEError

    key, cert = write_pem(tmp_path, "ter-as-ini", pki.ter, pki.ter_key_pem)  # valid chain, wrong identifier
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.trust_anchor.public_bytes(Encoding.PEM))
    ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock)
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(10)
        port = lsock.getsockname()[1]
        cmd = (f"sleep 5 | exec {OPENSSL} s_client -connect 127.0.0.1:{port} -tls1_2 -cert {cert} -key {key} "
               f"-cert_chain {tmp_path / 'ter-as-ini-chain.pem'} -CAfile {ca} -cipher ECDHE-ECDSA-AES128-SHA256")
        client = Proc(["/bin/sh", "-c", cmd])
        try:
            conn, _ = lsock.accept()
            with conn:
                conn.settimeout(10)
                conn.sendall(ter.handle(INI_ID, read_flight(conn, 1)))
                with pytest.raises(ESCertKEError) as ei:
                    ter.handle(INI_ID, read_flight(conn, 3))
        finally:
            client.kill()
    assert "IDENTIFIER_MISMATCH" in str(ei.value) and len(ter.keys) == 0

