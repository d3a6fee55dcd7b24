"""Helpers of the gateway's SAEF listener tests (TS-0003 8.2.2.1, 8.2.2.2, 8.2.2.3, 7.2.1): the
in-process ones (a recording stand-in CSE behind :class:`m2msec.gateway.saef.SAEFListener`) and
the end-to-end ones (``m2msec gateway serve`` in front of a real ACME CSE).

Imported by module name, like ``_gateway_support`` (pytest puts this directory on sys.path);
never from conftest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from m2msec.esprim import MemoryReceiverState, ProvisionedKeySource, Receiver
from m2msec.net.acme import AcmeCSE
from m2msec.onem2m import (
    Operation,
    RequestPrimitive,
    ResponsePrimitive,
    ResponseStatusCode,
)
from m2msec.onem2m.primitives import new_request_id
from m2msec.pki import CertificateFlavour, DevCA, IssuedCertificate, PeerCertInfo
from m2msec.saef import (
    AssociationConfiguration,
    CredentialConfiguration,
    certificate_client,
)
from m2msec.saef.framework import SAEFEndpoint

SP = "m2m.example.com"
SP_ID = f"//{SP}"
CSE_ID, CSE_NAME = "id-in", "cse-in"  # the CSE of the in-process tests
BASE = f"/{CSE_ID}/{CSE_NAME}"
ADMIN = "CAdmin"  # the admin originator of the end-to-end gateway.toml files
PEM = serialization.Encoding.PEM


def utc_now() -> datetime:
    return datetime.now(UTC)


def run(aw: Awaitable[Any] | Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Run a coroutine (or an async function without arguments) on a new event loop, at most
    ``timeout`` seconds."""

    async def main() -> Any:
        return await asyncio.wait_for(aw() if callable(aw) else aw, timeout)

    return asyncio.run(main())


def empty_receiver() -> Receiver:
    """An ESPrim Receiver with no provisioned keys (the SAEF tests send no ESPrim)."""
    return Receiver(keys=ProvisionedKeySource([], clock=utc_now), state=MemoryReceiverState(clock=utc_now),
                    clock=utc_now)


class RecordingCSE:
    """Stand-in for the CSE: answers 2001 to CREATE and 2000 otherwise (echoing From in m2m:dbg)
    and records the requests that reached it in ``seen``."""

    def __init__(self) -> None:
        self.seen: list[RequestPrimitive] = []

    async def __call__(self, req: RequestPrimitive) -> ResponsePrimitive:
        self.seen.append(req)
        rsc = ResponseStatusCode.CREATED if req.op is Operation.CREATE else ResponseStatusCode.OK
        return ResponsePrimitive(rsc=rsc, rqi=req.rqi, rvi=req.rvi or "3", pc={"m2m:dbg": f"from {req.fr}"})


def req(op: Operation, to: str, fr: str | None, **kw: Any) -> RequestPrimitive:
    """A request primitive with a fresh Request Identifier (release 3)."""
    return RequestPrimitive(op=op, to=to, fr=fr, rqi=new_request_id(), rvi="3", **kw)


def write_cse_credentials(directory: Path, issued: IssuedCertificate, cert: str = "cse-cert.pem",
                          key: str = "cse-key.pem") -> tuple[str, str]:
    """The CSE's certificate chain and PKCS#8 private key as PEM files ``cert`` and ``key`` in
    ``directory`` (the ``[saef]`` cert/key of gateway.toml); returns the two file names."""
    assert issued.private_key is not None
    (directory / cert).write_bytes(b"".join(c.public_bytes(PEM) for c in [issued.certificate, *issued.chain]))
    (directory / key).write_bytes(issued.private_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))
    return cert, key


def write_ca_files(directory: Path, ca: DevCA, root: str = "root.pem", sub: str = "sub.pem") -> None:
    """The CA's trust anchor (``root_of_trust``) and its intermediate (``crl_issuers``) as PEM files."""
    (directory / root).write_bytes(ca.trust_anchor.public_bytes(PEM))
    assert ca.intermediate_cert is not None
    (directory / sub).write_bytes(ca.intermediate_cert.public_bytes(PEM))


def ae_certificate_client(issued: IssuedCertificate, ca: DevCA, csi: str, *, ocsp_staple: str = "off") -> SAEFEndpoint:
    """An AE's Certificate-Based SAEF endpoint (entity A) towards the CSE ``csi`` whose CSE-ID
    certificate names ``in.<SP>`` under ``ca`` (``ocsp_staple``: what it asks of the CSE's staple)."""
    assoc = AssociationConfiguration.entity_a(
        id_b=csi, cert_name_b=PeerCertInfo(CertificateFlavour.CSE_ID, f"in.{SP}"),
        root_of_trust_b=[ca.trust_anchor])
    return certificate_client(CredentialConfiguration.from_issued(issued), assoc, clock=utc_now,
                              ocsp_staple=ocsp_staple)


def gateway_toml_head(acme: AcmeCSE, gwdir: Path, db: str) -> str:
    """The ``[cse]`` and ``[store]`` tables of an end-to-end gateway.toml in front of ``acme``
    (the ``gwdir`` fixture holds gateway.kek); the store is the SQLite file ``db`` there."""
    return f"""
[cse]
id = "{acme.cse_id}"
name = "{acme.cse_name}"
admin = "{ADMIN}"
sp_id = "{SP_ID}"
[store]
kek_file = "gateway.kek"
url = "sqlite://{gwdir}/{db}"
"""
