"""CLI seal/open round trips (in-process and as a real process), <contentInstance> helpers,
the store-backed key source and the m2msec.pki verifier adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from m2msec.esdata import (
    ContentSecurity,
    ESDataError,
    Reason,
    Source,
    SymmetricRecipient,
    SymmetricSigner,
    Target,
    from_content_instance,
    to_content_instance,
)
from m2msec.esdata.cli import app

runner = CliRunner()


def _pem_files(tmp_path, ep, name):
    kp = tmp_path / f"{name}.key"
    kp.write_bytes(ep.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    cp = tmp_path / f"{name}.pem"
    cp.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ep.chain))
    return kp, cp


@pytest.mark.parametrize("ser", ["compact", "json", "json-b64", "xml", "xml-b64"])
def test_cli_symmetric_round_trip(ser, tmp_path, keys):
    (tmp_path / "in.txt").write_bytes(b"21.5 C")
    k = keys["enc16"].hex()
    r = runner.invoke(app, ["seal", "--in", str(tmp_path / "in.txt"), "--out", str(tmp_path / "env"), "--class", "enc",
                            "--serialization", ser, "--key-hex", k, "--kid", "k1@mef.example.com"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["open", "--in", str(tmp_path / "env"), "--out", str(tmp_path / "out"), "--serialization", ser,
                            "--key-hex", k, "--kid", "k1@mef.example.com"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out").read_bytes() == b"21.5 C"
    # the wrong key is refused with the reason, no traceback
    r = runner.invoke(app, ["open", "--in", str(tmp_path / "env"), "--out", str(tmp_path / "out2"), "--serialization", ser,
                            "--key-hex", "00" * 16, "--kid", "k1@mef.example.com"])
    assert r.exit_code == 2 and "DECRYPTION_FAILED" in r.output and "Traceback" not in r.output


def test_cli_sign_enc_with_certificates_content_instance(tmp_path, pki, source_ep, target_rsa_ep):
    sk, sc = _pem_files(tmp_path, source_ep, "src")
    tk, tc = _pem_files(tmp_path, target_rsa_ep, "tgt")
    root = tmp_path / "root.pem"; root.write_bytes(pki.root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "in.json").write_bytes(b'{"t":1}')
    r = runner.invoke(app, ["seal", "--in", str(tmp_path / "in.json"), "--out", str(tmp_path / "ci.json"), "--class", "sign-enc",
                            "--serialization", "json-b64", "--recipient-cert", str(tc), "--signer-key", str(sk),
                            "--signer-cert", str(sc), "--content-type", "application/json", "--content-instance"])
    assert r.exit_code == 0, r.output
    ci = json.loads((tmp_path / "ci.json").read_text())
    assert ci["cnf"] == "application/json:0:3"
    args = ["open", "--in", str(tmp_path / "ci.json"), "--out", str(tmp_path / "out"), "--content-instance",
            "--recipient-key", str(tk), "--recipient-cert", str(tc), "--trust-anchor", str(root)]
    r = runner.invoke(app, args + ["--expect-id", source_ep.ident, "--require", "sign-enc"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out").read_bytes() == b'{"t":1}' and source_ep.ident in r.output
    r = runner.invoke(app, args + ["--expect-id", "/id-in/Cintruder"])
    assert r.exit_code == 2 and "UNTRUSTED_CERTIFICATE" in r.output


def test_cli_real_process(tmp_path, keys):
    (tmp_path / "in").write_bytes(b"payload")
    cmd = [sys.executable, "-c", "from m2msec.esdata.cli import app; app()"]
    k = keys["mic32"].hex()
    p = subprocess.run(cmd + ["seal", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "env"), "--class", "sign",
                              "--serialization", "compact", "--key-hex", k, "--kid", "m1"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(cmd + ["open", "--in", str(tmp_path / "env"), "--out", str(tmp_path / "out"), "--serialization",
                              "compact", "--key-hex", k, "--kid", "m1", "--mic"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out").read_bytes() == b"payload" and b"HS256" in p.stderr


def test_content_instance_round_trip(keys, key_source):
    env = Source().seal(b"aGVsbG8=", serialization="json", content_type="text/plain",
                        recipients=[SymmetricRecipient("enc16@mef.example.com", keys["enc16"], "dir")])
    ci = to_content_instance(env, encoding_type=1)
    assert ci["cnf"] == "text/plain:1:2" and ci["con"] == env.data.decode()
    back = from_content_instance(json.loads(json.dumps(ci)))
    assert back.content_security is ContentSecurity.JOSE_JSON and back.encoding_type == 1 and back.content_type == "text/plain"
    assert Target(key_source).open(back).payload == b"aGVsbG8="
    for bad in ({"con": "x", "cnf": "text/plain:0"}, {"con": "x", "cnf": "text/plain:0:9"}, {"con": 1, "cnf": "a/b:0:1"},
                {"con": "x", "cnf": "plain:0:1"}):
        with pytest.raises(ESDataError):
            from_content_instance(bad)
    with pytest.raises(ESDataError):
        to_content_instance(Source().seal(b"x", serialization="compact",
                                          recipients=[SymmetricRecipient("k", keys["enc16"], "dir")]))


def test_store_key_source(tmp_path, keys):
    from m2msec.esdata.storesource import StoreKeySource
    from m2msec.store import KeyEncryptionKey, open_store

    with open_store(f"sqlite:///{tmp_path / 's.db'}", KeyEncryptionKey.generate()) as store:
        ks = StoreKeySource(store)
        ks.provision("k24@mef.example.com", keys["enc32"], suid=24)
        ks.provision("m25@mef.example.com", keys["mic32"], suid=25)
        env = Source().seal(b"stored", serialization="compact",
                            recipients=[SymmetricRecipient("k24@mef.example.com", keys["enc32"], "A256KW", suid=24)])
        assert Target(ks).open(env).payload == b"stored"
        env = Source().seal(b"stored", serialization="json",
                            signers=[SymmetricSigner("m25@mef.example.com", keys["mic32"], suid=25)])
        assert Target(ks).open(env).signatures[0].suid == 25
        assert keys["enc32"] not in (tmp_path / "s.db").read_bytes()  # encrypted at rest
        env = Source().seal(b"x", serialization="compact", recipients=[SymmetricRecipient("nope", keys["enc16"], "dir")])
        with pytest.raises(ESDataError) as ei:
            Target(ks).open(env)
        assert ei.value.reason is Reason.UNKNOWN_KID
        with pytest.raises(ESDataError):
            ks.provision("bad", keys["enc16"], suid=13)  # an ESPrim SUID


def test_pki_verifier_adapter(pki, source_ep, fixed_clock):
    """The m2msec.pki adapter refuses an untrusted chain and an identifier mismatch."""
    from m2msec.esdata import CertificateSigner
    from m2msec.esdata.certverify import pki_verifier

    v = pki_verifier(trust_anchors=[pki.root], clock=fixed_clock, flavour="ae-id")
    env = Source().seal(b"x", serialization="compact", signers=[CertificateSigner(source_ep.key, source_ep.chain)])
    with pytest.raises(ESDataError) as ei:
        Target(__import__("m2msec.esdata", fromlist=["InMemoryKeySource"]).InMemoryKeySource(),
               certificate_verifier=v).open(env, expected_source_id="Cother")
    assert ei.value.reason is Reason.UNTRUSTED_CERTIFICATE


def test_pki_verifier_adapter_with_dev_ca(now, fixed_clock):
    """Positive path: an AE-ID certificate issued by m2msec.pki.DevCA verifies through the adapter."""
    from m2msec.esdata import CertificateSigner, InMemoryKeySource
    from m2msec.esdata.certverify import pki_verifier
    from m2msec.pki import CertificateFlavour, DevCA

    ca = DevCA.create("ESData Test CA", now=now, intermediate=True)
    issued = ca.issue(CertificateFlavour.AE_ID, ["//sp.example.com/Csensor01"], now=now)
    assert issued.private_key is not None
    signer = CertificateSigner(issued.private_key, (issued.certificate, *issued.chain))
    env = Source().seal(b"signed by an AE", serialization="json", signers=[signer])
    v = pki_verifier(trust_anchors=[ca.trust_anchor], clock=fixed_clock, flavour="ae-id")
    out = Target(InMemoryKeySource(), certificate_verifier=v).open(env, expected_source_id="//sp.example.com/Csensor01")
    assert out.payload == b"signed by an AE" and out.signatures[0].source_id == "//sp.example.com/Csensor01"
    with pytest.raises(ESDataError) as ei:
        Target(InMemoryKeySource(), certificate_verifier=v).open(env, expected_source_id="//sp.example.com/Csensor02")
    assert ei.value.reason is Reason.UNTRUSTED_CERTIFICATE
