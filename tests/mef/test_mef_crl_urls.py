"""CRLs fetched over HTTP by the MEF (``[mef] enrolee_crl_urls``, profile P13/P14) and the MEF's own
CRL endpoint as the source of :class:`m2msec.pki.CRLFetcher` (M21 with P13).

A real ``m2msec mef serve`` process fetches the enrolee PKI's CRL from a real HTTP server
(:class:`m2msec.pki.crl_http.CRLHTTPServer` on its own thread), refuses a revoked enrolee in the
certificate RSPF, and after the CA revokes another one and a SIGHUP, refuses that one too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _esthelp import World, make_world
from _mefhelp import ENROLEE, run
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mef_process import MEFProcess  # noqa: E402

from m2msec.mef import EnrolmentRequest, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.cli import app  # noqa: E402
from m2msec.mef.est_client import est_enrol  # noqa: E402
from m2msec.mef.est_crl import ESTCRLPublisher  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki import CRLFetcher, CRLStore, DevCA, FetchOutcome  # noqa: E402
from m2msec.pki.ca import private_key_pem  # noqa: E402
from m2msec.pki.crl import crl_number  # noqa: E402
from m2msec.pki.crl_http import CRLHTTPServer  # noqa: E402
from m2msec.tls.engine import CertCredentials  # noqa: E402

SP = "m2m.example.com"
MEF_FQDN = f"mef.{SP}"
GOOD_AE = f"//{SP}/id-in/Curl-good"
BAD_AE = f"//{SP}/id-in/Curl-bad"
PAST = datetime.now(UTC) - timedelta(hours=1)


class ThreadedCRLServer:
    """A CRLHTTPServer on its own event loop thread, serving ``self.crl``."""

    def __init__(self, crl: x509.CertificateRevocationList) -> None:
        self.crl = crl
        self.loop = asyncio.new_event_loop()
        self.server = CRLHTTPServer({"ca": lambda: self.crl})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedCRLServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _creds(issued: Any) -> CertCredentials:
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))


def _enrol(port: int, creds: CertCredentials, anchor: x509.Certificate) -> Any:
    tls = mef_tls_config(credentials=creds, mef_fqdn=MEF_FQDN, mef_anchors=(anchor,))
    return asyncio.run(asyncio.wait_for(enrol("127.0.0.1", port, tls, EnrolmentRequest(), mef_fqdn=MEF_FQDN), 20))


def _refused(port: int, creds: CertCredentials, anchor: x509.Certificate) -> str:
    try:
        _enrol(port, creds, anchor)
    except Exception as exc:  # noqa: BLE001 - the handshake failure is the expected outcome
        return str(exc)
    return ""


def test_serve_fetches_enrolee_crls_and_refetches_on_sighup(tmp_path: Path) -> None:
    ca = DevCA.create("Enrolee PKI", now=PAST, permit_dns=[SP], permit_uri=[SP], intermediate=True)
    mef_cert = ca.issue(F.FQDN, [MEF_FQDN], now=PAST)
    good, bad = ca.issue(F.AE_ID, [GOOD_AE], now=PAST), ca.issue(F.AE_ID, [BAD_AE], now=PAST)
    ca.revoke(bad.certificate, now=PAST + timedelta(minutes=1))
    pem = Encoding.PEM
    (tmp_path / "mef.cert.pem").write_bytes(b"".join(c.public_bytes(pem) for c in [mef_cert.certificate,
                                                                                   *mef_cert.chain]))
    (tmp_path / "mef.key.pem").write_bytes(private_key_pem(mef_cert.private_key))  # type: ignore[arg-type]
    (tmp_path / "enrolee-ca.pem").write_bytes(ca.trust_anchor.public_bytes(pem))
    (tmp_path / "enrolee-sub-ca.pem").write_bytes(ca.intermediate_cert.public_bytes(pem))  # type: ignore[union-attr]
    root_crl = ca.issue_crl(now=PAST + timedelta(minutes=2), signer="root")  # for the intermediate under require
    with ThreadedCRLServer(ca.issue_crl(now=PAST + timedelta(minutes=2))) as srv:
        root_srv = ThreadedCRLServer(root_crl)
        with root_srv:
            mef = MEFProcess(tmp_path, MEF_FQDN)
            mef.config.write_text(mef.config.read_text().replace(
                "[mef]\n", '[mef]\ncert = "mef.cert.pem"\nkey = "mef.key.pem"\nenrolee_trust_anchors = "enrolee-ca.pem"\n'
                           f'enrolee_crl_urls = ["{srv.server.url("ca")}", "{root_srv.server.url("ca")}"]\n'
                           'enrolee_crl_issuers = "enrolee-sub-ca.pem"\nrevocation = "require"\n'))
            for ae in (GOOD_AE, BAD_AE):
                mef.admin("enrolee", "add", "--enrolee-id", ae, "--cert-flavour", "ae-id", "--cert-id", ae)
            with mef:
                # the CRLs were fetched before the MEF listened: require is satisfied for the good one
                assert _enrol(mef.port, _creds(good), ca.trust_anchor).enrolee_id == GOOD_AE
                assert "certificate revoked" in _refused(mef.port, _creds(bad), ca.trust_anchor)
                # the CA revokes the good one; a SIGHUP makes the MEF fetch at once
                ca.revoke(good.certificate, now=PAST + timedelta(minutes=3))
                srv.crl = ca.issue_crl(now=PAST + timedelta(minutes=4))
                os.kill(mef.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
                deadline = time.monotonic() + 15
                why = ""
                while time.monotonic() < deadline:
                    why = _refused(mef.port, _creds(good), ca.trust_anchor)
                    if why:
                        break
                    time.sleep(0.2)
                # refused at the handshake, or (the fetch landing between a handshake and its
                # first request, profile P26) that session's first request
                assert "certificate revoked" in why or "the certificate of this session has been revoked" in why
                assert mef.proc.poll() is None  # type: ignore[union-attr]


@pytest.mark.parametrize("extra", ['enrolee_crl_urls = ["ftp://x/y.crl"]\n', "enrolee_crl_urls = 5\n",
                                   "enrolee_crl_issuers = 3\n", "enrolee_crl_refresh_s = 0\n"])
def test_bad_fetch_options_are_refused(tmp_path: Path, extra: str) -> None:
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n' + extra)
    res = CliRunner().invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert res.exit_code == 2 and "enrolee_crl_" in res.output


# ------------------------------------------------------------------ the MEF's CRLs as a fetch source


@pytest.fixture
def w(tmp_path: Path) -> World:
    world = make_world(tmp_path)
    yield world
    world.state.store.close()


def test_fetcher_reads_the_mef_crl_endpoint_with_etags(w: World) -> None:
    with w.mef() as m:
        _, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    pub = ESTCRLPublisher(w.state.store, w.ca, w.clock)

    async def main() -> None:
        async with CRLHTTPServer({s: (lambda s=s: pub.crl(s)) for s in pub.signers}, clock=w.clock) as srv:
            store = CRLStore()
            fetcher = CRLFetcher(store, [w.ca.trust_anchor, w.ca.intermediate_cert], clock=w.clock)
            first = await fetcher.fetch(srv.url("intermediate"))
            assert first.outcome is FetchOutcome.UPDATED, first.error
            again = await fetcher.fetch(srv.url("intermediate"))
            assert again.outcome is FetchOutcome.NOT_MODIFIED  # If-None-Match -> 304
            gen = store.generation
            w.state.revoke_enrolee(ENROLEE)  # the enrolee's EST certificate goes on the next CRL
            third = await fetcher.fetch(srv.url("intermediate"))
            assert third.outcome is FetchOutcome.UPDATED and store.generation > gen
            (held,) = store.for_issuer(w.ca.intermediate_cert.subject)
            assert crl_number(held) == 2
            assert held.get_revoked_certificate_by_serial_number(prov.certificate.serial_number) is not None
            # a CRL of another CA on the same endpoint name is refused and the held one stays
            other = DevCA.create("Other", now=PAST, permit_uri=[SP])
            bogus = CRLHTTPServer({"intermediate": lambda: other.issue_crl(now=PAST)})
            async with bogus:
                bad = await fetcher.fetch(bogus.url("intermediate"))
            assert bad.outcome is FetchOutcome.FAILED and store.for_issuer(w.ca.intermediate_cert.subject) == (held,)

    asyncio.run(main())
