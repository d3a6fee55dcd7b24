"""``m2msec tls server|client`` in certificate mode with m2msec.pki verification (TS-0003 8.1.2.5),
as real processes with DevCA certificates, and against ``openssl s_client``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _saefhelp import AE_ABS, IN_NAME, NOW, World, make_world

from m2msec.pki import CertificateFlavour as F

OPENSSL = shutil.which("openssl")
CLI = [sys.executable, "-m", "m2msec.tls.cli"]
LABEL = ["--export-label", "EXPORTER-oneM2M-ESCertKE"]


@pytest.fixture(scope="module")
def w() -> World:
    return make_world()


def fields(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out.setdefault(k, []).append(v)
    return out


def with_server(server_args: list[str], peer: list[str]) -> tuple[dict[str, list[str]], str, int]:
    """Start ``m2msec tls server --once``, run ``peer`` (``{port}`` substituted); (server fields, peer output, rc)."""
    server = subprocess.Popen([*CLI, "server", "--once", "--timeout", "15", *LABEL, *server_args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("listening: 127.0.0.1:"), first + server.stdout.read()
        port = first.strip().rsplit(":", 1)[1]
        peer_run = subprocess.run([a.replace("{port}", port) for a in peer], capture_output=True, text=True,
                                  timeout=20, stdin=subprocess.DEVNULL)
        rest, _ = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    return fields(rest), peer_run.stdout + peer_run.stderr, peer_run.returncode


def files(w: World, tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for stem, issued in (("in", w.in_cse), ("ae", w.ae), ("expired", w.ae_expired),
                         ("evil", w.evil.issue(F.AE_ID, [AE_ABS], now=NOW))):
        k, c, a = w.write(tmp, stem, issued)
        out[f"{stem}.key"], out[f"{stem}.cert"], out[f"{stem}.chain"], out["ca"] = k, c, tmp / f"{stem}.chain.pem", a
    return out


def server_args(f: dict[str, Path], *extra: str) -> list[str]:
    return ["--key", str(f["in.key"]), "--cert", str(f["in.cert"]), "--ca", str(f["ca"]),
            "--peer-id", AE_ABS, "--peer-flavour", "ae-id", *extra]


def client_args(f: dict[str, Path], who: str = "ae", peer_id: str = IN_NAME, flavour: str = "cse-id") -> list[str]:
    return [*CLI, "client", "--port", "{port}", *LABEL, "--key", str(f[f"{who}.key"]),
            "--cert", str(f[f"{who}.cert"]), "--ca", str(f["ca"]), "--peer-id", peer_id, "--peer-flavour", flavour,
            "--sni", IN_NAME]


@pytest.mark.parametrize("dtls", [False, True], ids=["tls", "dtls"])
def test_cli_pki_session(w: World, tmp_path: Path, dtls: bool) -> None:
    f = files(w, tmp_path)
    extra = ["--dtls"] if dtls else []
    srv, out, rc = with_server(server_args(f, *extra), [*client_args(f), *extra])
    cli = fields(out)
    assert rc == 0, out
    assert srv["peer_id"] == [AE_ABS] and srv["peer_flavour"] == ["ae-id"]
    assert cli["peer_id"] == [IN_NAME] and cli["peer_flavour"] == ["cse-id"]
    assert srv["key"] == cli["key"] and srv["key_id"] == cli["key_id"]


@pytest.mark.parametrize(("who", "peer_id", "flavour", "rejector", "reason"), [
    ("ae", "other.m2m.example.com", "cse-id", "client", "IDENTIFIER_MISMATCH"),
    ("ae", AE_ABS, "ae-id", "client", "WRONG_FLAVOUR"),  # the server presents a CSE-ID certificate
    ("expired", IN_NAME, "cse-id", "server", "EXPIRED"),
    ("evil", IN_NAME, "cse-id", "server", "UNTRUSTED_ROOT"),
])
def test_cli_pki_rejections(w: World, tmp_path: Path, who: str, peer_id: str, flavour: str, rejector: str,
                            reason: str) -> None:
    f = files(w, tmp_path)
    srv, out, rc = with_server(server_args(f), client_args(f, who, peer_id, flavour))
    cli = fields(out)
    assert rc == 1, out
    rej, other = (cli, srv) if rejector == "client" else (srv, cli)
    assert rej["error"] == ["PEER_REJECTED"] and rej["reason"] == [reason]
    assert other["error"] == ["BAD_CERTIFICATE"] and "reason" not in other
    assert "key" not in srv and "key" not in cli


def test_cli_flag_rules(w: World, tmp_path: Path) -> None:
    f = files(w, tmp_path)
    base = [*CLI, "client", "--port", "1", "--key", str(f["ae.key"]), "--cert", str(f["ae.cert"]), "--ca", str(f["ca"])]
    r = subprocess.run([*base, "--peer-id", IN_NAME], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "--peer-flavour" in r.stderr
    r = subprocess.run([*base, "--peer-id", IN_NAME, "--peer-flavour", "cse"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2 and "cse-id" in r.stderr
    r = subprocess.run([*CLI, "client", "--port", "1", "--psk-identity", "a@b.example", "--psk-hex", "00",
                        "--peer-id", IN_NAME, "--peer-flavour", "cse-id"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "certificate mode" in r.stderr


@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
@pytest.mark.parametrize(("who", "expect"), [("ae", "ok"), ("expired", "EXPIRED"), ("evil", "UNTRUSTED_ROOT")])
def test_openssl_s_client_against_cli_server(w: World, tmp_path: Path, who: str, expect: str) -> None:
    f = files(w, tmp_path)
    assert OPENSSL is not None
    srv, out, _ = with_server(server_args(f), [
        OPENSSL, "s_client", "-connect", "127.0.0.1:{port}", "-tls1_2", "-cert", str(f[f"{who}.cert"]),
        "-key", str(f[f"{who}.key"]), "-cert_chain", str(f[f"{who}.chain"]), "-CAfile", str(f["ca"]),
        "-servername", IN_NAME, "-verify_return_error", "-keymatexport", "EXPORTER-oneM2M-ESCertKE",
        "-keymatexportlen", "48"])
    if expect == "ok":
        assert srv["peer_id"] == [AE_ABS] and srv["cipher"] == ["ECDHE-ECDSA-AES128-SHA256"]
        theirs = out.split("Keying material: ", 1)[1].split()[0]
        assert bytes.fromhex(theirs) == bytes.fromhex(srv["key_id"][0] + srv["key"][0])
        assert "Verify return code: 0 (ok)" in out  # openssl accepted our DevCA CSE-ID certificate
    else:
        assert srv["error"] == ["PEER_REJECTED"] and srv["reason"] == [expect]
        alert = "certificate expired" if expect == "EXPIRED" else "unknown ca"
        assert alert in out.lower()
