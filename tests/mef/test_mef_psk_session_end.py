"""MEF PSK sessions end when their key does (TS-0003 8.3.2.1 MEF Key Retrieval by an enrolled
Enrolee B authenticated with its Kre; 8.3.2.1 enrolee revocation): on one keep-alive TLS-PSK
connection driven by the test, the MEF answers fetchCredentials until ``revoke_enrolee`` deletes
the Kre the handshake used; the next request on that same connection gets 4106 with
``Connection: close``, is audited, and the MEF closes the connection.  A session whose key is
unchanged is untouched by other enrolees' revocations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _h11_session import KeepAliveSession
from _mefhelp import ENROLEE, ENROLEE_B, KPM, KPM_ID, Clock, ThreadedMEF, configure_default, make_state, run

from m2msec.mef import EnroleeConfig, enrol, mef_tls_config
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.tls.engine import PSKCredentials

KPM_B_ID, KPM_B = "kpm-b", b"b" * 32


@pytest.fixture
def mef(tmp_path: Path) -> Any:
    clock = Clock()
    state = make_state(tmp_path, clock)
    configure_default(state)
    state.add_enrolee(EnroleeConfig(ENROLEE_B, kpm_id=KPM_B_ID, expiry_seconds=600), kpm=KPM_B)
    with ThreadedMEF(state) as m:
        m.clock = clock
        yield m
    state.store.close()


def _fetch_path(ke_id: str, suid: int = 22) -> str:
    return f"/fetchCredentials/{ke_id}/{suid}"


def test_revoking_an_enrolee_ends_its_open_kre_session(mef: ThreadedMEF) -> None:
    async def go() -> None:
        e = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), KPM)))
        eb = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(KPM_B_ID.encode(), KPM_B)))
        s = await KeepAliveSession.connect(mef.host, mef.port, mef_tls_config(psk=eb.reauth_psk()))
        try:
            origin = [("X-M2M-Origin", ENROLEE_B), ("X-M2M-RI", "r1")]
            status, rsc, hdrs, _ = await s.get(_fetch_path(e.ke_id), "mef", origin)
            assert (status, rsc) == (200, int(RSC.OK)) and hdrs.get(b"connection") != b"close"
            # another enrolee's revocation leaves this session alone
            mef.state.revoke_enrolee(ENROLEE)
            status, rsc, _, _ = await s.get(_fetch_path(e.ke_id), "mef", origin)
            assert rsc == int(RSC.NOT_FOUND)  # that enrolee's Ke is gone; the session itself goes on
            e2 = await enrol(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(KPM_B_ID.encode(), KPM_B)))
            assert e2.kre != eb.kre
            # re-enrolment created a new Kre; the session's own Kre is still live: unchanged
            status, rsc, _, _ = await s.get(_fetch_path(e.ke_id), "mef", origin)
            assert rsc == int(RSC.NOT_FOUND)
            mef.state.revoke_enrolee(ENROLEE_B)  # deletes every Kre of Enrolee B
            status, rsc, hdrs, body = await s.get(_fetch_path(e.ke_id), "mef", origin)
            assert (status, rsc) == (403, int(RSC.ORIGINATOR_NOT_AUTHENTICATED))
            assert hdrs.get(b"connection") == b"close"
            assert b"pre-shared key has been removed" in body
            assert await s.closed_by_server()
        finally:
            s.close()
        rows = [a for a in mef.state.store.list_audit(limit=None)
                if a.action == "request" and a.outcome == "refused" and a.subject == ENROLEE_B]
        assert rows and "this session has ended" in rows[0].details["why"]

    run(go)
