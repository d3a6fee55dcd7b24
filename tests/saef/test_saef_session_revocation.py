"""Certificate status of *established* SAEF associations in :class:`m2msec.saef.http.SAEFHTTPServer`
(TS-0003 8.1.2.2 for the Certificate-Based SAEF of 8.2.2.2; TS-0004 7.3 ORIGINATOR_NOT_AUTHENTICATED;
profile P26), in process.

A real combined PSK + certificate SAEF server endpoint (``combined_server``) with two AE
Association Configurations over one :class:`~m2msec.pki.CRLStore`, ``session_check =
AssociationSessionCheck``, real TLS 1.2 associations held open by the test (raw h11, so that the
``Connection: close`` and the server's close are seen): after the CA revokes one AE and the store
gets the new CRL (as a refresh or SIGHUP does), that AE's next request on the same connection is
answered 4106 / HTTP 403 in the TS-0009 form with its X-M2M-RI echoed and ``Connection: close``,
never reaches the handler, and the connection is closed; the other AE and a PSK association go
on; without a store change nothing is re-checked; associations under ``revocation = "off"``, PSK
associations and servers without ``session_check`` are not watched; a failing ``session_check``
closes the connection before any request is served."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _saef_keepalive import SAEFKeepAlive

from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import (
    CertificateFlavour,
    CRLStore,
    DevCA,
    IssuedCertificate,
    PeerCertInfo,
)
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    InMemoryKpsaDirectory,
    KpsaEntry,
    PeerKind,
    SecurityContext,
    certificate_client,
    certificate_server,
    combined_server,
    psk_client,
    psk_server,
)
from m2msec.saef.framework import SAEFEndpoint
from m2msec.saef.http import SAEFHTTPServer
from m2msec.saef.status import AssociationSessionCheck

SP = "m2m.example.com"
CSI = "/id-in"
BASE = "/id-in/cse-in"
GOOD, BAD, OFF, PSK = "Cgood", "Cbad", "Coff", "Cpsk"
KID = "sess@sp.m2m.example.com"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Recorder:
    """The hosting CSE: remembers the Request Identifiers it was given, answers 2000."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, req: RequestPrimitive, ctx: SecurityContext) -> ResponsePrimitive:
        self.seen.append(req.rqi)
        return ResponsePrimitive(rsc=RSC.OK, rqi=req.rqi, rvi=req.rvi, pc={"m2m:dbg": ctx.peer_id})


@dataclass
class PKI:
    ca: DevCA
    cse: IssuedCertificate
    ae: dict[str, IssuedCertificate]
    kpsa: bytes

    def crls(self) -> list[x509.CertificateRevocationList]:
        now = utc_now()
        return [self.ca.issue_crl(now=now), self.ca.issue_crl(now=now, signer="root")]

    def revoke(self, ae: str) -> None:
        self.ca.revoke(self.ae[ae].certificate, now=utc_now(), reason=x509.ReasonFlags.key_compromise)

    def client(self, ae: str) -> SAEFEndpoint:
        if ae == PSK:
            return psk_client(KpsaEntry(KID, self.kpsa), id_b=CSI)
        assoc = AssociationConfiguration.entity_a(
            id_b=CSI, cert_name_b=PeerCertInfo(CertificateFlavour.CSE_ID, f"in.{SP}"),
            root_of_trust_b=[self.ca.trust_anchor])
        return certificate_client(CredentialConfiguration.from_issued(self.ae[ae]), assoc, clock=utc_now)


@pytest.fixture
def pki() -> PKI:
    t0 = utc_now() - timedelta(hours=1)
    ca = DevCA.create("SAEF session SP", now=t0, intermediate=True)
    aes = {ae: ca.issue(CertificateFlavour.AE_ID, [f"//{SP}{CSI}/{ae}"], now=t0) for ae in (GOOD, BAD, OFF)}
    return PKI(ca, ca.issue(CertificateFlavour.CSE_ID, [f"in.{SP}"], now=t0), aes, os.urandom(32))


def server_endpoint(pki: PKI, store: CRLStore) -> SAEFEndpoint:
    def assoc(ae: str, revocation: str = "if-available") -> AssociationConfiguration:
        return AssociationConfiguration.entity_b(
            cert_name_a=PeerCertInfo(CertificateFlavour.AE_ID, f"//{SP}{CSI}/{ae}"),
            root_of_trust_a=[pki.ca.trust_anchor], id_a=ae, peer_kind=PeerKind.AE, crls=store,
            revocation=revocation)

    cert = certificate_server(CredentialConfiguration.from_issued(pki.cse, CSI),
                              [assoc(GOOD), assoc(BAD), assoc(OFF, "off")], clock=utc_now)
    psk = psk_server(InMemoryKpsaDirectory([KpsaEntry(KID, pki.kpsa, peer_id=PSK, peer_kind=PeerKind.AE)]))
    return combined_server(psk, cert)


@asynccontextmanager
async def serving(pki: PKI, store: CRLStore, **kw: Any) -> AsyncIterator[tuple[SAEFHTTPServer, Recorder]]:
    rec = Recorder()
    async with SAEFHTTPServer(server_endpoint(pki, store), rec, cse_id=CSI, sp_id=f"//{SP}", **kw) as srv:
        yield srv, rec


def retrieve(ae: str, rqi: str) -> RequestPrimitive:
    return RequestPrimitive(op=Operation.RETRIEVE, to=BASE, fr=ae, rqi=rqi, rvi="3")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_certificate_revoked_after_the_handshake_ends_its_association(pki: PKI) -> None:
    async def go() -> None:
        store = CRLStore(pki.crls())
        check = AssociationSessionCheck(clock=utc_now)
        async with serving(pki, store, session_check=check) as (srv, rec):
            host, port = srv.address
            s = {ae: await SAEFKeepAlive.connect(pki.client(ae), host, port) for ae in (GOOD, BAD, PSK)}
            try:
                for ae in (GOOD, BAD, PSK):
                    for i in range(3):
                        assert (await s[ae].send(retrieve(ae, f"{ae}-{i}"))).rsc == 2000
                assert s[PSK].ctx.framework == "psk" and s[BAD].ctx.framework == "certificate"
                assert check.watched == 2  # GOOD and BAD; the PSK association pays nothing
                guards = list(check._guards.values())
                assert len(guards) == 1  # one store pair, one guard
                assert guards[0].rechecks == 2  # once per certificate association: no change since

                pki.revoke(BAD)
                store.replace(pki.crls())  # what a CRL refresh or SIGHUP does to the store in force

                a = await s[BAD].send(retrieve(BAD, "bad-after"))
                assert (a.status, a.rsc) == (403, 4106)
                assert a.headers["connection"].lower() == "close"
                assert a.headers["x-m2m-ri"] == "bad-after"  # TS-0009 form, Request Identifier echoed
                assert b"revoked" in a.body and b"m2m:dbg" in a.body
                assert await s[BAD].closed_by_server()
                assert srv.session_refusals == [(BAD, BAD, 4106)]
                assert srv.rejections == []  # not a 7.2.1 From refusal

                for ae in (GOOD, PSK):  # the others keep their associations
                    assert (await s[ae].send(retrieve(ae, f"{ae}-after"))).rsc == 2000
                assert "bad-after" not in rec.seen and "Cgood-after" in rec.seen and "Cpsk-after" in rec.seen
                assert guards[0].rechecks == 4  # BAD and GOOD once more after the store changed
                for i in range(3):
                    assert (await s[GOOD].send(retrieve(GOOD, f"again-{i}"))).rsc == 2000
                assert guards[0].rechecks == 4
            finally:
                for sess in s.values():
                    sess.close()

    run(go())


def test_refusal_without_request_identifier_and_a_new_handshake_is_refused(pki: PKI) -> None:
    async def go() -> None:
        store = CRLStore(pki.crls())
        async with serving(pki, store, session_check=AssociationSessionCheck(clock=utc_now)) as (srv, rec):
            host, port = srv.address
            s = await SAEFKeepAlive.connect(pki.client(BAD), host, port)
            try:
                assert (await s.send(retrieve(BAD, "b1"))).rsc == 2000
                pki.revoke(BAD)
                store.replace(pki.crls())
                a = await s.send(retrieve(BAD, "b2"), drop=("x-m2m-ri",))  # malformed request: still 4106
                assert (a.status, a.rsc, a.headers["connection"].lower()) == (403, 4106, "close")
                assert await s.closed_by_server()
            finally:
                s.close()
            with pytest.raises(Exception, match="(?i)revoked"):  # the handshake checks the same store
                await SAEFKeepAlive.connect(pki.client(BAD), host, port)
            assert rec.seen == ["b1"]

    run(go())


def test_unwatched_associations_and_servers(pki: PKI) -> None:
    """revocation = "off" and PSK: no per-request check; no session_check: nothing is checked."""

    async def go() -> None:
        store = CRLStore(pki.crls())
        check = AssociationSessionCheck(clock=utc_now)
        async with serving(pki, store, session_check=check) as (srv, _rec):
            host, port = srv.address
            off = await SAEFKeepAlive.connect(pki.client(OFF), host, port)
            try:
                assert (await off.send(retrieve(OFF, "o1"))).rsc == 2000
                pki.revoke(OFF)
                store.replace(pki.crls())
                assert (await off.send(retrieve(OFF, "o2"))).rsc == 2000  # its handshake ignores status too
                assert check.watched == 0
            finally:
                off.close()
        async with serving(pki, store) as (srv, rec):  # a server without session_check
            host, port = srv.address
            bad = await SAEFKeepAlive.connect(pki.client(BAD), host, port)
            try:
                assert (await bad.send(retrieve(BAD, "b1"))).rsc == 2000
                pki.revoke(BAD)
                store.replace(pki.crls())
                assert (await bad.send(retrieve(BAD, "b2"))).rsc == 2000
                assert rec.seen == ["b1", "b2"]
            finally:
                bad.close()

    run(go())


def test_a_failing_session_check_closes_the_connection_unserved(pki: PKI) -> None:
    def broken(ctx: SecurityContext) -> None:
        raise RuntimeError("status sources unreadable")

    async def go() -> None:
        async with serving(pki, CRLStore(pki.crls()), session_check=broken) as (srv, rec):
            host, port = srv.address
            s = await SAEFKeepAlive.connect(pki.client(GOOD), host, port)
            try:
                assert await s.closed_by_server()
            finally:
                s.close()
            assert rec.seen == []

    run(go())

