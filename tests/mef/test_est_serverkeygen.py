"""EST server-side key generation (TS-0003 8.3.6.2.1; RFC 7030 4.4) at three levels.

* pure: the multipart body (:func:`serverkeygen_multipart`, :func:`parse_serverkeygen`)
  and the key type the MEF policy prefers;
* the MEF on 127.0.0.1 with the m2msec EST client (PSK and certificate RSPF) and every
  refusal of the RA;
* curl + openssl as a standard EST client: the multipart split by the stdlib ``email``
  parser, both parts parsed by openssl.
"""

from __future__ import annotations

import base64
import email
import logging
import shutil
import subprocess
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest
from _esthelp import AE_ALT, AE_ID, CERT_ENROLEE, CERT_ENROLEE_EST_ID, World, make_world
from _mefhelp import B_PSK, B_PSK_ID, ENROLEE, MEF_FQDN, run
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from m2msec.errors import ParseError
from m2msec.mef import mef_tls_config
from m2msec.mef.est import (
    CT_CERTS_ONLY,
    NS_EST_CHALLENGE,
    NS_EST_ISSUED,
    DevCAAuthority,
    ESTResponse,
    ESTService,
    preferred_key_type,
    serverkeygen_multipart,
)
from m2msec.mef.est_client import ESTClientError, build_est_csr, est_enrol, parse_serverkeygen
from m2msec.mef.state import SessionPeer
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import DEFAULT_KEY_POLICY, STRICT_ONEM2M, KeyPolicy, KeyType, build_csr, identifiers_of
from m2msec.pki import CertificateFlavour as F
from m2msec.tls.engine import PSKCredentials

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
PATH = "/.well-known/est/serverkeygen"


def spki(key: Any) -> bytes:
    return key.public_bytes(DER, SPKI)


def pkcs8(key: Any) -> bytes:
    return key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def secrets_of(key: Any) -> list[bytes]:
    """Encodings of a private key that must never show up in a log, repr, store or audit."""
    der = pkcs8(key)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [der, base64.b64encode(der), scalar, scalar.hex().encode(), der.hex().encode()]


@pytest.fixture
def w(tmp_path: Path) -> Any:
    world = make_world(tmp_path)
    yield world
    world.state.store.close()


# ------------------------------------------------------------------ pure: wire format


def _one_cert() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from m2msec.pki import DevCA

    from _mefhelp import Clock

    ca = DevCA.create("t", now=Clock().now, permit_uri=["m2m.example.com"])
    issued = ca.issue(F.AE_ID, [AE_ID], now=Clock().now)
    return issued.private_key, issued.certificate  # type: ignore[return-value]


def test_multipart_layout_and_round_trip() -> None:
    key, cert = _one_cert()
    ctype, body = serverkeygen_multipart(key, [cert])
    assert ctype.startswith("multipart/mixed; boundary=")
    boundary = ctype.split("boundary=", 1)[1]
    # the stdlib MIME parser (independent of ours) sees key first, then the certificate
    msg = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body, policy=email_policy.default)
    assert msg.is_multipart() and not msg.defects
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    assert parts[1].get_param("smime-type") == "certs-only"
    assert f"\r\nContent-Type: {CT_CERTS_ONLY}\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode() in body
    assert all(p["Content-Transfer-Encoding"] == "base64" for p in parts)
    assert parts[0].get_content() == pkcs8(key)
    assert pkcs7.load_der_pkcs7_certificates(parts[1].get_content()) == [cert]
    # the boundary occurs only as delimiters; lines are CRLF, base64 lines at most 64 characters
    assert body.count(boundary.encode()) == 3 and body.endswith(f"--{boundary}--\r\n".encode())
    lines = body.split(b"\r\n")
    assert b"\n" not in b"".join(lines) and max(len(x) for x in lines if not x.startswith(b"--")) <= 64
    # fresh boundary every time
    assert serverkeygen_multipart(key, [cert])[0] != ctype
    # our client reads it back
    k2, certs = parse_serverkeygen(ctype, body)
    assert pkcs8(k2) == pkcs8(key) and certs == [cert]
    # the part order does not matter to the client (RFC 7030 4.4.2 names two parts, not an order)
    first, second = body.split(f"--{boundary}\r\n".encode())[1:]
    second = second.split(f"--{boundary}--".encode())[0]
    swapped = f"--{boundary}\r\n".encode().join([b"", second, first]) + f"--{boundary}--\r\n".encode()
    assert pkcs8(parse_serverkeygen(ctype, swapped)[0]) == pkcs8(key)


def _bad_bodies(key: Any, cert: x509.Certificate) -> dict[str, tuple[str, bytes, str]]:
    ctype, body = serverkeygen_multipart(key, [cert])
    b = ctype.split("boundary=", 1)[1]
    key_b64 = base64.b64encode(pkcs8(key)).decode()
    cert_b64 = base64.b64encode(pkcs7.serialize_certificates([cert], DER)).decode()

    def mp(*parts: tuple[str, str, str]) -> bytes:
        out = "".join(f"--{b}\r\nContent-Type: {t}\r\nContent-Transfer-Encoding: {e}\r\n\r\n{p}\r\n"
                      for t, e, p in parts)
        return (out + f"--{b}--\r\n").encode()

    enc = key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw"))
    return {
        "not multipart": ("application/pkcs7-mime", body, "expected multipart/mixed"),
        "one part": (ctype, mp(("application/pkcs8", "base64", key_b64)), "expected one"),
        "two keys": (ctype, mp(("application/pkcs8", "base64", key_b64), ("application/pkcs8", "base64", key_b64)),
                     "expected one"),
        "binary key part": (ctype, mp(("application/pkcs8", "binary", key_b64),
                                      (CT_CERTS_ONLY, "base64", cert_b64)), "Content-Transfer-Encoding"),
        "key not base64": (ctype, mp(("application/pkcs8", "base64", "%%%" + key_b64),
                                     (CT_CERTS_ONLY, "base64", cert_b64)), "not base64"),
        "encrypted key": (ctype, mp(("application/pkcs8", "base64", base64.b64encode(enc).decode()),
                                    (CT_CERTS_ONLY, "base64", cert_b64)), "unencrypted"),
        "wrong smime-type": (ctype, mp(("application/pkcs8", "base64", key_b64),
                                       ("application/pkcs7-mime; smime-type=enveloped-data", "base64", cert_b64)),
                             "certs-only"),
        "no closing boundary": (ctype, mp(("application/pkcs8", "base64", key_b64),
                                          (CT_CERTS_ONLY, "base64", cert_b64))[:-len(f"--{b}--\r\n")],
                                "malformed"),
    }


@pytest.mark.parametrize("case", ["not multipart", "one part", "two keys", "binary key part", "key not base64",
                                  "encrypted key", "wrong smime-type", "no closing boundary"])
def test_parse_serverkeygen_refuses(case: str) -> None:
    key, cert = _one_cert()
    ctype, body, why = _bad_bodies(key, cert)[case]
    with pytest.raises(ParseError) as ei:
        parse_serverkeygen(ctype, body)
    assert why in str(ei.value)
    assert all(s.decode("latin-1") not in str(ei.value) for s in secrets_of(key))


def test_preferred_key_type() -> None:
    assert preferred_key_type(DEFAULT_KEY_POLICY) is KeyType.EC_P256
    assert preferred_key_type(STRICT_ONEM2M) is KeyType.EC_P256
    assert preferred_key_type(KeyPolicy(curves=frozenset({"secp384r1"}))) is KeyType.EC_P384
    assert preferred_key_type(KeyPolicy(curves=frozenset())) is KeyType.RSA_2048
    assert preferred_key_type(KeyPolicy(curves=frozenset(), min_rsa_bits=3072)) is KeyType.RSA_3072
    with pytest.raises(ValueError):
        preferred_key_type(KeyPolicy(curves=frozenset(), allow_rsa=False))


def test_response_repr_hides_the_body() -> None:
    key, cert = _one_cert()
    ctype, body = serverkeygen_multipart(key, [cert])
    r = repr(ESTResponse(RSC.OK, ctype, body))
    assert all(s.decode("latin-1") not in r for s in secrets_of(key)) and "pkcs8" not in r


# ------------------------------------------------------------------ the MEF on 127.0.0.1


def _capture_placeholder(box: list[Any]) -> Any:
    def hook(key: Any, cp: str, exts: Any) -> x509.CertificateSigningRequest:
        box.append(key)
        return build_est_csr(key, cp, exts)
    return hook


def test_serverkeygen_over_psk_rspf(w: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    placeholder: list[Any] = []
    with w.mef() as m:
        e, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls(), server_keygen=True,
                                        csr_hook=_capture_placeholder(placeholder)))
    cert, key = prov.certificate, prov.private_key
    assert e.enrolee_id == ENROLEE
    # the returned key is the certified one, generated by the MEF's policy (P-256), not our placeholder
    assert spki(cert.public_key()) == spki(key.public_key())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert spki(placeholder[0].public_key()) != spki(cert.public_key())
    # same RA result as simpleenroll: the entitled identifier + the MEF-added one, chain to the MEF CA
    assert sorted(identifiers_of(cert, F.AE_ID)) == sorted([AE_ID, AE_ALT])
    assert prov.trust_anchors == (w.ca.trust_anchor,) and prov.chain == (w.ca.intermediate_cert,)
    cert.verify_directly_issued_by(w.ca.intermediate_cert)
    w.ca.intermediate_cert.verify_directly_issued_by(w.ca.trust_anchor)
    # recorded, challenge consumed, completion reported; audited without key material
    rec = w.state.store.get_record(NS_EST_ISSUED, prov.serial).doc
    assert rec["server_keygen"] is True and rec["installed"] is True and rec["reenroll"] is False
    assert w.state.store.list_records(NS_EST_CHALLENGE) == []
    audit = [a for a in w.state.store.list_audit() if a.action == "est-serverkeygen"]
    assert len(audit) == 1 and audit[0].outcome == "ok" and audit[0].details["serial"] == prov.serial
    # the generated key is nowhere on the MEF: not in the store files, the audit, the logs
    blobs = [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("mef.db")]
    audit_text = repr([(a.action, a.details) for a in w.state.store.list_audit()]).encode()
    for s in secrets_of(key):
        assert all(s not in b for b in blobs)
        assert s not in audit_text
        assert s.decode("latin-1") not in caplog.text
    assert w.state.store.find_credential("mef.est.key", prov.serial) is None


def test_serverkeygen_over_certificate_rspf_then_reenrol(w: World) -> None:
    with w.mef() as m:
        e, prov = run(lambda: est_enrol(m.host, m.port, w.cert_tls(w.maker_dev), server_keygen=True))
        assert e.enrolee_id == CERT_ENROLEE
        assert identifiers_of(prov.certificate, F.AE_ID) == [CERT_ENROLEE_EST_ID]
        assert spki(prov.certificate.public_key()) == spki(prov.private_key.public_key())
        # the server-generated key and certificate authenticate the enrolee for simplereenroll
        _, p2 = run(lambda: est_enrol(m.host, m.port, w.cert_tls(prov.credentials()), reenroll=True))
    assert identifiers_of(p2.certificate, F.AE_ID) == [CERT_ENROLEE_EST_ID]


def test_serverkeygen_key_type_follows_the_service_setting(w: World) -> None:
    est = ESTService(w.state, w.est.ca, serverkeygen_key_type=KeyType.RSA_2048)
    with _mef_with(w, est) as m:
        _, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls(), server_keygen=True))
    assert isinstance(prov.private_key, rsa.RSAPrivateKey) and prov.private_key.key_size == 2048
    assert spki(prov.certificate.public_key()) == spki(prov.private_key.public_key())


def _mef_with(w: World, est: ESTService) -> Any:
    from _mefhelp import ThreadedMEF

    return ThreadedMEF(w.state, credentials=w.mef_creds, est=est)


# ------------------------------------------------------------------ refusals (real server)


def refused(w: World, csr_hook: Any = None, *, tls: Any = None) -> ESTClientError:
    with w.mef() as m:
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, tls or w.psk_tls(), csr_hook=csr_hook, server_keygen=True))
    assert w.state.store.list_records(NS_EST_ISSUED) == []
    assert any(a.action == "est" and a.outcome == "refused" and a.details["op"] == "serverkeygen"
               for a in w.state.store.list_audit())
    return ei.value


def test_not_entitled(w: World) -> None:
    other = "//m2m.example.com/id-in/Csomebody-else"
    err = refused(w, lambda key, cp, _e: build_csr(key, F.AE_ID, [AE_ID, other], challenge_password=cp))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "not entitled" in str(err) and other in str(err)
    assert len(w.state.store.list_records(NS_EST_CHALLENGE)) == 1  # not consumed


def test_wrong_identity_name_form(w: World) -> None:
    err = refused(w, lambda key, cp, _e: build_csr(key, F.FQDN, ["evil.m2m.example.com"], challenge_password=cp))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "other than ae-id" in str(err)


def test_wrong_challenge(w: World) -> None:
    err = refused(w, lambda key, _cp, exts: build_est_csr(key, "not-the-challenge", exts))
    assert err.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and "challengePassword" in str(err)


def test_bad_proof_of_possession_on_placeholder(w: World) -> None:
    from test_est_enrol import _splice_signature

    other = ec.generate_private_key(ec.SECP256R1())

    def hook(key: Any, cp: str, exts: Any) -> Any:
        return x509.load_der_x509_csr(_splice_signature(build_est_csr(key, cp, exts).public_bytes(DER), other))

    err = refused(w, hook)
    assert err.rsc is RSC.BAD_REQUEST and "proof of possession" in str(err)


def test_challenge_of_another_enrolee(w: World) -> None:
    """An enrolee's challengePassword in another enrolee's session (identity binding)."""
    with w.mef() as m:
        e, _ = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    pending = w.est.prepare(ENROLEE, e.ke_id, e.expiry)
    assert pending is not None
    with w.state.store.transaction() as tx:
        pending.store(tx)
    key = ec.generate_private_key(ec.SECP256R1())
    body = base64.encodebytes(build_csr(key, F.AE_ID, [CERT_ENROLEE_EST_ID], challenge_password=pending.value)
                              .public_bytes(DER))
    resp = w.est.handle("POST", PATH, body, SessionPeer("enrolee", CERT_ENROLEE, "cert:x"),
                        content_type="application/pkcs10")
    assert resp.status == 403 and resp.rsc is RSC.ORIGINATOR_HAS_NO_PRIVILEGE and b"challengePassword" in resp.body
    assert resp.content_type.startswith("text/plain") and resp.extra_headers == ()
    # the right session gets it (in-process level)
    resp = w.est.handle("POST", PATH, base64.encodebytes(
        build_csr(key, F.AE_ID, [AE_ID], challenge_password=pending.value).public_bytes(DER)),
        SessionPeer("enrolee", ENROLEE, "kpm:x"))
    assert resp.status == 200 and resp.content_type.startswith("multipart/mixed; boundary=")
    k, certs = parse_serverkeygen(resp.content_type, resp.body)
    assert spki(k.public_key()) == spki(certs[0].public_key()) != spki(key.public_key())
    assert resp.extra_headers == ()  # no outer Content-Transfer-Encoding on a multipart (RFC 2045 6.4)


def test_no_session_identity(w: World) -> None:
    resp = w.est.handle("POST", PATH, b"", None, content_type="application/pkcs10")
    assert resp.rsc is RSC.ORIGINATOR_NOT_AUTHENTICATED and resp.status == 403


class _WrongKeyCA(DevCAAuthority):
    """A CA that certifies some other key than the one in the CSR (a broken CA)."""

    def issue(self, csr: Any, flavour: Any, identifiers: Any, usages: Any) -> list[x509.Certificate]:
        other = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
        for ext in csr.extensions:
            builder = builder.add_extension(ext.value, critical=ext.critical)
        return super().issue(builder.sign(other, hashes.SHA256()), flavour, identifiers, usages)


def test_ca_certifying_another_key_is_a_server_error(w: World) -> None:
    est = ESTService(w.state, _WrongKeyCA(w.ca, w.clock))
    with _mef_with(w, est) as m:
        with pytest.raises(ESTClientError) as ei:
            run(lambda: est_enrol(m.host, m.port, w.psk_tls(), server_keygen=True))
    assert ei.value.rsc is RSC.INTERNAL_SERVER_ERROR and "generated key" in str(ei.value)
    assert w.state.store.list_records(NS_EST_ISSUED) == []
    assert len(w.state.store.list_records(NS_EST_CHALLENGE)) == 1  # not consumed


def test_protocol_errors(w: World) -> None:
    from m2msec.mef.client import _http
    from m2msec.tls.aio import open_connection

    async def req(tls: Any, method: str, body: bytes = b"", ctype: str | None = "application/pkcs10"
                  ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await open_connection(m.host, m.port, tls)
        try:
            return await _http(reader, writer, method, PATH, [("Content-Type", ctype)] if ctype else [], body, "mef")
        finally:
            writer.close()

    target = mef_tls_config(psk=PSKCredentials(B_PSK_ID.encode(), B_PSK))
    with w.mef() as m:
        status, hdrs, _ = run(lambda: req(w.psk_tls(), "GET"))
        assert status == 405 and hdrs["x-m2m-rsc"] == "4005"
        # malformed CSRs (4000)
        status, hdrs, body = run(lambda: req(w.psk_tls(), "POST", b"%%%"))
        assert status == 400 and hdrs["x-m2m-rsc"] == "4000" and b"base64" in body
        status, _, body = run(lambda: req(w.psk_tls(), "POST", base64.b64encode(b"\x30\x03\x02\x01\x00")))
        assert status == 400 and b"PKCS#10" in body
        status, _, body = run(lambda: req(w.psk_tls(), "POST", base64.b64encode(b"\x30\x03\x02\x01\x00"), None))
        assert status == 400  # a missing Content-Type is tolerated, the body still checked
        # unsupported content type (4015 -> 415), checked before the body
        for bad in ("application/json", "application/pkcs7-mime", "text/plain; charset=utf-8"):
            status, hdrs, body = run(lambda: req(w.psk_tls(), "POST", b"%%%", bad))
            assert status == 415 and hdrs["x-m2m-rsc"] == "4015" and b"application/pkcs10" in body
        status, _, body = run(lambda: req(w.psk_tls(), "POST", b"%%%", "Application/PKCS10; foo=bar"))
        assert status == 400 and b"base64" in body  # media type compared case-insensitively, parameters ignored
        # an Enrolment Target session may not enrol (4103)
        status, hdrs, body = run(lambda: req(target, "POST", b"%%%"))
        assert status == 403 and hdrs["x-m2m-rsc"] == "4103" and b"Enrolment Target" in body
    assert w.state.store.list_records(NS_EST_ISSUED) == []


# ------------------------------------------------------------------ curl + openssl


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(list(args), capture_output=True, timeout=20)
    if check:
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-600:]
    return done


needs_tools = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("openssl") is None,
                                 reason="curl and openssl CLIs needed")


@needs_tools
def test_curl_and_openssl_serverkeygen(w: World, tmp_path: Path) -> None:
    from test_est_curl import Curl, openssl_csr

    mef_root = tmp_path / "mef-root.pem"
    mef_root.write_bytes(w.ca.trust_anchor.public_bytes(PEM))
    inter = tmp_path / "inter.pem"
    inter.write_bytes(w.ca.intermediate_cert.public_bytes(PEM))
    dev_cert, dev_key = tmp_path / "maker.cert.pem", tmp_path / "maker.key.pem"
    dev_cert.write_bytes(w.maker_dev.certificate.public_bytes(PEM))
    dev_key.write_bytes(w.maker_dev.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    with w.mef() as m:
        curl = Curl(tmp_path, m.port, dev_cert, dev_key, mef_root)
        challenge = curl.enrolment_challenge()
        placeholder_key, csr = openssl_csr(tmp_path, "skg", challenge)
        headers = tmp_path / "headers.txt"
        status, body = curl(PATH, "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}",
                            "-D", str(headers))
        assert status == 200, body
        hdr_lines = headers.read_text().lower().splitlines()
        ctype = next(h.split(":", 1)[1].strip() for h in hdr_lines if h.startswith("content-type:"))
        assert ctype.startswith("multipart/mixed; boundary=")
        assert not any(h.startswith("content-transfer-encoding:") for h in hdr_lines)

        # split with the stdlib MIME parser, then openssl reads both parts
        msg = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body, policy=email_policy.default)
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
        assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
        assert parts[1].get_param("smime-type") == "certs-only"
        key_der, p7_der = tmp_path / "key.p8.der", tmp_path / "cert.p7.der"
        key_der.write_bytes(parts[0].get_content())
        p7_der.write_bytes(parts[1].get_content())
        text = sh("openssl", "pkey", "-inform", "DER", "-in", str(key_der), "-noout", "-text").stdout.decode()
        assert "prime256v1" in text or "P-256" in text
        key_pub = sh("openssl", "pkey", "-inform", "DER", "-in", str(key_der), "-pubout").stdout
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(sh("openssl", "pkcs7", "-inform", "DER", "-in", str(p7_der), "-print_certs").stdout)
        cert_pub = sh("openssl", "x509", "-in", str(leaf), "-noout", "-pubkey").stdout
        assert key_pub == cert_pub  # the returned key is the certified one
        placeholder_pub = sh("openssl", "pkey", "-in", str(placeholder_key), "-pubout").stdout
        assert placeholder_pub != cert_pub  # never the CSR's key
        assert b"OK" in sh("openssl", "verify", "-CAfile", str(mef_root), "-untrusted", str(inter),
                           "-purpose", "sslclient", str(leaf)).stdout
        cert = x509.load_pem_x509_certificates(leaf.read_bytes())[0]
        assert identifiers_of(cert, F.AE_ID) == [CERT_ENROLEE_EST_ID]

        # the key + certificate authenticate curl to the MEF (next Enrolment Exchange)
        key_pem = tmp_path / "skg.key.pem"
        key_pem.write_bytes(sh("openssl", "pkey", "-inform", "DER", "-in", str(key_der)).stdout)
        chain = tmp_path / "skg.chain.pem"
        chain.write_bytes(leaf.read_bytes() + inter.read_bytes())
        assert Curl(tmp_path, m.port, chain, key_pem, mef_root).enrolment_challenge()

        # refusals seen by curl: replayed challenge (4103), unsupported content type (4015)
        status, body = curl(PATH, "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}")
        assert status == 403 and b"challengePassword" in body
        status, body = curl(PATH, "-H", "Content-Type: application/x-www-form-urlencoded", "--data-binary",
                            f"@{csr}")
        assert status == 415

        # a plain server-authenticated session (no client certificate, no PSK) does not get in at all
        plain = ["curl", "-sS", "--resolve", f"{MEF_FQDN}:{m.port}:127.0.0.1", "--cacert", str(mef_root),
                 "--max-time", "15", "-o", str(tmp_path / "plain.out"), "-w", "%{http_code}",
                 "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}",
                 f"https://{MEF_FQDN}:{m.port}{PATH}"]
        done = sh(*plain, check=False)
        assert done.returncode != 0 and done.stdout in (b"", b"000")
    docs = [r.doc for r in w.state.store.list_records(NS_EST_ISSUED)]
    assert len(docs) == 1 and docs[0]["server_keygen"] is True and docs[0]["enrolee_id"] == CERT_ENROLEE


# ------------------------------------------------------------------ CLI


def test_cli_est_enrol_server_keygen(w: World, tmp_path: Path) -> None:
    from _mefhelp import KPM, KPM_ID
    from typer.testing import CliRunner

    from m2msec.mef.cli import app

    out = tmp_path / "device"
    r = CliRunner()
    with w.mef() as m:
        args = ["est-enrol", "--mef", f"127.0.0.1:{m.port}", "--kpm-id", KPM_ID, "--kpm-hex", KPM.hex(),
                "--out", str(out), "--server-keygen"]
        res = r.invoke(app, args)
        assert res.exit_code == 0, res.output
        refused_res = r.invoke(app, [*args[:-1], "--reenroll", "--server-keygen"])
    assert refused_res.exit_code == 2 and "serverkeygen is not a re-enrolment" in refused_res.output
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())[0]
    assert spki(key.public_key()) == spki(cert.public_key())
    assert w.state.store.get_record(NS_EST_ISSUED, format(cert.serial_number, "x")).doc["server_keygen"] is True
    assert all(s.decode("latin-1") not in res.output for s in secrets_of(key))
