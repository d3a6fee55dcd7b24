"""Revocation of EST certificates and the MEF CA's CRLs (TS-0003 8.1.2.2, 8.3.6; RFC 5280 5, RFC 2585).

In-process: the revocation records, the CRL publisher (numbering, re-signing, caching, two
instances), the MEF refusing a revoked certificate; over real sockets: the CRL HTTP server;
as real processes: ``m2msec mef serve`` with ``crl_port`` and ``crl_base_url``, enrolment,
``m2msec mef enrolee revoke`` / ``est-revoke`` in other processes, the CRL fetched from the
certificate's distribution point, and ``openssl verify -crl_check`` on it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from _esthelp import CERT_ENROLEE, World, make_world
from _mefhelp import ENROLEE, KPM, KPM_ID, MEF_FQDN, run
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from m2msec.errors import M2MSecError
from m2msec.mef.cli import app
from m2msec.mef.est import NS_EST_ISSUED
from m2msec.mef.est_client import est_enrol
from m2msec.mef.est_crl import NS_EST_CRL, ESTCRLPublisher, crl_url_for
from m2msec.mef.state import NS_EST_REVOKED
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CRLStore, PeerCertInfo, RevocationPolicy
from m2msec.pki.crl import crl_number, load_crls
from m2msec.pki.crl_http import CRL_MEDIA_TYPE, CRLHTTPServer
from m2msec.pki.verify import CertificateVerificationError, verify_peer_certificate
from m2msec.store import KeyEncryptionKey, open_store

SP = "m2m.example.com"
AE_ID = f"//{SP}/id-in/Cdevice1"


@pytest.fixture
def w(tmp_path: Path) -> World:
    world = make_world(tmp_path)
    yield world
    world.state.store.close()


def _publisher(w: World, **kw: object) -> ESTCRLPublisher:
    return ESTCRLPublisher(w.state.store, w.ca, w.clock, **kw)  # type: ignore[arg-type]


def _enrol_psk(w: World) -> x509.Certificate:
    with w.mef() as m:
        _, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    return prov.certificate


def _serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {r.serial_number for r in crl}


# ------------------------------------------------------------------ in-process


def test_enrolee_revocation_revokes_its_certificates_and_the_crl_lists_them(w: World) -> None:
    cert = _enrol_psk(w)
    pub = _publisher(w)
    before = pub.crl()
    assert crl_number(before) == 1 and _serials(before) == set()
    assert before.issuer == w.ca.intermediate_cert.subject  # the issuing CA signs the leaves' CRL
    assert before.is_signature_valid(w.ca.intermediate_cert.public_key())
    keys, serials = w.state.revoke_enrolee_report(ENROLEE)
    assert serials == [format(cert.serial_number, "x")] and keys >= 1
    rec = w.state.store.get_record(NS_EST_REVOKED, serials[0])
    assert rec.doc["reason"] == "privilegeWithdrawn" and rec.doc["enrolee_id"] == ENROLEE
    assert rec.expires_at == cert.not_valid_after_utc  # leaves the CRL once the certificate has expired
    assert w.state.store.get_record(NS_EST_ISSUED, serials[0]).doc["revoked"] is True
    after = pub.crl()
    assert crl_number(after) == 2 and _serials(after) == {cert.serial_number}
    entry = after.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.privilege_withdrawn
    # the audit names the certificate
    audit = [a for a in w.state.store.list_audit(limit=20) if a.action == "enrolee-revoke"]
    assert audit and audit[0].details["certificates_revoked"] == serials
    # a relying party with this CRL refuses the certificate
    store = CRLStore(pub.crls())
    with pytest.raises(CertificateVerificationError) as ei:
        verify_peer_certificate([cert, w.ca.intermediate_cert], expected=PeerCertInfo(F.AE_ID, AE_ID), trust_anchors=[w.ca.trust_anchor],
                                now=w.clock(), crls=store, revocation=RevocationPolicy.REQUIRE)
    assert ei.value.reason_code.name == "REVOKED"


def test_single_certificate_revocation_and_its_refusals(w: World) -> None:
    cert = _enrol_psk(w)
    serial = format(cert.serial_number, "x")
    doc = w.est.revoke_certificate(serial.upper(), x509.ReasonFlags.key_compromise)
    assert doc["reason"] == "keyCompromise" and doc["enrolee_id"] == ENROLEE
    assert not w.state.get_enrolee(ENROLEE).revoked  # the enrolee stays enrolled
    with pytest.raises(M2MSecError) as ei:
        w.est.revoke_certificate(serial)
    assert ei.value.rsc is RSC.CONFLICT and "already revoked" in str(ei.value)
    with pytest.raises(M2MSecError) as ei:
        w.est.revoke_certificate("deadbeef")
    assert ei.value.rsc is RSC.NOT_FOUND
    with pytest.raises(M2MSecError) as ei:
        w.est.revoke_certificate(cert.serial_number + 1, x509.ReasonFlags.remove_from_crl)
    assert ei.value.rsc is RSC.BAD_REQUEST
    # revoking the enrolee afterwards does not revoke the certificate twice
    assert w.state.revoke_enrolee_report(ENROLEE)[1] == []
    assert _serials(_publisher(w).crl()) == {cert.serial_number}


def test_crl_is_reused_until_half_its_validity_or_a_change(w: World) -> None:
    pub = _publisher(w, validity=timedelta(hours=2))
    first = pub.crl()
    assert pub.crl() is first  # same object: no re-signing, no store write
    w.clock.advance(59 * 60)
    assert crl_number(pub.crl()) == 1
    w.clock.advance(2 * 60)  # past half of the validity
    second = pub.crl()
    assert crl_number(second) == 2 and second.next_update_utc - second.last_update_utc == timedelta(hours=2)
    # the root's CRL (covering the intermediate) is separate, empty and numbered on its own
    root = pub.crl("root")
    assert root.issuer == w.ca.trust_anchor.subject and len(root) == 0 and crl_number(root) == 1
    assert [c.issuer for c in pub.crls()] == [w.ca.trust_anchor.subject, w.ca.intermediate_cert.subject]
    with pytest.raises(KeyError):
        pub.crl("nobody")


def test_two_instances_on_one_store_agree_on_numbers(w: World) -> None:
    cert = _enrol_psk(w)
    a, b = _publisher(w), _publisher(w)
    assert crl_number(a.crl()) == 1
    assert crl_number(b.crl()) == 1  # b serves what a published
    w.est.revoke_certificate(cert.serial_number)
    assert crl_number(b.crl()) == 2 and _serials(b.crl()) == {cert.serial_number}
    assert crl_number(a.crl()) == 2 and a.crl().public_bytes(serialization.Encoding.DER) == \
        b.crl().public_bytes(serialization.Encoding.DER)
    assert w.state.store.get_record(NS_EST_CRL, "intermediate").doc["number"] == 2


def test_entries_leave_the_crl_when_the_certificate_expires(w: World) -> None:
    cert = _enrol_psk(w)
    w.est.revoke_certificate(cert.serial_number)
    pub = _publisher(w)
    assert _serials(pub.crl()) == {cert.serial_number}
    w.clock.now = cert.not_valid_after_utc + timedelta(seconds=1)
    later = pub.crl()
    assert _serials(later) == set() and crl_number(later) == 2


def test_mef_refuses_a_revoked_certificate_at_once(w: World) -> None:
    with w.mef() as m:
        _, p1 = run(lambda: est_enrol(m.host, m.port, w.cert_tls(w.maker_dev)))  # certificate RSPF
        assert w.state.revoked_certificate(p1.certificate) is None
        w.est.revoke_certificate(p1.certificate.serial_number, x509.ReasonFlags.key_compromise)
        assert w.state.revoked_certificate(p1.certificate)["reason"] == "keyCompromise"
        with pytest.raises(Exception) as ei:  # the certificate RSPF handshake fails: certificate_revoked
            run(lambda: est_enrol(m.host, m.port, w.cert_tls(p1.credentials()), reenroll=True))
        assert "certificate revoked" in str(ei.value)
        # the manufacturer certificate still authenticates the enrolee (only that one certificate is revoked)
        e2, _ = run(lambda: est_enrol(m.host, m.port, w.cert_tls(w.maker_dev)))
        assert e2.enrolee_id == CERT_ENROLEE


# ------------------------------------------------------------------ the HTTP server


def test_crl_http_server(w: World) -> None:
    pub = _publisher(w)

    async def main() -> None:
        async with CRLHTTPServer({s: (lambda s=s: pub.crl(s)) for s in pub.signers}, clock=w.clock) as srv:
            async with httpx.AsyncClient() as c:
                r = await c.get(srv.url("intermediate"))
                assert r.status_code == 200 and r.headers["content-type"] == CRL_MEDIA_TYPE
                crl = x509.load_der_x509_crl(r.content)
                assert crl.issuer == w.ca.intermediate_cert.subject
                assert 86300 <= int(r.headers["cache-control"].split("max-age=")[1]) <= 86400
                etag = r.headers["etag"]
                r2 = await c.get(srv.url("intermediate"), headers={"If-None-Match": etag})
                assert r2.status_code == 304 and r2.content == b""
                r3 = await c.head(srv.url("root"))
                assert r3.status_code == 200 and r3.content == b"" and int(r3.headers["content-length"]) > 100
                assert (await c.get(srv.url("nobody"))).status_code == 404
                assert (await c.get(f"http://{srv.host}:{srv.port}/other")).status_code == 404
                r4 = await c.post(srv.url("root"), content=b"x")
                assert r4.status_code == 405 and r4.headers["allow"] == "GET, HEAD"
                # keep-alive: several requests above went over one connection; garbage gets a 400
                reader, writer = await asyncio.open_connection(srv.host, srv.port)
                writer.write(b"NOT HTTP\r\n\r\n")
                await writer.drain()
                assert (await reader.read(100)).startswith(b"HTTP/1.1 400")
                writer.close()

    asyncio.run(main())


def test_crl_http_server_source_failure_is_503() -> None:
    def broken() -> x509.CertificateRevocationList:
        raise RuntimeError("database down")

    async def main() -> None:
        async with CRLHTTPServer({"x": broken}) as srv:
            async with httpx.AsyncClient() as c:
                r = await c.get(srv.url("x"))
                assert r.status_code == 503 and b"database" not in r.content

    asyncio.run(main())
    with pytest.raises(ValueError):
        CRLHTTPServer({"../x": broken})


# ------------------------------------------------------------------ real processes


def test_serve_publishes_crls_and_revocations_from_other_processes(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp_path / "mef.kek")
    cfg = tmp_path / "mef.toml"
    base = f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "mef.kek"\n' \
           'host = "127.0.0.1"\nport = 0\n'
    cfg.write_text(base)
    r = CliRunner()
    assert r.invoke(app, ["est-ca", "--config", str(cfg), "--name", "MEF CA", "--permit-uri", SP]).exit_code == 0
    assert r.invoke(app, ["enrolee", "add", "--config", str(cfg), "--enrolee-id", ENROLEE, "--kpm-id", KPM_ID,
                          "--kpm-hex", KPM.hex()]).exit_code == 0
    assert r.invoke(app, ["enrolee", "est", "--config", str(cfg), "--enrolee-id", ENROLEE, "--flavour", "ae-id",
                          "--identifier", AE_ID]).exit_code == 0
    # the CRL port must be known for the distribution point: take a free one
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        crl_port = s.getsockname()[1]
    cfg.write_text(base + f'crl_port = {crl_port}\ncrl_base_url = "http://127.0.0.1:{crl_port}/crl"\n'
                   'crl_validity_s = 3600\n')
    proc = subprocess.Popen([sys.executable, "-m", "m2msec.mef.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening "), line + proc.stderr.read(2000).decode() if proc.poll() else line
        port = int(line.rsplit(":", 1)[1])
        assert proc.stdout.readline().decode().strip() == f"crl listening 127.0.0.1:{crl_port}"
        out = tmp_path / "device"
        res = r.invoke(app, ["est-enrol", "--mef", f"127.0.0.1:{port}", "--kpm-id", KPM_ID, "--kpm-hex", KPM.hex(),
                             "--out", str(out)])
        assert res.exit_code == 0, res.output
        chain = x509.load_pem_x509_certificates((out / "cert.pem").read_bytes())
        cert = chain[0]
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        url = cdp[0].full_name[0].value
        assert url == crl_url_for(f"http://127.0.0.1:{crl_port}/crl", "intermediate")
        crl0 = x509.load_der_x509_crl(httpx.get(url).content)
        assert cert.serial_number not in _serials(crl0)
        # another process (the admin CLI) revokes the enrolee; the running MEF publishes at the next request
        res = subprocess.run([sys.executable, "-m", "m2msec.mef.cli", "enrolee", "revoke", "--config", str(cfg),
                              "--enrolee-id", ENROLEE], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert f"certificate revoked: {cert.serial_number:x}" in res.stdout and "1 certificates revoked" in res.stdout
        got = httpx.get(url)
        crl1 = x509.load_der_x509_crl(got.content)
        assert cert.serial_number in _serials(crl1) and crl_number(crl1) == crl_number(crl0) + 1
        assert 3500 <= int(got.headers["cache-control"].split("max-age=")[1]) <= 3600
        root_crl = x509.load_der_x509_crl(httpx.get(crl_url_for(f"http://127.0.0.1:{crl_port}/crl", "root")).content)
        # est-crl writes the same CRLs; openssl verify -crl_check refuses the certificate with them
        res2 = r.invoke(app, ["est-crl", "--config", str(cfg), "--out", str(tmp_path / "crls.pem")])
        assert res2.exit_code == 0, res2.output
        written = load_crls((tmp_path / "crls.pem").read_bytes())
        assert {crl_number(c) for c in written} == {crl_number(crl1), crl_number(root_crl)}
        if shutil.which("openssl"):
            (tmp_path / "ca.pem").write_bytes((out / "trust-anchors.pem").read_bytes())
            (tmp_path / "inter.pem").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:]))
            v = subprocess.run(["openssl", "verify", "-crl_check_all", "-CAfile", str(tmp_path / "ca.pem"),
                                "-untrusted", str(tmp_path / "inter.pem"), "-CRLfile", str(tmp_path / "crls.pem"),
                                str(out / "cert.pem")], capture_output=True, text=True)
            assert v.returncode != 0 and "certificate revoked" in (v.stdout + v.stderr), v.stdout + v.stderr
        # est-revoke of an unknown serial and a DER without --signer are refused
        res3 = r.invoke(app, ["est-revoke", "--config", str(cfg), "--serial", "abcdef"])
        assert res3.exit_code == 2 and "no live certificate" in res3.output
        res4 = r.invoke(app, ["est-revoke", "--config", str(cfg), "--serial", f"{cert.serial_number:x}",
                              "--reason", "keyCompromise"])
        assert res4.exit_code == 2 and "already revoked" in res4.output
        res5 = r.invoke(app, ["est-revoke", "--config", str(cfg), "--serial", "abcdef", "--reason", "nonsense"])
        assert res5.exit_code == 2 and "unknown reason" in res5.output
        res6 = r.invoke(app, ["est-crl", "--config", str(cfg), "--out", str(tmp_path / "x.der"), "--der"])
        assert res6.exit_code == 2 and "--signer" in res6.output
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize("extra", ['crl_port = "80"\n', "crl_port = -1\n", 'crl_base_url = "ldap://x"\n',
                                   "crl_validity_s = 0\n"])
def test_bad_crl_options_are_refused(tmp_path: Path, extra: str) -> None:
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n' + extra)
    res = CliRunner().invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert res.exit_code == 2 and ("crl_" in res.output)


def test_crl_port_without_a_ca_is_refused(tmp_path: Path) -> None:
    kek = KeyEncryptionKey.generate()
    kek.write_file(tmp_path / "mef.kek")
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\nkek_file = "mef.kek"\n'
                   "crl_port = 0\n")
    res = CliRunner().invoke(app, ["serve", "--config", str(cfg)])
    assert res.exit_code == 2 and "no MEF CA" in res.output
    with open_store(f"sqlite:///{tmp_path / 'mef.db'}", kek) as store:
        assert store.list_records(NS_EST_CRL) == []
