"""OCSP status checks of enrolee / Enrolment Target certificates by the MEF (TS-0003 8.1.2.2,
8.3.2.2; mef.toml ``[mef] enrolee_ocsp``).

A real MEFServer (in-process, and ``m2msec mef serve`` as a process) with a real responder (the
in-process RFC 6960 Appendix A server around the development CA's responder, counting requests,
or ``m2msec pki serve-ocsp``) and real enrolees over the certificate-based RSPF: a good
certificate enrols; a certificate revoked at the responder is refused in the handshake
(alert certificate_revoked) and no Enrolment Exchange happens; responder down: ``if-available``
enrols, ``require`` refuses; a forged response is no answer; answers are cached; the event loop
serves another enrolee while a query hangs; malformed keys exit 2.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _mef_process import MEFProcess  # noqa: E402
from _ocsp_peer import Responder  # noqa: E402
from _ocsp_proc import DevPKI, Leaf, OCSPServe, free_port, now  # noqa: E402

from m2msec.mef import EnroleeConfig, EnrolmentRequest, MEFServer, MEFState, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.cli import app  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki import PeerCertInfo  # noqa: E402
from m2msec.pki.ocsp_check import PeerOCSPChecker  # noqa: E402
from m2msec.store import KeyEncryptionKey, open_store  # noqa: E402
from m2msec.tls.engine import CertCredentials, TLSFailureReason, TLSHandshakeError  # noqa: E402

SP = "sp.example.com"
MEF_FQDN = "mef.example.com"
AE1, AE2, AE3 = (f"//{SP}/id-in/C{n}" for n in ("ocsp1", "ocsp2", "ocsp3"))


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = DevPKI(tmp, "Enrolee SP")
        self.mef_leaf = self.pki.issue(F.FQDN, MEF_FQDN, "mef")
        self.leaves: dict[str, Leaf] = {ae: self.pki.issue(F.AE_ID, ae, ae.rsplit("/", 1)[-1]) for ae in (AE1, AE2, AE3)}
        self.resp = Responder(self.pki)

    def state(self, checker: PeerOCSPChecker | None, revocation: str) -> MEFState:
        store = open_store(f"sqlite:///{self.tmp / 'mef.db'}", KeyEncryptionKey.generate(), clock=now)
        st = MEFState(store, MEF_FQDN, now, (self.pki.ca.trust_anchor,), revocation=revocation,  # type: ignore[arg-type]
                      enrolee_ocsp=checker)
        for ae in (AE1, AE2, AE3):
            st.add_enrolee(EnroleeConfig(ae, cert=PeerCertInfo(F.AE_ID, ae)))
        return st

    def server(self, state: MEFState) -> MEFServer:
        m = self.mef_leaf
        return MEFServer(state, credentials=CertCredentials(m.key, m.cert, m.chain))

    def tls(self, ae: str, staple: str = "off") -> object:
        a = self.leaves[ae]
        return mef_tls_config(credentials=CertCredentials(a.key, a.cert, a.chain), mef_fqdn=MEF_FQDN,
                              mef_anchors=(self.pki.ca.trust_anchor,), ocsp_staple=staple)

    async def enrol(self, port: int, ae: str) -> TLSHandshakeError | None:
        try:
            e = await enrol("127.0.0.1", port, self.tls(ae), EnrolmentRequest(), mef_fqdn=MEF_FQDN)  # type: ignore[arg-type]
            assert e.enrolee_id == ae
        except TLSHandshakeError as exc:
            return exc
        return None



def test_good_enrols_revoked_refused_cached(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.pki.ca.revoke(s.leaves[AE2].cert, reason=x509.ReasonFlags.key_compromise, now=now())

    async def go() -> None:
        await s.resp.server.start()
        checker = PeerOCSPChecker(clock=now, policy="if-available", url=s.resp.server.url, timeout=3)
        state = s.state(checker, "if-available")
        async with s.server(state) as srv:
            port = srv.address[1]
            assert await s.enrol(port, AE1) is None
            assert s.resp.count == 2  # leaf + intermediate
            assert await s.enrol(port, AE1) is None
            assert s.resp.count == 2  # held answers: no query
            err = await s.enrol(port, AE2)
            assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE
            assert "certificate revoked" in err.detail
            assert s.resp.count == 3
            assert any("revoked" in str(e) for e in srv.handshake_errors)
        enrolments = [e.subject for e in state.store.list_audit(limit=None) if e.action == "enrol"]
        assert enrolments == [AE1, AE1]  # no Enrolment Exchange of AE2 ever ran
        await s.resp.server.close()

    asyncio.run(go())


@pytest.mark.parametrize("revocation, ok", [("if-available", True), ("require", False)])
def test_responder_down(tmp_path: Path, revocation: str, ok: bool) -> None:
    s = Setup(tmp_path)

    async def go() -> None:
        checker = PeerOCSPChecker(clock=now, policy=revocation, url=f"http://127.0.0.1:{free_port()}/", timeout=2)
        async with s.server(s.state(checker, revocation)) as srv:
            err = await s.enrol(srv.address[1], AE1)
            if ok:
                assert err is None
            else:
                assert err is not None and "certificate unknown" in err.detail
            assert checker.queries == 2

    asyncio.run(go())


def test_forged_answer_is_no_answer_under_require(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.resp.mode = "forged-good"

    async def go() -> None:
        await s.resp.server.start()
        checker = PeerOCSPChecker(clock=now, policy="require", url=s.resp.server.url, timeout=3)
        async with s.server(s.state(checker, "require")) as srv:
            err = await s.enrol(srv.address[1], AE1)
            assert err is not None and "certificate unknown" in err.detail
            assert len(checker.store) == 0
            s.resp.mode = "real"
            assert await s.enrol(srv.address[1], AE1) is None
        await s.resp.server.close()

    asyncio.run(go())


def test_event_loop_serves_others_while_a_query_hangs(tmp_path: Path) -> None:
    s = Setup(tmp_path)

    async def go() -> None:
        await s.resp.server.start()
        checker = PeerOCSPChecker(clock=now, policy="if-available", url=s.resp.server.url, timeout=4)
        async with s.server(s.state(checker, "if-available")) as srv:
            port = srv.address[1]
            assert await s.enrol(port, AE1) is None  # AE1's answers (and the intermediate's) are held
            s.resp.mode = "hang"
            t0 = time.monotonic()
            slow = asyncio.create_task(s.enrol(port, AE3))
            while s.resp.count < 3:
                await asyncio.sleep(0.01)
            assert await s.enrol(port, AE1) is None
            assert time.monotonic() - t0 < 2.0 and not slow.done()
            s.resp.mode = "real"
            s.resp.release.set()
            assert await slow is None
        s.resp.release.set()
        await s.resp.server.close()

    asyncio.run(go())


# ------------------------------------------------------------------ mef serve + pki serve-ocsp


def _process_setup(tmp: Path, extra: str) -> tuple[Setup, MEFProcess]:
    s = Setup(tmp)
    mef = MEFProcess(tmp / "mef", MEF_FQDN)
    mef.config.write_text(mef.config.read_text().replace(
        "[mef]\n", f'[mef]\ncert = "{tmp / "mef.pem"}"\nkey = "{tmp / "mef.key"}"\n'
                   f'enrolee_trust_anchors = "{tmp / "root.pem"}"\n{extra}'))
    for ae in (AE1, AE2):
        mef.admin("enrolee", "add", "--enrolee-id", ae, "--cert-flavour", "ae-id", "--cert-id", ae)
    return s, mef


def test_mef_serve_with_pki_serve_ocsp(tmp_path: Path) -> None:
    ocsp_port = free_port()
    s, mef = _process_setup(tmp_path, f'revocation = "require"\nenrolee_ocsp = true\n'
                                      f'enrolee_ocsp_url = "http://127.0.0.1:{ocsp_port}/"\n'
                                      'enrolee_ocsp_timeout_s = 3\n')
    s.pki.revoke(s.leaves[AE2])  # m2msec pki revoke
    ocsp_srv = OCSPServe(s.pki, ocsp_port)
    try:
        with mef:
            assert asyncio.run(s.enrol(mef.port, AE1)) is None
            err = asyncio.run(s.enrol(mef.port, AE2))
            assert err is not None and err.reason is TLSFailureReason.BAD_CERTIFICATE
            assert "certificate revoked" in err.detail
            assert mef.proc is not None and mef.proc.poll() is None
    finally:
        ocsp_srv.stop()


@pytest.mark.parametrize(("extra", "message"), [
    ("enrolee_ocsp = 1\n", "enrolee_ocsp must be true or false"),
    ('enrolee_ocsp_url = "http://127.0.0.1:1/"\n', "enrolee_ocsp_url without enrolee_ocsp = true"),
    ('enrolee_ocsp = true\nrevocation = "off"\n', 'needs revocation = "if-available" or "require"'),
    ('enrolee_ocsp = true\nenrolee_ocsp_url = "ldap://x/"\n', "enrolee_ocsp_url must be an http:// or https:// URL"),
    ("enrolee_ocsp = true\nenrolee_ocsp_timeout_s = 10\n", "enrolee_ocsp_timeout_s must be a number"),
    ("enrolee_ocsp = true\nenrolee_ocsp_timeout_s = -1\n", "enrolee_ocsp_timeout_s must be a number"),
    ('enrolee_ocsp = true\nenrolee_ocsp_https_ca = "nope.pem"\n', "enrolee_ocsp_https_ca"),
    ("enrolee_oscp = true\n", "unknown key 'enrolee_oscp'"),
])
def test_configuration_errors(tmp_path: Path, extra: str, message: str) -> None:
    DevPKI(tmp_path)
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n' + extra)
    res = CliRunner().invoke(app, ["enrolee", "list", "--config", str(cfg)])
    assert res.exit_code == 2 and message in res.output, res.output


def test_configuration_accepted(tmp_path: Path) -> None:
    from m2msec.mef.cli import _load

    DevPKI(tmp_path)
    cfg = tmp_path / "mef.toml"
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n'
                   'revocation = "require"\nenrolee_ocsp = true\nenrolee_ocsp_url = "https://pki.example.com/ocsp"\n'
                   'enrolee_ocsp_https_ca = "root.pem"\nenrolee_ocsp_timeout_s = 1.5\n')
    mef = _load(cfg)
    st = mef["enrolee_ocsp"]
    assert st.url == "https://pki.example.com/ocsp" and st.timeout == 1.5
    assert st.https_ca == str((tmp_path / "root.pem").resolve())
    cfg.write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n')
    assert _load(cfg)["enrolee_ocsp"] is None
