"""MAF Client: client configuration (TS-0003 8.8.3) and every MAF procedure (8.8.2.3-8.8.2.10).

:class:`MAFClientConfig` holds the MAF Client Credential Configuration (8.8.3.1: Km/KmID, or a
KeID and Km for a remotely provisioned client, or a certificate with the MAF trust anchors),
the MAF Client Registration Configuration (8.8.3.2: MAF-FQDN, adminFQDN, expiry, labels) and
the procedure URIs; with a certificate, ``ocsp_staple`` (``"off"``, ``"if-present"``,
``"require"``) asks for and checks the MAF's stapled OCSP response (TS-0003 8.1.2.2, RFC 6066 8;
a refusal fails the handshake with ``BAD_CERTIFICATE_STATUS``).  :class:`MAFClient` performs the MAF Handshake once and runs every
procedure over that one persistent TLS connection (HTTP/1.1 keep-alive, h11); the wire format
is in ``docs/maf-protocol.md``.

With an exporter Key Registration (no key value in the request) the client derives Kc/KcID
from its own side of the session (EXPORTER-oneM2M-Connection, 10.3.1) and checks that the
MAF's RelativeKeyID is hexBinary(KcID) (10.3.5); the key identifier is
``hexBinary(KcID)@MAF-FQDN``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import h11
from cryptography import x509

from m2msec.errors import ParseError
from m2msec.keys import LABEL_CONNECTION, maf_key_id, parse_key_id
from m2msec.maf.protocol import (
    ClientRegistrationRequest,
    ClientRegistrationResponse,
    ConfigurationRetrievalRequest,
    DeregistrationRequest,
    ErrorBody,
    KeyDeregistrationRequest,
    KeyRegistrationRequest,
    KeyRegistrationResponse,
    KeyRegistrationUpdateRequest,
    KeyRegistrationUpdateResponse,
    KeyRetrievalRequest,
    KeyRetrievalResponse,
    MAFError,
    Procedure,
    RegistrationUpdateRequest,
    RegistrationUpdateResponse,
    decode_body,
    encode_body,
)
from m2msec.net.h11io import send_request
from m2msec.onem2m.enums import SUID
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.onem2m.timestamps import Clock
from m2msec.pki import CertificateFlavour, CRLStore, PeerCertInfo, RevocationPolicy
from m2msec.tls.aio import TLSStreamWriter, open_connection
from m2msec.tls.engine import CertCredentials, PSKCredentials, Role, TLSConfig
from m2msec.tls.pkiverify import StaplePolicy, pki_tls_kwargs, staple_check

__all__ = ["MAFClient", "MAFClientConfig", "MAFResponseError", "RegisteredKey", "RetrievedKey"]


class MAFResponseError(MAFError):
    """The MAF refused a procedure; ``rsc`` is the RSC it answered with."""


@dataclass(frozen=True)
class RegisteredKey:
    """The Source MAF Client's result of a Key Registration (8.8.2.7)."""

    key_id: str  # hexBinary(RelativeKeyID)@MAF-FQDN (10.3.5)
    key: bytes = field(repr=False)
    response: KeyRegistrationResponse

    @property
    def relative_key_id(self) -> str:
        return self.response.relative_key_id

    @property
    def suid(self) -> SUID:
        return self.response.suid

    def __repr__(self) -> str:
        return f"RegisteredKey(key_id={self.key_id!r}, suid={int(self.response.suid)}, key=<hidden>)"


@dataclass(frozen=True)
class RetrievedKey:
    """The Target MAF Client's result of a Key Retrieval (8.8.2.8)."""

    key_id: str
    response: KeyRetrievalResponse

    @property
    def key(self) -> bytes:
        return self.response.key_value

    @property
    def suid(self) -> SUID:
        return self.response.suid

    @property
    def source_id(self) -> str:
        return self.response.source_maf_client_id

    @property
    def expires_at(self) -> datetime:
        return self.response.expiration_time

    def __repr__(self) -> str:
        return f"RetrievedKey(key_id={self.key_id!r}, suid={int(self.suid)}, source={self.source_id!r}, key=<hidden>)"


@dataclass(frozen=True)
class MAFClientConfig:
    """8.8.3: credentials, registration configuration and the MAF's address/URIs.

    Exactly one of ``psk`` (identity = KmID, or KeID for a remotely provisioned client) and
    ``credentials`` (certificate; then ``maf_trust_anchors`` and ``clock`` are required and the
    MAF certificate is verified as an FQDN certificate for ``maf_fqdn`` unless
    ``maf_cert_info`` says otherwise).
    """

    maf_fqdn: str
    admin_fqdn: str
    host: str
    port: int
    psk: PSKCredentials | None = None
    credentials: CertCredentials | None = None
    maf_trust_anchors: tuple[x509.Certificate, ...] = ()
    maf_cert_info: PeerCertInfo | None = None
    clock: Clock | None = None
    labels: tuple[str, ...] | None = None
    paths: Mapping[Procedure, str] = field(default_factory=dict)
    server_name: str | None = None
    timeout: float = 10.0
    maf_crls: CRLStore | None = field(default=None, repr=False)  # certificate status (TS-0003 8.1.2.2)
    revocation: RevocationPolicy = RevocationPolicy.IF_AVAILABLE
    # OCSP stapling (RFC 6066 8, TS-0003 8.1.2.2): "off", "if-present" or "require" (certificate mode only)
    ocsp_staple: StaplePolicy | str = StaplePolicy.OFF

    def __post_init__(self) -> None:
        object.__setattr__(self, "maf_fqdn", parse_key_id(f"x@{self.maf_fqdn}").fqdn.lower())
        object.__setattr__(self, "admin_fqdn", self.admin_fqdn.lower())
        if (self.psk is None) == (self.credentials is None):
            raise ValueError("configure exactly one MAF Client credential: psk or credentials")
        if self.credentials is not None and (not self.maf_trust_anchors or self.clock is None):
            raise ValueError("certificate MAF Handshake needs maf_trust_anchors and a clock")
        object.__setattr__(self, "ocsp_staple", StaplePolicy(self.ocsp_staple))
        if self.psk is not None and self.ocsp_staple is not StaplePolicy.OFF:
            raise ValueError("ocsp_staple needs the certificate MAF Handshake (a PSK handshake has no certificate)")

    def path(self, proc: Procedure) -> str:
        return self.paths.get(proc, proc.path)

    def tls_config(self, psk: PSKCredentials | None) -> TLSConfig:
        if psk is not None:
            return TLSConfig(role=Role.CLIENT, psk=psk, server_name=self.server_name)
        assert self.credentials is not None and self.clock is not None
        info = self.maf_cert_info or PeerCertInfo(CertificateFlavour.FQDN, self.maf_fqdn)
        return TLSConfig(role=Role.CLIENT, credentials=self.credentials,
                         server_name=self.server_name or self.maf_fqdn,
                         check_ocsp_staple=staple_check(self.ocsp_staple, self.clock),
                         **pki_tls_kwargs(info, self.maf_trust_anchors, self.clock, crls=self.maf_crls,
                                          revocation=self.revocation))


class MAFClient:
    """All MAF procedures over one persistent TLS connection (``async with MAFClient(cfg) as c``)."""

    def __init__(self, config: MAFClientConfig) -> None:
        self.config = config
        self._psk = config.psk
        self._reader: asyncio.StreamReader | None = None
        self._writer: TLSStreamWriter | None = None
        self._conn: h11.Connection | None = None
        self._lock = asyncio.Lock()
        self.registration: ClientRegistrationResponse | None = None

    def __repr__(self) -> str:
        ident = self._psk.identity.decode("utf-8", "replace") if self._psk else "certificate"
        return f"MAFClient(maf={self.config.maf_fqdn!r}, credential={ident!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    @property
    def psk_identity(self) -> str | None:
        """The PSK identity the next MAF Handshake uses (KmID after an assignedSymmKeyID)."""
        return self._psk.identity.decode("utf-8") if self._psk else None

    async def connect(self) -> MAFClient:
        """Run the MAF Handshake (8.8.2.2); raises TLSHandshakeError on failure."""
        await self.aclose()
        cfg = self.config
        self._reader, self._writer = await open_connection(cfg.host, cfg.port, cfg.tls_config(self._psk),
                                                           server_name=cfg.server_name, timeout=cfg.timeout)
        self._conn = h11.Connection(h11.CLIENT)
        return self

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await asyncio.wait_for(self._writer.wait_closed(), 2)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        self._reader = self._writer = self._conn = None

    async def __aenter__(self) -> MAFClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def export_kc(self) -> tuple[bytes, bytes]:
        """(Kc, KcID) of the current session (EXPORTER-oneM2M-Connection, 10.3.1)."""
        if self._writer is None:
            raise MAFError("not connected", rsc=RSC.TARGET_NOT_REACHABLE)
        return self._writer.engine.export_onem2m_key(LABEL_CONNECTION)

    # ------------------------------------------------------------------ transport

    async def call(self, proc: Procedure, request: Any) -> Any:
        """Send one request message and return the parsed response (MAFResponseError on refusal)."""
        if not isinstance(request, proc.request_type):
            raise TypeError(f"{proc.name} takes {proc.request_type.__name__}")
        status, rsc, body = await self.raw(proc, encode_body(request))
        if rsc != int(proc.success):
            try:
                err = decode_body(ErrorBody, body)
                msg = err.error
            except ParseError:
                msg = f"HTTP {status}"
            try:
                code = RSC(rsc)
            except ValueError:
                code = RSC.INTERNAL_SERVER_ERROR
            raise MAFResponseError(f"{proc.name}: {msg}", rsc=code)
        return decode_body(proc.response_type, body)

    async def raw(self, proc: Procedure | str, body: bytes, *, method: str = "POST",
                  content_type: str = "application/json") -> tuple[int, int, bytes]:
        """Send a raw body; returns (HTTP status, X-M2M-RSC, body).  For tests and tools."""
        async with self._lock:
            if self._writer is None or self._conn is None or self._reader is None:
                await self.connect()
            assert self._writer is not None and self._conn is not None and self._reader is not None
            conn = self._conn
            path = self.config.path(proc) if isinstance(proc, Procedure) else proc
            headers = [("Host", self.config.maf_fqdn), ("Content-Type", content_type),
                       ("Content-Length", str(len(body)))]
            try:
                response, chunks = await send_request(conn, self._reader, self._writer, method, path, headers, body,
                                                      timeout=self.config.timeout,
                                                      closed_message="the MAF closed the connection")
            except (h11.ProtocolError, asyncio.TimeoutError, ConnectionError) as exc:
                await self.aclose()
                raise MAFError(f"MAF transport failure: {type(exc).__name__}: {exc}",
                               rsc=RSC.TARGET_NOT_REACHABLE) from None
            rsc_hdr = next((v for k, v in response.headers if k.lower() == b"x-m2m-rsc"), b"")
            try:
                rsc = int(rsc_hdr)
            except ValueError:
                rsc = 0
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                await self.aclose()
            return response.status_code, rsc, chunks

    # ------------------------------------------------------------------ 8.8.2.3 - 8.8.2.6

    async def register(self, expiration_time: datetime, *, labels: Sequence[str] | None = None,
                       admin_fqdn: str | None = None) -> ClientRegistrationResponse:
        """MAF Client Registration (8.8.2.3).  An assignedSymmKeyID becomes the KmID of later handshakes."""
        req = ClientRegistrationRequest(self.config.maf_fqdn, expiration_time, admin_fqdn or self.config.admin_fqdn,
                                        tuple(labels) if labels is not None else self.config.labels)
        rsp: ClientRegistrationResponse = await self.call(Procedure.CLIENT_REGISTRATION, req)
        self._adopt_kmid(rsp.assigned_symm_key_id)
        self.registration = rsp
        return rsp

    def _adopt_kmid(self, kmid: str | None) -> None:
        if kmid is None:
            return
        kid = parse_key_id(kmid)
        if kid.fqdn.lower() != self.config.maf_fqdn or self._psk is None:
            raise MAFError(f"assignedSymmKeyID {kmid!r} is not a KmID of this MAF (10.6)", rsc=RSC.BAD_REQUEST)
        self._psk = PSKCredentials(kmid.encode("utf-8"), self._psk.key)

    def _reg_id(self, reg_id: str | None) -> str:
        if reg_id is not None:
            return reg_id
        if self.registration is None:
            raise MAFError("no MAF Client Registration known: give mafClientRegID", rsc=RSC.BAD_REQUEST)
        return self.registration.maf_client_reg_id

    async def retrieve_configuration(self, reg_id: str | None = None) -> dict[str, Any]:
        """MAF Client Configuration Retrieval (8.8.2.4): the mafClientCfg object."""
        rsp = await self.call(Procedure.CONFIGURATION_RETRIEVAL,
                              ConfigurationRetrievalRequest(self.config.maf_fqdn, self._reg_id(reg_id)))
        return dict(rsp.maf_client_cfg)

    async def update_registration(self, *, expiration_time: datetime | None = None,
                                  labels: Sequence[str] | None = None,
                                  reg_id: str | None = None) -> RegistrationUpdateResponse:
        """MAF Client Registration Update (8.8.2.5); after a KeID handshake it yields a new KmID."""
        req = RegistrationUpdateRequest(self.config.maf_fqdn, self._reg_id(reg_id), expiration_time,
                                        tuple(labels) if labels is not None else None)
        rsp: RegistrationUpdateResponse = await self.call(Procedure.REGISTRATION_UPDATE, req)
        self._adopt_kmid(rsp.assigned_symm_key_id)
        return rsp

    async def deregister(self, reg_id: str | None = None) -> None:
        """MAF Client De-Registration (8.8.2.6)."""
        await self.call(Procedure.DEREGISTRATION, DeregistrationRequest(self.config.maf_fqdn, self._reg_id(reg_id)))
        if reg_id is None or (self.registration and self.registration.maf_client_reg_id == reg_id):
            self.registration = None

    # ------------------------------------------------------------------ 8.8.2.7 - 8.8.2.10

    async def register_key(self, suid: SUID | int, target_ids: Sequence[str] | None, expiration_time: datetime,
                           *, key_value: bytes | None = None, labels: Sequence[str] | None = None,
                           admin_fqdn: str | None = None) -> RegisteredKey:
        """MAF Key Registration (8.8.2.7).  Without ``key_value``: Kc from the session exporter."""
        req = KeyRegistrationRequest(self.config.maf_fqdn, expiration_time, admin_fqdn or self.config.admin_fqdn,
                                     SUID(suid), tuple(labels) if labels is not None else None,
                                     tuple(target_ids) if target_ids is not None else None,
                                     bytes(key_value) if key_value is not None else None)
        if key_value is None and not self.connected:
            await self.connect()
        rsp: KeyRegistrationResponse = await self.call(Procedure.KEY_REGISTRATION, req)
        if key_value is None:
            kc, kcid = self.export_kc()
            if rsp.relative_key_id != kcid.hex():
                raise MAFError("the MAF's RelativeKeyID is not hexBinary(KcID) of this session (10.3.5)",
                               rsc=RSC.BAD_REQUEST)
            key = kc
        else:
            key = bytes(key_value)
        key_id = maf_key_id(bytes.fromhex(rsp.relative_key_id), self.config.maf_fqdn)
        return RegisteredKey(key_id, key, rsp)

    def relative_of(self, key_id: str) -> str:
        """RelativeKeyID of a Key Identifier of this MAF (10.3.5)."""
        kid = parse_key_id(key_id, hex_length=16)
        if kid.fqdn.lower() != self.config.maf_fqdn:
            raise MAFError(f"key identifier {key_id!r} names another MAF", rsc=RSC.BAD_REQUEST)
        return kid.relative.lower()

    async def retrieve_key(self, key_id: str) -> RetrievedKey:
        """MAF Key Retrieval (8.8.2.8) for a Key Identifier received from a Source MAF Client."""
        rsp: KeyRetrievalResponse = await self.call(Procedure.KEY_RETRIEVAL, KeyRetrievalRequest(self.relative_of(key_id)))
        return RetrievedKey(key_id, rsp)

    async def update_key(self, key_id: str, *, expiration_time: datetime | None = None,
                         labels: Sequence[str] | None = None,
                         target_ids: Sequence[str] | None = None) -> KeyRegistrationUpdateResponse:
        """MAF Key Registration Update (8.8.2.9)."""
        req = KeyRegistrationUpdateRequest(self.config.maf_fqdn, self.relative_of(key_id), expiration_time,
                                           tuple(labels) if labels is not None else None,
                                           tuple(target_ids) if target_ids is not None else None)
        result: KeyRegistrationUpdateResponse = await self.call(Procedure.KEY_REGISTRATION_UPDATE, req)
        return result

    async def deregister_key(self, key_id: str) -> None:
        """MAF Key De-Registration (8.8.2.10)."""
        await self.call(Procedure.KEY_DEREGISTRATION, KeyDeregistrationRequest(self.config.maf_fqdn,
                                                                               self.relative_of(key_id)))



