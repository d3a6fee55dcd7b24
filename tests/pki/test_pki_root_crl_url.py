"""``m2msec pki init-ca --root-crl-url``: the intermediate names the root's CRL as its distribution
point (RFC 5280 4.2.1.13), next to ``--crl-url`` for the leaves; refused without an intermediate."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from m2msec.pki import CertificateFlavour as F
from m2msec.pki import distribution_points
from m2msec.pki.ca import DevCA
from m2msec.pki.cli import app

ENV = {"M2MSEC_CA_PASSPHRASE": "s3cret-dev-passphrase"}
SP = "m2m.example.com"


def test_init_ca_root_crl_url_goes_into_the_intermediate(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    r = CliRunner().invoke(app, ["init-ca", str(d), "--name", "Dev", "--permit-uri", SP, "--intermediate",
                                 "--crl-url", "http://pki.test:8080/crl/intermediate.crl",
                                 "--root-crl-url", "http://pki.test:8080/crl/root.crl"], env=ENV)
    assert r.exit_code == 0, r.output
    inter = x509.load_pem_x509_certificate((d / "intermediate.crt.pem").read_bytes())
    root = x509.load_pem_x509_certificate((d / "root.crt.pem").read_bytes())
    assert distribution_points(inter) == ["http://pki.test:8080/crl/root.crl"]
    assert distribution_points(root) == []
    ca = DevCA.load(d, ENV["M2MSEC_CA_PASSPHRASE"].encode())
    assert ca.intermediate_cert == inter
    leaf = ca.issue(F.AE_ID,
                    [f"//{SP}/id-in/Cx"], now=root.not_valid_before_utc)
    assert distribution_points(leaf.certificate) == ["http://pki.test:8080/crl/intermediate.crl"]


def test_init_ca_root_crl_url_without_intermediate_is_refused(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["init-ca", str(tmp_path / "ca"), "--name", "Dev", "--permit-uri", SP,
                                 "--root-crl-url", "http://pki.test/crl/root.crl"], env=ENV)
    assert r.exit_code != 0 and "intermediate" in r.output
    assert not (tmp_path / "ca" / "ca.json").exists()
