"""``m2msec pki`` sub-app through typer's CliRunner (real files, real openssl check)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from _pki_support import AE, CSE, DEVICE, MEF, NODE, SP
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import build_csr, public_key_identifier
from m2msec.pki.cli import app

ENV = {"M2MSEC_CA_PASSPHRASE": "s3cret-dev-passphrase"}
runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return runner.invoke(app, list(args), env=ENV if env is None else env, input=input)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "ca"
    r = run("init-ca", str(d), "--name", "CLI SP", "--permit-dns", SP, "--permit-uri", SP,
            "--permit-uri", "urn:gsma:imei:", "--permit-device", "0.2.481.1/100", "--intermediate")
    assert r.exit_code == 0, r.output
    assert "root:" in r.output and "intermediate:" in r.output
    return d


def test_init_ca_files(ca_dir: Path) -> None:
    for f in ("root.key.pem", "intermediate.key.pem"):
        assert stat.S_IMODE(os.stat(ca_dir / f).st_mode) == 0o600
        assert b"ENCRYPTED" in (ca_dir / f).read_bytes()
    root = x509.load_pem_x509_certificate((ca_dir / "root.crt.pem").read_bytes())
    assert x509.DNSName(SP) in root.extensions.get_extension_for_class(x509.NameConstraints).value.permitted_subtrees
    r = run("init-ca", str(ca_dir), "--name", "again")
    assert r.exit_code == 1 and "already holds a CA" in r.output


@pytest.mark.parametrize(
    ("flavour", "ident", "san_line", "id_line"),
    [
        ("cse-id", CSE, f"san: DNS:{CSE}", f"cse-id: {CSE}"),
        ("fqdn", MEF, f"san: DNS:{MEF}", f"fqdn: {MEF}"),
        ("ae-id", AE, f"san: URI:https:{AE}", f"ae-id: {AE}"),
        ("node-id", NODE, f"san: URI:{NODE}", f"node-id: {NODE}"),
        ("device", DEVICE, "san: otherName:0.2.481.1;RELATIVE-OID:100.3030.10011", f"device: {DEVICE}"),
    ],
)
def test_issue_and_show(ca_dir: Path, tmp_path: Path, flavour: str, ident: str, san_line: str, id_line: str) -> None:
    out = tmp_path / "leaf"
    r = run("issue", str(ca_dir), "--flavour", flavour, "--id", ident, "--out", str(out))
    assert r.exit_code == 0, r.output
    key_path = Path(f"{out}.key.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    chain = x509.load_pem_x509_certificates(Path(f"{out}.chain.pem").read_bytes())
    assert len(chain) == 2 and chain[0].public_key() == key.public_key()
    r = run("show", f"{out}.crt.pem")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert san_line in lines and id_line in lines
    assert f"public_key_identifier: {public_key_identifier(key.public_key())}" in lines
    fp = chain[0].fingerprint(hashes.SHA256()).hex(":").upper()
    assert f"sha256_fingerprint: {fp}" in lines
    assert any(line.startswith("issuer: ") and "CLI SP Issuing CA" in line for line in lines)
    assert any(line.startswith("not_after: ") for line in lines)
    assert all(": " in line for line in lines)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
def test_issue_from_csr_and_openssl_verify(ca_dir: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr_path = tmp_path / "req.csr"
    csr_path.write_bytes(build_csr(key, F.CSE_ID, [CSE]).public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "fromcsr"
    r = run("issue", str(ca_dir), "--flavour", "cse-id", "--id", CSE, "--out", str(out), "--csr", str(csr_path))
    assert r.exit_code == 0, r.output
    assert not Path(f"{out}.key.pem").exists()
    cert = x509.load_pem_x509_certificate(Path(f"{out}.crt.pem").read_bytes())
    assert cert.public_key() == key.public_key()
    v = subprocess.run(["openssl", "verify", "-CAfile", str(ca_dir / "root.crt.pem"), "-untrusted",
                        str(ca_dir / "intermediate.crt.pem"), f"{out}.crt.pem"], capture_output=True, text=True,
                       timeout=20)
    assert v.returncode == 0, v.stdout + v.stderr


def test_issue_refusals(ca_dir: Path, tmp_path: Path) -> None:
    r = run("issue", str(ca_dir), "--flavour", "cse-id", "--id", "cse.other.org", "--out", str(tmp_path / "x"))
    assert r.exit_code == 1 and "may not issue" in r.output and not Path(f"{tmp_path}/x.crt.pem").exists()
    r = run("issue", str(ca_dir), "--flavour", "cse-id", "--id", CSE, "--out", str(tmp_path / "y"),
            env={"M2MSEC_CA_PASSPHRASE": "wrong"})
    assert r.exit_code == 1 and "wrong passphrase" in r.output
    bad = tmp_path / "bad.csr"
    bad.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    r = run("issue", str(ca_dir), "--flavour", "cse-id", "--id", CSE, "--out", str(tmp_path / "z"), "--csr", str(bad))
    assert r.exit_code == 1 and "not a certificate signing request" in r.output
    r = run("issue", str(ca_dir), "--flavour", "raw", "--id", "x", "--out", str(tmp_path / "w"))
    assert r.exit_code == 1
    r = run("show", str(tmp_path / "missing.pem"))
    assert r.exit_code == 1 and "cannot read certificate" in r.output


def test_passphrase_prompt(tmp_path: Path) -> None:
    r = run("init-ca", str(tmp_path / "p"), "--name", "Prompted", "--permit-dns", SP, env={},
            input="typed-pass\n")
    assert r.exit_code == 0, r.output
    assert "typed-pass" not in r.output
    r = run("issue", str(tmp_path / "p"), "--flavour", "cse-id", "--id", CSE, "--out", str(tmp_path / "o"),
            env={"M2MSEC_CA_PASSPHRASE": "typed-pass"})
    assert r.exit_code == 0, r.output
