"""The MEF test matrix: every Remote Security Provisioning Framework (TS-0003 8.3.2.1 Pre-Provisioned
Symmetric Key, 8.3.2.2 Certificate-Based, 8.3.2.3 GBA-Based) through every use of the provisioned Ke
(8.3.2.1 "Use of Remotely Provisioned Credential", 10.3.7), with real processes on 127.0.0.1:

* ``maf``    — MAF Enrolment Instruction, MAF Handshake with KeID/Km, the ``m2msec maf serve``
               process fetching Km from the MEF (SUID 21) and registering the Enrolee-ID (8.8.3);
* ``saef``   — direct Kpsa: Enrolee B's PSK-SAEF server fetches Kpsa for the unknown KeID from the
               MEF (SUID 22) and completes the TLS-PSK handshake with the enrolee (8.2.2.2);
* ``esprim`` — the provisioned pairwiseESPrimKey (SUID 23) through ``m2msec gateway`` + ACME, the
               gateway fetching it from the MEF on first sight of the KeID (8.4.2 phase A).

One ``m2msec mef serve`` process serves all three RSPFs (Kpm enrolee, certificate enrolee with the
MEF's certificate and the enrolees' trust anchor, GBA enrolee with ``[gba]`` against a
``m2msec mef bsf-sim`` process). Each RSPF has a fixture producing a fresh enrolment; the flows are
parametrized over them, so the test ids read ``test_<flow>[<rspf>]``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "gateway"))

from _gateway_support import GatewayProcess, running_acme, write_config  # noqa: E402
from _mef_process import BSFSimProcess, MAFWithMEFProcess, MEFProcess  # noqa: E402

from m2msec.esprim import Originator, PairwiseKey  # noqa: E402
from m2msec.esprim.transport import OuterResponseError, SecureOriginator  # noqa: E402
from m2msec.keys import derive_km, derive_kpsa, derive_usage_key  # noqa: E402
from m2msec.maf import MAFClient, MAFClientConfig  # noqa: E402
from m2msec.mef import Enrolment, EnrolmentRequest, MEFKeyFetcher, MEFKpsaDirectory, enrol, mef_tls_config  # noqa: E402
from m2msec.mef.gba import ub_bootstrap  # noqa: E402
from m2msec.net.acme import AcmeCSE  # noqa: E402
from m2msec.net.client import AsyncOneM2MClient, OneM2MClient  # noqa: E402
from m2msec.onem2m import Operation, RequestPrimitive, ResourceType, ResponseStatusCode  # noqa: E402
from m2msec.onem2m.enums import SUID  # noqa: E402
from m2msec.onem2m.primitives import new_request_id  # noqa: E402
from m2msec.pki import CertificateFlavour as F  # noqa: E402
from m2msec.pki import DevCA  # noqa: E402
from m2msec.pki.ca import private_key_pem  # noqa: E402
from m2msec.saef import InMemoryKpsaDirectory, connect, psk_client, psk_server, serve  # noqa: E402
from m2msec.saef.config import KpsaEntry  # noqa: E402
from m2msec.store import KeyEncryptionKey  # noqa: E402
from m2msec.tls import TLSHandshakeError  # noqa: E402
from m2msec.tls.engine import CertCredentials, PSKCredentials  # noqa: E402

RSC = ResponseStatusCode
RSPFS = ("psk", "cert", "gba")
SP = "m2m.example.com"
MEF_FQDN = f"mef.{SP}"
MAF_FQDN = f"maf.{SP}"
ADMIN_FQDN = f"admin.{SP}"
ENROLEE_B = f"//{SP}/id-in/CmatrixB"
CSE = "/id-in"  # the ACME CSE-ID (AcmeCSE default), the ESPrim Target
TAG = secrets.token_hex(3)
# the enrolee of each RSPF (Enrolee-IDs the MEF returns)
PSK_AE = f"Cmx-psk-{TAG}"
CERT_AE = f"//{SP}/id-in/Cmx-cert-{TAG}"  # an AE-ID certificate names the Absolute-AE-ID
GBA_AE = f"Cmx-gba-{TAG}"
KPM_ID, KPM = "kpm-matrix", "5e" * 32
IMPI, GBA_K = "001010000000077@ims.mnc001.mcc001.3gppnetwork.org", "8f" * 32
NAF_TOKEN = "zn-token-matrix"
B_PSK, MAF_PSK, CSE_PSK = "1b" * 32, "2c" * 32, "3d" * 32


def run(coro: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class MEFWorld:
    mef: MEFProcess
    bsf: BSFSimProcess
    ca: DevCA
    mef_anchor: Any
    cert_ae: CertCredentials


@dataclass
class Enrolled:
    rspf: str
    enrolment: Enrolment


def _creds(issued: Any) -> CertCredentials:
    return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MEFWorld]:
    d = tmp_path_factory.mktemp("mef")
    past = datetime.now(UTC) - timedelta(hours=1)
    ca = DevCA.create("Matrix SP", now=past, permit_dns=[SP], permit_uri=[SP])
    mef_cert = ca.issue(F.FQDN, [MEF_FQDN], now=past)
    (d / "mef.cert.pem").write_bytes(b"".join(c.public_bytes(Encoding.PEM)
                                              for c in (mef_cert.certificate, *mef_cert.chain)))
    (d / "mef.key.pem").write_bytes(private_key_pem(mef_cert.private_key))  # type: ignore[arg-type]
    (d / "enrolee-ca.pem").write_bytes(ca.trust_anchor.public_bytes(Encoding.PEM))
    with BSFSimProcess({IMPI: GBA_K}, {MEF_FQDN: NAF_TOKEN}) as bsf:
        mef = MEFProcess(d, MEF_FQDN)
        mef.config.write_text(mef.config.read_text().replace(
            "[mef]\n", '[mef]\ncert = "mef.cert.pem"\nkey = "mef.key.pem"\nenrolee_trust_anchors = "enrolee-ca.pem"\n')
            + f'[gba]\nbsf_url = "{bsf.url}"\nnaf_token = "{NAF_TOKEN}"\n')
        grants = ["--target", f"{ENROLEE_B}=22", "--target", f"{CSE}=23",
                  "--maf", f"{MAF_FQDN},https://{MAF_FQDN}/keyReg,https://{MAF_FQDN}/keyRetr,https://{MAF_FQDN}/clientReg"]
        mef.admin("enrolee", "add", "--enrolee-id", PSK_AE, "--kpm-id", KPM_ID, "--kpm-hex", KPM, *grants)
        mef.admin("enrolee", "add", "--enrolee-id", CERT_AE, "--cert-flavour", "ae-id", "--cert-id", CERT_AE, *grants)
        mef.admin("enrolee", "add", "--enrolee-id", GBA_AE, "--gba-impi", IMPI, *grants)
        for target, psk_id, psk in ((ENROLEE_B, "b-psk", B_PSK), (MAF_FQDN, "maf-psk", MAF_PSK),
                                    (CSE, "cse-psk", CSE_PSK)):
            mef.admin("target", "add", "--target-id", target, "--psk-id", psk_id, "--psk-hex", psk)
        with mef:
            yield MEFWorld(mef, bsf, ca, ca.trust_anchor, _creds(ca.issue(F.AE_ID, [CERT_AE], now=past)))


def _enrol(world: MEFWorld, tls: Any, rspf: str) -> Enrolled:
    e = run(enrol("127.0.0.1", world.mef.port, tls, EnrolmentRequest(maf_enrolment=True), mef_fqdn=MEF_FQDN))
    assert e.ke_id.endswith("@" + MEF_FQDN) and len(e.ke) == 32
    return Enrolled(rspf, e)


@pytest.fixture
def psk_enrolee(world: MEFWorld) -> Enrolled:
    """Pre-Provisioned Symmetric Key RSPF: the MEF Handshake is TLS-PSK with KpmID/Kpm."""
    e = _enrol(world, mef_tls_config(psk=PSKCredentials(KPM_ID.encode(), bytes.fromhex(KPM))), "psk")
    assert e.enrolment.enrolee_id == PSK_AE
    return e


@pytest.fixture
def cert_enrolee(world: MEFWorld) -> Enrolled:
    """Certificate-Based RSPF: mutual certificate TLS (the MEF's FQDN certificate, the enrolee's AE-ID one)."""
    tls = mef_tls_config(credentials=world.cert_ae, mef_fqdn=MEF_FQDN, mef_anchors=(world.mef_anchor,))
    e = _enrol(world, tls, "cert")
    assert e.enrolment.enrolee_id == CERT_AE
    return e


@pytest.fixture
def gba_enrolee(world: MEFWorld) -> Enrolled:
    """GBA-Based RSPF: Ub bootstrapping with the BSF process, then TLS-PSK with B-TID/Ks_NAF."""
    boot = ub_bootstrap(world.bsf.url, IMPI, bytes.fromhex(GBA_K))
    e = _enrol(world, mef_tls_config(psk=boot.psk(MEF_FQDN)), "gba")
    assert e.enrolment.enrolee_id == GBA_AE
    return e


@pytest.fixture(params=RSPFS)
def enrolee(request: pytest.FixtureRequest) -> Enrolled:
    return request.getfixturevalue(f"{request.param}_enrolee")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def maf(world: MEFWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MAFWithMEFProcess]:
    p = MAFWithMEFProcess(tmp_path_factory.mktemp("maf"), maf_fqdn=MAF_FQDN, admin_fqdn=ADMIN_FQDN,
                          mef_fqdn=MEF_FQDN, mef_port=world.mef.port, psk_identity="maf-psk", psk_hex=MAF_PSK)
    try:
        yield p
    finally:
        p.stop()


def test_maf_registration_with_keid(enrolee: Enrolled, maf: MAFWithMEFProcess) -> None:
    """enrol → MAF Enrolment Instruction → MAF Handshake with KeID/Km (the MAF fetches Km) → registration."""
    e = enrolee.enrolment
    (ins,) = e.instructions
    assert ins.params["MAFID"] == MAF_FQDN
    km = e.km(MAF_FQDN)
    assert km == derive_km(e.ke, MAF_FQDN)

    def client(identity: str, key: bytes) -> MAFClient:
        return MAFClient(MAFClientConfig(MAF_FQDN, ADMIN_FQDN, "127.0.0.1", maf.port,
                                         psk=PSKCredentials(identity.encode(), key)))

    async def go() -> None:
        with pytest.raises(TLSHandshakeError):  # right KeID, a Km other than the one derived from Ke
            async with client(e.ke_id, derive_km(os.urandom(32), MAF_FQDN)):
                pass
        async with client(e.ke_id, km) as c:
            reg = await c.register(datetime.now(UTC) + timedelta(days=1))
        assert reg.maf_client_id == e.enrolee_id and reg.assigned_symm_key_id.endswith("@" + MAF_FQDN)
        async with client(reg.assigned_symm_key_id, km) as c:  # the assigned KmID, same Km
            key = await c.register_key(SUID.MAF_ESDATA_SIGN, ["//x/a"], datetime.now(UTC) + timedelta(hours=1))
        assert key.response.source_maf_client_id == e.enrolee_id

    run(go())


def test_direct_kpsa_psk_saef(enrolee: Enrolled, world: MEFWorld) -> None:
    """enrol → direct Kpsa → Enrolee B fetches it from the MEF (SUID 22) → PSK-SAEF handshake."""
    e = enrolee.enrolment
    fetcher = MEFKeyFetcher("127.0.0.1", world.mef.port,
                            mef_tls_config(psk=PSKCredentials(b"b-psk", bytes.fromhex(B_PSK))),
                            target_id=ENROLEE_B, mef_fqdn=MEF_FQDN)
    directory = MEFKpsaDirectory(fetcher, InMemoryKpsaDirectory())

    async def go() -> Any:
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(reader: Any, writer: Any, ctx: Any) -> None:
            if not got.done():
                got.set_result(ctx)
            writer.write(await reader.read(100))
            await writer.drain()

        srv = await serve(psk_server(directory, id_b=ENROLEE_B), handler)
        port = srv.sockets[0].getsockname()[1]
        try:
            forged = KpsaEntry(e.ke_id, os.urandom(32), ENROLEE_B)  # the KeID with a key not derived from Ke
            with pytest.raises(TLSHandshakeError):
                await connect(psk_client(forged), "127.0.0.1", port)
            reader, writer, cctx = await connect(psk_client(e.kpsa_entry(ENROLEE_B)), "127.0.0.1", port)
            writer.write(b"ping-" + enrolee.rspf.encode())
            assert await reader.read(100) == b"ping-" + enrolee.rspf.encode()
            writer.close()
            return cctx, await got
        finally:
            srv.close()

    cctx, sctx = run(go())
    assert cctx.peer_id == ENROLEE_B
    assert sctx.peer_id == e.enrolee_id and sctx.psk_identity == e.ke_id  # the Enrolee-ID from the MEF
    entry = directory.lookup(e.ke_id)
    assert entry is not None and entry.kpsa == derive_kpsa(e.ke, ENROLEE_B)
    assert fetcher.fetches == 1  # one fetch for both handshakes: cached under the KeID


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeCSE]:
    with running_acme(tmp_path_factory.mktemp("acme-in")) as cse:
        assert "/" + cse.cse_id == CSE
        yield cse


@pytest.fixture(scope="module")
def gateway(acme: AcmeCSE, world: MEFWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    d = tmp_path_factory.mktemp("gw")
    KeyEncryptionKey.generate().write_file(d / "gateway.kek")
    config = write_config(d / "gateway.toml", cse_id=acme.cse_id, cse_name=acme.cse_name, keys=[],
                          extra=f'\n[mef]\nfqdn = "{MEF_FQDN}"\nhost = "127.0.0.1"\nport = {world.mef.port}\n'
                                f'psk_identity = "cse-psk"\npsk_hex = "{CSE_PSK}"\n')
    gw = GatewayProcess(config, acme.url)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.acme
def test_esprim_key_through_gateway_and_acme(enrolee: Enrolled, gateway: GatewayProcess, acme: AcmeCSE) -> None:
    """enrol → pairwiseESPrimKey (SUID 23, kid = KeID) → the gateway fetches it from the MEF → ACME."""
    e = enrolee.enrolment
    ae = e.enrolee_id
    rn = f"mx-{enrolee.rspf}-{TAG}"
    with OneM2MClient(gateway.url, ae) as c:
        assert c.create(acme.cse_base, ResourceType.AE,
                        {"m2m:ae": {"rn": rn, "api": "Nm2msec", "rr": False, "srv": ["3"]}}).rsc == RSC.CREATED
    cb, ae_path = acme.cse_base, f"{acme.cse_base}/{rn}"
    key = e.direct_key(CSE, 23)
    assert key == derive_usage_key(e.ke, 23, CSE)

    def inner(op: Operation, to: str, fr: str = ae, **kw: object) -> RequestPrimitive:
        return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)  # type: ignore[arg-type]

    def now() -> datetime:
        return datetime.now(UTC)

    async def go() -> tuple[Any, Any, RSC]:
        async with AsyncOneM2MClient(gateway.url, ae) as client:
            so = SecureOriginator(client, Originator(clock=now),
                                  PairwiseKey(kid=e.ke_id, key=key, peer_id=CSE, suid=SUID.RSPF_ESPRIM))
            created = await so.send(inner(Operation.CREATE, ae_path, ty=ResourceType.CONTAINER,
                                          pc={"m2m:cnt": {"rn": "mxcnt", "mni": 2}}), cb, cb)
            got = await so.send(inner(Operation.RETRIEVE, f"{ae_path}/mxcnt"), cb, cb)
            with pytest.raises(OuterResponseError) as imp:  # the key is bound to the Enrolee-ID
                await so.send(inner(Operation.RETRIEVE, ae_path, fr=f"Cmx-other-{TAG}"), cb, cb)
        return created, got, imp.value.rsc

    created, got, imp_rsc = run(go(), 40)
    assert created.rsc == RSC.CREATED and got.rsc == RSC.OK
    assert got.pc["m2m:cnt"]["mni"] == 2
    assert imp_rsc == RSC.ESPRIM_IMPERSONATION_ERROR
    with OneM2MClient(acme.url, ae) as direct:  # the container really exists in ACME
        assert direct.retrieve(f"{ae_path}/mxcnt").rsc == RSC.OK
