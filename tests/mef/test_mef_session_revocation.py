"""Revocation during an established MEF session and the OCSP failure cache (TS-0003 8.1.2.2,
8.3.2.2; mef.toml ``[mef] enrolee_crl_files`` / ``enrolee_ocsp`` / ``enrolee_ocsp_failure_cache_s``).

A real MEFServer (in-process, injected clock), real certificate TLS (the certificate-based
RSPF), keep-alive HTTP/1.1 written with h11 by the test, the development CA's CRLs and a real
local responder that fails every query with HTTP 500 (counting its hits):

* an enrolee certificate revoked after the handshake (CRLs re-read as SIGHUP does) gets 4106
  ORIGINATOR_NOT_AUTHENTICATED / HTTP 403 with ``Connection: close`` on its next request of
  the same connection and the MEF closes the connection; the refusal is audited; another
  enrolee's session is still served; a PSK (Kpm) session is not watched;
* a failed query is reused within ``enrolee_ocsp_failure_cache_s`` and asked again after
  it; ``require`` refuses on it; 0 turns the cache off; the key is parsed and refused when
  malformed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _h11_session import KeepAliveSession, write_crls
from _ocsp_failing import FailingResponder, MovableClock
from _ocsp_proc import DevPKI, Leaf, now

from m2msec.mef import (
    EnroleeConfig,
    EnrolmentRequest,
    MEFServer,
    MEFState,
    enrol,
    mef_tls_config,
)
from m2msec.mef.cli import app
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import CRLStore, PeerCertInfo, load_crl_files
from m2msec.pki.cli import reload_crls_and_report
from m2msec.pki.ocsp_check import PeerOCSPChecker
from m2msec.store import KeyEncryptionKey, open_store
from m2msec.tls.engine import CertCredentials, PSKCredentials, TLSHandshakeError

SP = "sp.example.com"
MEF_FQDN = "mef.example.com"
AE1, AE2 = (f"//{SP}/id-in/C{n}" for n in ("sess1", "sess2"))
AE_PSK = f"//{SP}/id-in/Csesspsk"
KPM_ID = "kpm-sess@mef.example.com"
KPM = bytes(range(1, 33))


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = DevPKI(tmp, "Session SP")
        self.mef_leaf = self.pki.issue(F.FQDN, MEF_FQDN, "mef")
        self.leaves: dict[str, Leaf] = {ae: self.pki.issue(F.AE_ID, ae, ae.rsplit("/", 1)[-1]) for ae in (AE1, AE2)}
        self.crl_files = [str(tmp / "issuing.crl"), str(tmp / "root.crl")]

    def write_crls(self) -> None:
        write_crls(self.tmp, self.pki.ca)

    def state(self, *, crls: CRLStore | None = None, checker: PeerOCSPChecker | None = None,
              revocation: str = "require", clock: Any = now) -> MEFState:
        store = open_store(f"sqlite:///{self.tmp / 'mef.db'}", KeyEncryptionKey.generate(), clock=clock)
        st = MEFState(store, MEF_FQDN, clock, (self.pki.ca.trust_anchor,), enrolee_crls=crls,
                      revocation=revocation, enrolee_ocsp=checker)  # type: ignore[arg-type]
        for ae in (AE1, AE2):
            st.add_enrolee(EnroleeConfig(ae, cert=PeerCertInfo(F.AE_ID, ae)))
        st.add_enrolee(EnroleeConfig(AE_PSK, kpm_id=KPM_ID), kpm=KPM)
        return st

    def server(self, state: MEFState) -> MEFServer:
        m = self.mef_leaf
        return MEFServer(state, credentials=CertCredentials(m.key, m.cert, m.chain))

    def tls(self, ae: str | None) -> Any:
        if ae is None:
            return mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), KPM))
        a = self.leaves[ae]
        return mef_tls_config(credentials=CertCredentials(a.key, a.cert, a.chain), mef_fqdn=MEF_FQDN,
                              mef_anchors=(self.pki.ca.trust_anchor,))

    async def enrol(self, port: int, ae: str) -> TLSHandshakeError | None:
        try:
            e = await enrol("127.0.0.1", port, self.tls(ae), EnrolmentRequest(), mef_fqdn=MEF_FQDN)
            assert e.enrolee_id == ae
        except TLSHandshakeError as exc:
            return exc
        return None


class Session(KeepAliveSession):
    """One keep-alive MEF connection driven with h11 by the test."""

    @classmethod
    async def open(cls, port: int, tls: Any) -> Session:
        return await cls.connect("127.0.0.1", port, tls)

    async def enrol(self) -> tuple[int, int, dict[bytes, bytes], bytes]:
        return await self.post_json("/enrolment", MEF_FQDN, EnrolmentRequest().to_json(), [("X-M2M-RI", "rq-1")])


def test_crl_revocation_ends_the_session_of_that_enrolee_only(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.write_crls()
    crls = CRLStore(load_crl_files(s.crl_files))

    async def go() -> None:
        state = s.state(crls=crls)
        async with s.server(state) as srv:
            port = srv.address[1]
            s1, s2, sp = (await Session.open(port, s.tls(AE1)), await Session.open(port, s.tls(AE2)),
                          await Session.open(port, s.tls(None)))
            try:
                for x in (s1, s2, sp):
                    assert (await x.enrol())[:2] == (200, int(RSC.OK))
                checks = srv.session_guard.rechecks
                assert checks == 2  # the two certificate sessions' first requests; the PSK one has none
                # keep-alive, nothing changed: no check; the request is processed (the same
                # session's KeID is enrolled already: CONFLICT)
                assert (await s1.enrol())[:2] == (409, int(RSC.CONFLICT))
                assert srv.session_guard.rechecks == checks

                s.pki.ca.revoke(s.leaves[AE1].cert, reason=x509.ReasonFlags.key_compromise, now=now())
                s.write_crls()
                reload_crls_and_report(crls, s.crl_files)  # what SIGHUP does in `mef serve`

                status, rsc, headers, out = await s1.enrol()
                assert (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED))
                assert headers.get(b"connection") == b"close" and headers.get(b"x-m2m-ri") == b"rq-1"
                assert b"revoked" in out
                assert await s1.closed_by_server()
                assert (await s2.enrol())[:2] == (409, int(RSC.CONFLICT))  # AE2's session is still served
                assert (await sp.enrol())[:2] == (409, int(RSC.CONFLICT))  # the PSK session is not watched
                err = await s.enrol(port, AE1)  # a new handshake is refused by the same CRL
                assert err is not None and "certificate revoked" in err.detail
            finally:
                for x in (s1, s2, sp):
                    x.close()
        audit = state.store.list_audit(limit=None)
        refused = [e for e in audit if e.action == "request" and e.outcome == "refused"
                   and e.details.get("rsc") == int(RSC.ORIGINATOR_NOT_AUTHENTICATED)]
        assert [e.subject for e in refused] == [AE1]
        assert [e.subject for e in audit if e.action == "enrol"].count(AE1) == 1  # none after the revocation

    asyncio.run(go())


@pytest.mark.parametrize("revocation", ["if-available", "require"])
def test_failed_query_is_reused_within_the_window(tmp_path: Path, revocation: str) -> None:
    s = Setup(tmp_path)
    clock = MovableClock()
    bad = FailingResponder(500)

    async def go() -> None:
        checker = PeerOCSPChecker(clock=clock, policy=revocation, url=bad.url, timeout=2, failure_cache=30)
        async with s.server(s.state(checker=checker, revocation=revocation, clock=clock)) as srv:
            port = srv.address[1]
            for attempt in range(3):
                err = await s.enrol(port, AE1)
                if revocation == "require":
                    assert err is not None and "certificate unknown" in err.detail, attempt
                else:
                    assert err is None, attempt
                assert bad.count == 2  # leaf + intermediate, once
            assert checker.failures_reused == 4 and len(checker.store) == 0
            clock.advance(31)
            await s.enrol(port, AE1)
            assert bad.count == 4

    try:
        asyncio.run(go())
    finally:
        bad.close()


def test_failure_cache_off(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    bad = FailingResponder(503)

    async def go() -> None:
        checker = PeerOCSPChecker(clock=now, policy="require", url=bad.url, timeout=2, failure_cache=0)
        async with s.server(s.state(checker=checker)) as srv:
            for n in (1, 2):
                err = await s.enrol(srv.address[1], AE1)
                assert err is not None and "certificate unknown" in err.detail
                assert bad.count == 2 * n and checker.failures_reused == 0

    try:
        asyncio.run(go())
    finally:
        bad.close()


def _config(tmp: Path, extra: str) -> Path:
    DevPKI(tmp)
    cfg = tmp / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp / "mef.db"}"\n' + extra)
    return cfg


@pytest.mark.parametrize(("extra", "message"), [
    ("enrolee_ocsp = true\nenrolee_ocsp_failure_cache_s = -1\n", "enrolee_ocsp_failure_cache_s must be a number"),
    ("enrolee_ocsp = true\nenrolee_ocsp_failure_cache_s = 3601\n", "enrolee_ocsp_failure_cache_s must be a number"),
    ("enrolee_ocsp = true\nenrolee_ocsp_failure_cache_s = false\n", "enrolee_ocsp_failure_cache_s must be a number"),
    ("enrolee_ocsp_failure_cache_s = 5\n", "enrolee_ocsp_failure_cache_s without enrolee_ocsp = true"),
])
def test_malformed_failure_cache_exits_2(tmp_path: Path, extra: str, message: str) -> None:
    res = CliRunner().invoke(app, ["enrolee", "list", "--config", str(_config(tmp_path, extra))])
    assert res.exit_code == 2 and message in res.output, res.output


def test_failure_cache_values(tmp_path: Path) -> None:
    from m2msec.mef.cli import _load

    assert _load(_config(tmp_path, "enrolee_ocsp = true\n"))["enrolee_ocsp"].failure_cache == 30
    st = _load(_config(tmp_path, "enrolee_ocsp = true\nenrolee_ocsp_failure_cache_s = 0.5\n"))["enrolee_ocsp"]
    assert st.failure_cache == 0.5
    assert st.checker(clock=now, policy="require").failure_cache == 0.5
