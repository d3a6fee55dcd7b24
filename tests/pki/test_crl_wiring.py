"""The callers of verify_peer_certificate pass a CRL store and policy through (TS-0003 8.1.2.2).

ESData signer verification, the MAF server/client configurations (and maf.toml), the
MEF's certificate RSPF verifier and the ``m2msec tls`` options; the verdicts
themselves are tested in test_crl.py and tests/saef/test_saef_crl.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization

from _pki_support import CSE, NOW, SP, make_ca
from m2msec.errors import ParseError
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CertificateVerificationError, CRLStore, PeerCertInfo, RevocationPolicy, VerificationReason
from m2msec.tls.engine import CertCredentials, Role

R = VerificationReason
AE = f"//{SP}/CSE1/Cae1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    ca = make_ca("Wiring SP")
    good, bad = ca.issue(F.CSE_ID, [CSE], now=NOW), ca.issue(F.CSE_ID, [CSE], now=NOW)
    bad_ae = ca.issue(F.AE_ID, [AE], now=NOW)
    ca.revoke(bad.certificate, now=NOW)
    ca.revoke(bad_ae.certificate, now=NOW)
    crls = [ca.issue_crl(now=NOW), ca.issue_crl(now=NOW, signer="root")]
    d = tmp_path_factory.mktemp("wiring")
    pem = serialization.Encoding.PEM
    (d / "issuing.crl").write_bytes(crls[0].public_bytes(pem))
    (d / "root.crl").write_bytes(crls[1].public_bytes(serialization.Encoding.DER))
    (d / "ca.pem").write_bytes(ca.trust_anchor.public_bytes(pem))
    return {"ca": ca, "good": good, "bad": bad, "bad_ae": bad_ae, "crls": crls, "dir": d}


def chain(issued: object) -> list:
    return [issued.certificate, *issued.chain]  # type: ignore[attr-defined]


def test_esdata_pki_verifier(pki: dict) -> None:
    from m2msec.esdata.certverify import pki_verifier
    from m2msec.esdata.errors import UntrustedCertificateError

    ca = pki["ca"]
    v = pki_verifier(trust_anchors=[ca.trust_anchor], clock=lambda: NOW, flavour="ae-id", crls=pki["crls"])
    with pytest.raises(UntrustedCertificateError, match="REVOKED"):
        v(chain(pki["bad_ae"]), AE)
    fine = ca.issue(F.AE_ID, [AE], now=NOW)
    v(chain(fine), AE)
    strict = pki_verifier(trust_anchors=[ca.trust_anchor], clock=lambda: NOW, flavour="ae-id",
                          revocation="require")
    with pytest.raises(UntrustedCertificateError, match="REVOCATION_UNKNOWN"):
        strict(chain(fine), AE)
    # the default (no CRLs) keeps the earlier behaviour
    pki_verifier(trust_anchors=[ca.trust_anchor], clock=lambda: NOW, flavour="ae-id")(chain(pki["bad_ae"]), AE)


def test_maf_toml_and_configs(pki: dict, tmp_path: Path) -> None:
    from m2msec.maf.client import MAFClientConfig
    from m2msec.maf.server import load_config

    ca, d = pki["ca"], pki["dir"]
    leaf = ca.issue(F.FQDN, [f"maf.{SP}"], now=NOW)
    pem = serialization.Encoding.PEM
    (tmp_path / "maf.pem").write_bytes(b"".join(c.public_bytes(pem) for c in chain(leaf)))
    (tmp_path / "maf.key").write_bytes(leaf.private_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    base = f'''fqdn = "maf.{SP}"
store = "sqlite:///{tmp_path / 'maf.db'}"
[tls]
cert = "maf.pem"
key = "maf.key"
client_trust_anchors = "{d / 'ca.pem'}"
'''
    (tmp_path / "maf.toml").write_text(base + f'client_crls = ["{d / "issuing.crl"}", "{d / "root.crl"}"]\n'
                                       'revocation = "require"\n')
    cfg = load_config(tmp_path / "maf.toml")
    assert cfg.revocation is RevocationPolicy.REQUIRE and cfg.client_crls is not None and len(cfg.client_crls) == 2
    (tmp_path / "plain.toml").write_text(base)
    plain = load_config(tmp_path / "plain.toml")
    assert plain.client_crls is None and plain.revocation is RevocationPolicy.IF_AVAILABLE
    (tmp_path / "bad.toml").write_text(base + f'client_crls = "{d / "ca.pem"}"\n')
    with pytest.raises(ParseError):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(base + 'revocation = "sometimes"\n')
    with pytest.raises(ParseError):
        load_config(tmp_path / "bad2.toml")
    # the MAF service's client-certificate hook uses them
    from m2msec.maf.server import build_server
    from m2msec.store import KeyEncryptionKey, open_store

    store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", KeyEncryptionKey(os.urandom(32)), clock=lambda: NOW)
    try:
        srv = build_server(cfg, store, clock=lambda: NOW)
        assert srv.service.client_crls is cfg.client_crls and srv.service.revocation is RevocationPolicy.REQUIRE
    finally:
        store.close()
    # the MAF Client's verification of the MAF certificate
    client_cfg = MAFClientConfig(f"maf.{SP}", SP, "127.0.0.1", 1, credentials=CertCredentials(
        leaf.private_key, leaf.certificate, tuple(leaf.chain)), maf_trust_anchors=(ca.trust_anchor,),
        clock=lambda: NOW, maf_crls=CRLStore(pki["crls"]), revocation=RevocationPolicy.REQUIRE)
    hook = client_cfg.tls_config(None).verify_peer
    assert hook.crls is client_cfg.maf_crls and hook.revocation is RevocationPolicy.REQUIRE  # type: ignore[union-attr]
    hook(chain(leaf))  # type: ignore[misc]


def test_mef_certificate_rspf_verifier(pki: dict, tmp_path: Path) -> None:
    from m2msec.mef import EnroleeConfig, MEFState
    from m2msec.mef.server import _CertVerifier
    from m2msec.store import KeyEncryptionKey, open_store

    ca = pki["ca"]
    store = open_store(f"sqlite:///{tmp_path / 'mef.db'}", KeyEncryptionKey(os.urandom(32)), clock=lambda: NOW)
    try:
        state = MEFState(store, f"mef.{SP}", lambda: NOW, (ca.trust_anchor,), enrolee_crls=CRLStore(pki["crls"]))
        state.add_enrolee(EnroleeConfig("/id-in/Cdev", cert=PeerCertInfo(F.CSE_ID, CSE)))
        verifier = _CertVerifier(state)
        peer, vp = verifier(chain(pki["good"]))
        assert peer.identity == "/id-in/Cdev"
        with pytest.raises(CertificateVerificationError) as e:
            verifier(chain(pki["bad"]))
        assert e.value.reason_code is R.REVOKED
        state.enrolee_crls, state.revocation = None, RevocationPolicy.REQUIRE
        with pytest.raises(CertificateVerificationError) as e:
            verifier(chain(pki["good"]))
        assert e.value.reason_code is R.REVOCATION_UNKNOWN
    finally:
        store.close()


def test_tls_cli_options(pki: dict, tmp_path: Path) -> None:
    from m2msec.tls.cli import _config

    d = pki["dir"]
    leaf = pki["good"]
    pem = serialization.Encoding.PEM
    (tmp_path / "c.pem").write_bytes(b"".join(c.public_bytes(pem) for c in chain(leaf)))
    (tmp_path / "k.pem").write_bytes(leaf.private_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    common = dict(dtls=False, psk_identity=None, psk_hex=None, psk_text=None, key=tmp_path / "k.pem",
                  cert=tmp_path / "c.pem", ca=d / "ca.pem", sni=None, mtu=1200)
    cfg = _config(Role.SERVER, peer_id=CSE, peer_flavour="cse-id", crl=[d / "issuing.crl", d / "root.crl"],
                  revocation="require", **common)
    hook = cfg.verify_peer
    assert hook.revocation is RevocationPolicy.REQUIRE and len(hook.crls) == 2  # type: ignore[union-attr]
    with pytest.raises(CertificateVerificationError) as e:
        hook(chain(pki["bad"]))  # type: ignore[misc]
    assert e.value.reason_code is R.REVOKED
    with pytest.raises(typer.BadParameter):
        _config(Role.SERVER, peer_id=CSE, peer_flavour="cse-id", crl=[d / "ca.pem"], **common)
    with pytest.raises(typer.BadParameter):
        _config(Role.SERVER, peer_id=CSE, peer_flavour="cse-id", revocation="maybe", **common)
    with pytest.raises(typer.BadParameter):
        _config(Role.SERVER, peer_id=None, crl=[d / "issuing.crl"], **common)
