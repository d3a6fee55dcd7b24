"""``m2msec tls server|client`` as real processes talking to each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _tlshelp import PKI, Proc, make_pki

from m2msec.tls import profiles

ID = "test@onem2m.com"


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


def fields(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out.setdefault(k, []).append(v)
    return out


def session(server_args: list[str], client_args: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]], int]:
    labels = ["--export-label", profiles.EXPORTER_BOOTSTRAP, "--export-label", profiles.EXPORTER_CONNECTION]
    server = Proc([sys.executable, "-m", "m2msec.tls.cli", "server", "--once", "--timeout", "15", *labels, *server_args])
    try:
        port = server.wait_for(r"listening: 127\.0\.0\.1:(\d+)").group(1)
        client = subprocess.run([sys.executable, "-m", "m2msec.tls.cli", "client", "--port", port, *labels,
                                 *client_args], capture_output=True, text=True, timeout=20)
        server.wait(15)
    finally:
        server.kill()
    return fields(server.text), fields(client.stdout), client.returncode


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
@pytest.mark.parametrize(("server_psk", "client_psk"), [
    (["--psk-hex", "123456"], ["--psk-hex", "123456"]),
    (["--psk-text", "123456"], ["--psk-text", "123456"]),
    (["--psk-text", "123456"], ["--psk-hex", "313233343536"]),  # the same 6 octets
], ids=["hex", "text", "text=hex"])
def test_cli_psk_session(dtls: bool, server_psk: list[str], client_psk: list[str]) -> None:
    extra = ["--dtls"] if dtls else []
    srv, cli, rc = session(["--psk-identity", ID, *server_psk, *extra],
                           ["--psk-identity", ID, *client_psk, "--sni", "mef.example.com", "--send", "hello", *extra])
    assert rc == 0, cli
    assert srv["key"] == cli["key"] and srv["key_id"] == cli["key_id"] and len(set(cli["key"])) == 2
    assert all(len(k) == 64 for k in cli["key"]) and all(len(k) == 32 for k in cli["key_id"])
    assert cli["received"] == ["hello"] and srv["received"] == ["hello"]
    assert srv["sni"] == ["mef.example.com"] and srv["psk_identity"] == [ID]
    assert cli["cipher"] == (["PSK-AES128-CCM8"] if dtls else ["PSK-AES128-CBC-SHA256"])


def test_cli_psk_mismatch_hex_vs_text() -> None:
    srv, cli, rc = session(["--psk-identity", ID, "--psk-text", "123456"], ["--psk-identity", ID, "--psk-hex", "123456"])
    assert rc == 1 and cli["error"] == ["PSK_MISMATCH"] and srv["error"] == ["PSK_MISMATCH"]


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
def test_cli_certificates(pki: PKI, tmp_path: Path, dtls: bool) -> None:
    sk, sc, ca = pki.write(tmp_path, "server", pki.leaf("in-cse.example"))
    ck, cc, _ = pki.write(tmp_path, "client", pki.leaf("ae.example"))
    extra = ["--dtls"] if dtls else []
    srv, cli, rc = session(["--key", str(sk), "--cert", str(sc), "--ca", str(ca),
                            "--peer-id", "ae.example", "--peer-flavour", "fqdn", *extra],
                           ["--key", str(ck), "--cert", str(cc), "--ca", str(ca),
                            "--peer-id", "in-cse.example", "--peer-flavour", "fqdn", *extra])
    assert rc == 0, cli
    assert srv["key"] == cli["key"] and srv["peer_subject"] == ["CN=ae.example"]
    assert cli["peer_subject"] == ["CN=in-cse.example"]
    # the client refuses a server that is not the expected peer
    srv, cli, rc = session(["--key", str(sk), "--cert", str(sc), "--ca", str(ca), *extra],
                           ["--key", str(ck), "--cert", str(cc), "--ca", str(ca),
                            "--peer-id", "other.example", "--peer-flavour", "fqdn", *extra])
    assert rc == 1 and cli["error"] == ["PEER_REJECTED"] and cli["reason"] == ["IDENTIFIER_MISMATCH"]


def test_cli_usage_errors() -> None:
    r = subprocess.run([sys.executable, "-m", "m2msec.tls.cli", "client", "--port", "1", "--psk-hex", "zz",
                        "--psk-identity", ID], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "hexadecimal" in r.stderr
    r = subprocess.run([sys.executable, "-m", "m2msec.tls.cli", "client", "--port", "1"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 2
