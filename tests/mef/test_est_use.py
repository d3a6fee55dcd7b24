"""The MEF-provisioned certificate in use: a certificate SAEF handshake (TS-0003 8.2.2.2) and an
ESCertKE procedure (8.7) authenticate the enrolee with the certificate it got over EST."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _esthelp import AE_ID, World, make_world
from _mefhelp import run

from m2msec.escertke import ESCertKEError, ESCertKEKeys, InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint, TerminatorInfo
from m2msec.mef.est_client import ProvisionedCertificate, est_enrol, load_installed
from m2msec.pki import CertificateFlavour as F
from m2msec.pki import DevCA, PeerCertInfo
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    certificate_client,
    certificate_server,
    connect,
    serve,
)
from m2msec.tls import TLSHandshakeError
from m2msec.tls.engine import CertCredentials

SP = "m2m.example.com"
IN_NAME, IN_ID = f"in.{SP}", "/id-in"
TER_CERT_ID, TER_ID = f"https://{SP}/id-in/Cae-ter", "Cae-ter"


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, ProvisionedCertificate]:
    tmp = tmp_path_factory.mktemp("est-use")
    w = make_world(tmp)
    with w.mef() as m:
        _, prov = run(lambda: est_enrol(m.host, m.port, w.psk_tls()))
    prov.install(tmp / "installed")
    yield w, load_installed(tmp / "installed")  # what the device has after installation
    w.state.store.close()


def issue(ca: DevCA, w: World, flavour: F, ident: str) -> CertCredentials:
    got = ca.issue(flavour, [ident], now=w.clock())
    return CertCredentials(got.private_key, got.certificate, tuple(got.chain))


def test_certificate_saef(enrolled: tuple[World, ProvisionedCertificate]) -> None:
    w, prov = enrolled
    cse = issue(w.ca, w, F.CSE_ID, IN_NAME)
    anchors = list(prov.trust_anchors)  # installed from /cacerts
    client = certificate_client(
        CredentialConfiguration(prov.private_key, prov.certificate, prov.chain, AE_ID),
        AssociationConfiguration.entity_a(id_a=AE_ID, id_b=IN_ID, cert_name_b=PeerCertInfo(F.CSE_ID, IN_NAME),
                                          root_of_trust_b=anchors), clock=w.clock)
    server = certificate_server(
        CredentialConfiguration(cse.private_key, cse.certificate, cse.chain, IN_ID),
        [AssociationConfiguration.entity_b(id_a=AE_ID, cert_name_a=PeerCertInfo(F.AE_ID, AE_ID),
                                           root_of_trust_a=[w.ca.trust_anchor], id_b=IN_ID)], clock=w.clock)

    async def go() -> tuple[Any, Any, bytes]:
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: Any, ctx: Any) -> None:
            got.set_result(ctx)
            writer.write(await reader.read(100))
            await writer.drain()

        srv = await serve(server, handler)
        try:
            reader, writer, cctx = await connect(client, "127.0.0.1", srv.sockets[0].getsockname()[1])
            writer.write(b"hello from an EST certificate")
            echoed = await reader.read(100)
            writer.close()
            return cctx, await got, echoed
        finally:
            srv.close()

    cctx, sctx, echoed = run(go)
    assert echoed == b"hello from an EST certificate"
    assert sctx.peer_id == AE_ID and sctx.verified_chain[0] == prov.certificate
    assert sctx.verified_chain[-1] == w.ca.trust_anchor and cctx.peer_id == IN_ID

    # a certificate SAEF that expects another AE-ID refuses the enrolee
    wrong = certificate_server(
        CredentialConfiguration(cse.private_key, cse.certificate, cse.chain, IN_ID),
        [AssociationConfiguration.entity_b(id_a=f"//{SP}/id-in/Cother", cert_name_a=PeerCertInfo(F.AE_ID,
                                           f"//{SP}/id-in/Cother"), root_of_trust_a=[w.ca.trust_anchor],
                                           id_b=IN_ID)], clock=w.clock)
    server = wrong
    with pytest.raises(TLSHandshakeError):
        run(go)


def test_escertke(enrolled: tuple[World, ProvisionedCertificate]) -> None:
    w, prov = enrolled
    ter_creds = issue(w.ca, w, F.AE_ID, TER_CERT_ID)
    ini = InitiatingEndPoint(prov.credentials(), clock=w.clock, keys=ESCertKEKeys(clock=w.clock))
    ter = TerminatingEndPoint(ter_creds, [InitiatorInfo(PeerCertInfo(F.AE_ID, AE_ID), (w.ca.trust_anchor,),
                                                        identity="Cdevice1")],
                              clock=w.clock, keys=ESCertKEKeys(clock=w.clock))
    proc = ini.initiate(TerminatorInfo(PeerCertInfo(F.AE_ID, TER_CERT_ID), prov.trust_anchors, identity=TER_ID))
    m2 = ter.handle("Cdevice1", proc.message_1())
    m3 = proc.receive_message_2(m2)
    res = proc.receive_message_4(ter.handle("Cdevice1", m3))
    tres = ter.keys.for_peer("Cdevice1")
    assert tres is not None and tres.key == res.key and len(res.key) == 32
    assert tres.peer is not None and tres.peer.identifier.endswith("Cdevice1")

    # a terminator that expects another initiator identifier refuses the EST certificate
    other = TerminatingEndPoint(ter_creds, [InitiatorInfo(PeerCertInfo(F.AE_ID, f"//{SP}/id-in/Cother"),
                                                          (w.ca.trust_anchor,), identity="Cdevice1")],
                                clock=w.clock, keys=ESCertKEKeys(clock=w.clock))
    proc = ini.initiate(TerminatorInfo(PeerCertInfo(F.AE_ID, TER_CERT_ID), prov.trust_anchors, identity=TER_ID))
    m2 = other.handle("Cdevice1", proc.message_1())
    m3 = proc.receive_message_2(m2)
    with pytest.raises(ESCertKEError):
        other.handle("Cdevice1", m3)
