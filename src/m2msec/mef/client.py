"""MEF clients: the Enrolee (Source MEF Client) and the Enrolment Target (TS-0003 8.3.2.1, 8.3.4.3).

* :func:`enrol` - Bootstrap Security Handshake (PSK with Kpm/KpmID, or mutual
  certificates), Enrolment Key Generation on the enrolee's side (Ke, KeID, Kre,
  KreID from the same exporter labels as the MEF) and the Enrolment Exchange;
  returns an :class:`Enrolment` that derives the keys the MEF allowed
  (:meth:`Enrolment.direct_key`, :meth:`Enrolment.kpsa_entry` for a PSK SAEF
  with Enrolee B, where the psk_identity is the KeID, 8.3.2.1 "The Enrolee shall
  provide KeID as a symmetric key identifier").  :func:`save_enrolment` keeps it
  in the store.
* :class:`MEFKeyFetcher` - an Enrolment Target (CSE, AE or MAF) that receives a
  KeID it does not know fetches ``/fetchCredentials/<KeID>/<SUID>`` from the MEF
  over mutually authenticated TLS and caches the key for its lifetime;
  :meth:`MEFKeyFetcher.recheck` asks the MEF again about a key the target holds
  (:class:`KeyStatus`: still valid, revoked - the MEF refuses the KeID, 4004/4103, or
  gives another key or Enrolee-ID - or unreachable).
* :class:`MEFKpsaDirectory` - a :class:`~m2msec.saef.config.KpsaDirectory` for
  :func:`m2msec.saef.psk_server`: known KpsaIDs come from a local directory, an
  unknown KeID of this MEF is fetched (SUID 22, Kpsa) - see its docstring for the
  threading caveat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import hmac
import secrets
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import h11

from m2msec.errors import M2MSecError, ParseError, UnknownKeyError
from m2msec.keys import (
    LABEL_BOOTSTRAP,
    LABEL_BOOTSTRAP_REAUTH,
    ke_id,
    kre_id,
    parse_key_id,
    split_exported,
)
from m2msec.mef.protocol import (
    ENROLMENT_PATH,
    SUID_MAF,
    SUID_SAEF,
    DirectKey,
    EnrolmentRequest,
    EnrolmentResponse,
    FetchFailure,
    FetchSuccess,
    Instruction,
    credential_for,
    fetch_target,
    parse_fetch_response,
)
from m2msec.net.h11io import send_request
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour, PeerCertInfo
from m2msec.saef.config import KpsaDirectory, KpsaEntry
from m2msec.tls.aio import TLSStreamWriter, open_connection
from m2msec.tls.engine import CertCredentials, PSKCredentials, Role, TLSConfig
from m2msec.tls.pkiverify import StaplePolicy, pki_tls_kwargs, staple_check

__all__ = [
    "REVOKING_RSC",
    "Enrolment",
    "FetchedCredential",
    "KeyStatus",
    "MEFClientError",
    "MEFKeyFetcher",
    "MEFKpsaDirectory",
    "enrol",
    "load_enrolment",
    "mef_tls_config",
    "save_enrolment",
]

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MEFClientError(M2MSecError):
    """The MEF refused a request (``rsc`` from X-M2M-RSC) or answered malformed."""


def mef_tls_config(*, psk: PSKCredentials | None = None, credentials: CertCredentials | None = None,
                   mef_fqdn: str | None = None, mef_anchors: tuple[Any, ...] = (),
                   mef_cert_info: PeerCertInfo | None = None, clock: Clock = _utcnow,
                   ocsp_staple: StaplePolicy | str = StaplePolicy.OFF) -> TLSConfig:
    """Client TLS config towards the MEF: PSK (Kpm/KpmID, a target PSK or Kre/KreID) or mutual
    certificates (the MEF verified per 8.1.2.5 as ``mef_cert_info``, default FQDN flavour = ``mef_fqdn``).
    ``ocsp_staple`` (certificate mode): ``"off"``, ``"if-present"`` or ``"require"`` - ask for the
    MEF's stapled OCSP response and check it (RFC 6066 8; refusal: ``BAD_CERTIFICATE_STATUS``)."""
    if (psk is None) == (credentials is None):
        raise ValueError("give exactly one of psk or credentials")
    staple = StaplePolicy(ocsp_staple)
    if psk is not None and staple is not StaplePolicy.OFF:
        raise ValueError("ocsp_staple needs certificate mode (a PSK handshake has no certificate)")
    if psk is not None:
        return TLSConfig(role=Role.CLIENT, psk=psk)
    info = mef_cert_info or (PeerCertInfo(CertificateFlavour.FQDN, mef_fqdn) if mef_fqdn else None)
    if info is None or not mef_anchors:
        raise ValueError("certificate mode needs the MEF certificate information and trust anchors")
    return TLSConfig(role=Role.CLIENT, credentials=credentials, check_ocsp_staple=staple_check(staple, clock),
                     **pki_tls_kwargs(info, mef_anchors, clock))


async def _http(reader: asyncio.StreamReader, writer: TLSStreamWriter, method: str, target: str,
                headers: list[tuple[str, str]], body: bytes, host: str) -> tuple[int, dict[str, str], bytes]:
    conn = h11.Connection(h11.CLIENT)
    hdrs = [("Host", host), ("Content-Length", str(len(body))), *headers]
    resp, data = await send_request(
        conn, reader, writer, method, target, hdrs, body,
        closed_error=lambda: MEFClientError("the MEF closed the connection before responding",
                                            rsc=RSC.TARGET_NOT_REACHABLE))
    return resp.status_code, {k.decode().lower(): v.decode("latin-1") for k, v in resp.headers}, data


def _rsc_of(headers: dict[str, str], status: int) -> RSC:
    try:
        return RSC(int(headers.get("x-m2m-rsc", "")))
    except ValueError:
        return RSC.INTERNAL_SERVER_ERROR if status >= 500 else RSC.BAD_REQUEST


# ------------------------------------------------------------------ Enrolee


@dataclass(frozen=True)
class Enrolment:
    """What the enrolee keeps after an Enrolment Exchange (Ke/Kre never shown in repr)."""

    ke_id: str
    ke: bytes = field(repr=False)
    kre_id: str = ""
    kre: bytes = field(default=b"", repr=False)
    enrolee_id: str = ""
    expiry: datetime | None = None
    instructions: tuple[Instruction, ...] = ()
    direct_keys: tuple[DirectKey, ...] = ()

    def allowed(self, target_id: str, suid: int) -> bool:
        return DirectKey(target_id, suid) in self.direct_keys

    def direct_key(self, target_id: str, suid: int) -> bytes:
        """The key for (Enrolee-B-ID, SUID) if the MEF authorised it (else UnknownKeyError)."""
        if not self.allowed(target_id, suid):
            raise UnknownKeyError(f"the MEF did not authorise SUID {suid} keys with {target_id!r}",
                                  rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        return credential_for(self.ke, suid, target_id)

    def kpsa_entry(self, enrolee_b_id: str) -> KpsaEntry:
        """Kpsa with Enrolee B (SUID 22) as a PSK-SAEF entry: psk_identity = KeID, peer = Enrolee-B-ID."""
        return KpsaEntry(self.ke_id, self.direct_key(enrolee_b_id, SUID_SAEF), peer_id=enrolee_b_id)

    def km(self, maf_fqdn: str) -> bytes:
        """Km for a MAF the MEF instructed this enrolee to enrol with (10.3.2)."""
        if not any(i.params.get("MAFID") == maf_fqdn for i in self.instructions):
            raise UnknownKeyError(f"no MAF enrolment instruction for {maf_fqdn!r}", rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        return credential_for(self.ke, SUID_MAF, maf_fqdn)

    def reauth_psk(self) -> PSKCredentials:
        """Kre/KreID as TLS-PSK credentials for later sessions with the MEF."""
        return PSKCredentials(self.kre_id.encode("utf-8"), self.kre)


async def enrol(host: str, port: int, tls: TLSConfig, request: EnrolmentRequest | None = None, *,
                mef_fqdn: str | None = None, timeout: float = 10.0) -> Enrolment:
    """Handshake + Enrolment Exchange; Ke/KeID/Kre/KreID computed locally and checked
    against the MEF's answer (the MEF-FQDN is taken from the answer unless ``mef_fqdn`` is given)."""
    request = request or EnrolmentRequest()
    reader, writer = await open_connection(host, port, tls, timeout=timeout)
    try:
        engine = writer.engine
        ke, rel_ke = split_exported(engine.export_keying_material(LABEL_BOOTSTRAP, 48))
        kre, rel_kre = split_exported(engine.export_keying_material(LABEL_BOOTSTRAP_REAUTH, 48))
        status, headers, body = await asyncio.wait_for(
            _http(reader, writer, "POST", ENROLMENT_PATH,
                  [("Content-Type", "application/json"), ("X-M2M-RI", secrets.token_hex(8))],
                  request.to_json(), f"{host}:{port}"), timeout)
    finally:
        writer.close()
    if status != 200:
        try:
            reason = parse_fetch_response(body)
            msg = reason.error if isinstance(reason, FetchFailure) else "refused"
        except ParseError:
            msg = f"HTTP {status}"
        raise MEFClientError(f"enrolment refused: {msg}", rsc=_rsc_of(headers, status))
    rsp = EnrolmentResponse.from_json(body)
    fqdn = mef_fqdn or parse_key_id(rsp.ke_id).fqdn
    kid, rid = ke_id(rel_ke, fqdn), kre_id(rel_kre, fqdn)
    if rsp.ke_id != kid or rsp.kre_id != rid:
        raise MEFClientError("the MEF's KeID/KreID do not match this session's exported keys",
                             rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
    return Enrolment(kid, ke, rid, kre, rsp.enrolee_id, rsp.expiry, rsp.instructions, rsp.direct_keys)


NS_CLIENT = "mef.client.enrolment"


def save_enrolment(store: Any, e: Enrolment, namespace: str = NS_CLIENT) -> None:
    """Keep Ke (credential ``<ns>``, id KeID) and Kre (``<ns>.kre``) until the Enrolment Expiry."""
    md = {"enrolee_id": e.enrolee_id, "kre_id": e.kre_id,
          "instructions": [i.to_doc() for i in e.instructions], "direct_keys": [d.to_doc() for d in e.direct_keys]}
    with store.transaction() as tx:
        tx.put_credential(namespace, e.ke_id, e.ke, metadata=md, expires_at=e.expiry)
        tx.put_credential(namespace + ".kre", e.kre_id, e.kre, metadata={"ke_id": e.ke_id}, expires_at=e.expiry)


def load_enrolment(store: Any, ke_id_: str, namespace: str = NS_CLIENT) -> Enrolment | None:
    c = store.find_credential(namespace, ke_id_)
    if c is None:
        return None
    md = c.metadata
    kre = store.find_credential(namespace + ".kre", md["kre_id"])
    return Enrolment(ke_id_, c.secret, md["kre_id"], kre.secret if kre else b"", md["enrolee_id"], c.expires_at,
                     tuple(Instruction.from_doc(i) for i in md.get("instructions", ())),
                     tuple(DirectKey.from_doc(d) for d in md.get("direct_keys", ())))


# ------------------------------------------------------------------ Enrolment Target


class KeyStatus(enum.Enum):
    """What the MEF says now about a KeID whose key an Enrolment Target holds (a re-check)."""

    VALID = "valid"
    REVOKED = "revoked"
    UNREACHABLE = "unreachable"


#: MEF refusals that mean the KeID is no longer good (profile M5: unknown, expired or revoked
#: KeID 4004; revoked enrolee / target not authorised 4103); any other failure is UNREACHABLE
REVOKING_RSC = frozenset({RSC.NOT_FOUND, RSC.ORIGINATOR_HAS_NO_PRIVILEGE})


@dataclass(frozen=True)
class FetchedCredential:
    """Table 8.3.2.1-5 as received: the key, the Enrolee-ID and its lifetime."""

    ke_id: str
    suid: int
    key: bytes = field(repr=False)
    enrolee_id: str = ""
    lifetime: datetime | None = None


class MEFKeyFetcher:
    """MEF Key Retrieval for an Enrolment Target (CSE, AE or MAF), with a lifetime-bounded cache.

    ``tls``: the target's pre-configured credentials towards the MEF
    (:func:`mef_tls_config`); ``target_id``: its AE-ID/CSE-ID/MAF-FQDN, sent as
    X-M2M-Origin.  Only KeIDs whose FQDN is ``mef_fqdn`` are fetched.  At most
    ``max_concurrent`` requests to the MEF are in flight per event loop (more wait their turn):
    whoever can make the target see made-up KeIDs cannot make it open connections to the MEF
    without bound.
    """

    def __init__(self, host: str, port: int, tls: TLSConfig, *, target_id: str, mef_fqdn: str,
                 clock: Clock = _utcnow, max_cache_seconds: float = 3600.0, timeout: float = 10.0,
                 max_concurrent: int = 8) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.target_id = target_id
        self.mef_fqdn = mef_fqdn.lower().rstrip(".")
        self.clock = clock
        self.max_cache = timedelta(seconds=max_cache_seconds)
        self.timeout = timeout
        self._cache: dict[tuple[str, int], tuple[FetchedCredential, datetime]] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # network fetches made (cache misses)
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"MEFKeyFetcher(mef={self.host}:{self.port}, fqdn={self.mef_fqdn!r}, target_id={self.target_id!r})"

    def is_ours(self, key_id: str) -> bool:
        try:
            return parse_key_id(key_id, hex_length=16).fqdn.lower() == self.mef_fqdn
        except M2MSecError:
            return False

    def cached(self, ke_id_: str, suid: int) -> FetchedCredential | None:
        with self._lock:
            hit = self._cache.get((ke_id_, suid))
            if hit is None:
                return None
            if hit[1] <= self.clock():
                del self._cache[(ke_id_, suid)]
                return None
            return hit[0]

    async def fetch(self, ke_id_: str, suid: int, *, fresh: bool = False) -> FetchedCredential:
        """The key for (KeID, SUID): cached, else fetched (MEFClientError with the MEF's RSC);
        ``fresh``: ask the MEF even when cached (a re-check: has the enrolee been revoked?)."""
        hit = None if fresh else self.cached(ke_id_, suid)
        if hit is not None:
            return hit
        target = fetch_target(ke_id_, suid)
        if not self.is_ours(ke_id_):
            raise UnknownKeyError(f"KeID {ke_id_!r} was not issued by MEF {self.mef_fqdn}")
        loop = asyncio.get_running_loop()
        with self._lock:
            slots = self._slots.get(loop)
            if slots is None:
                slots = self._slots[loop] = asyncio.Semaphore(self.max_concurrent)
        async with slots:
            reader, writer = await open_connection(self.host, self.port, self.tls, timeout=self.timeout)
            try:
                status, headers, body = await asyncio.wait_for(
                    _http(reader, writer, "GET", target,
                          [("X-M2M-Origin", self.target_id), ("X-M2M-RI", secrets.token_hex(8)),
                           ("Accept", "application/json")], b"", f"{self.host}:{self.port}"), self.timeout)
            finally:
                writer.close()
        self.fetches += 1
        parsed = parse_fetch_response(body)
        if isinstance(parsed, FetchFailure) or status != 200:
            err = parsed.error if isinstance(parsed, FetchFailure) else f"HTTP {status}"
            with self._lock:
                self._cache.pop((ke_id_, suid), None)  # refused now: what was cached is no longer good
            raise MEFClientError(f"MEF Key Retrieval refused: {err}", rsc=_rsc_of(headers, status))
        assert isinstance(parsed, FetchSuccess)
        cred = FetchedCredential(ke_id_, suid, parsed.credential, parsed.enrolee_id, parsed.lifetime)
        until = min(parsed.lifetime, self.clock() + self.max_cache)
        with self._lock:
            self._cache[(ke_id_, suid)] = (cred, until)
        return cred

    async def recheck(self, ke_id_: str, suid: int, key: bytes, *,
                      enrolee_id: str | None = None) -> tuple[KeyStatus, FetchedCredential | None]:
        """Ask the MEF again (never from the cache) whether (KeID, SUID) still gives ``key`` (and,
        when given, ``enrolee_id``).  REVOKED: the MEF refuses the KeID (:data:`REVOKING_RSC`) or
        answers another key or Enrolee-ID; UNREACHABLE: no answer, another refusal, or a KeID of
        another MEF is never claimed revoked by this one.  The fetched credential comes along when
        the MEF answered (it refreshes the cache; its lifetime may have changed)."""
        try:
            cred = await self.fetch(ke_id_, suid, fresh=True)
        except MEFClientError as exc:
            return (KeyStatus.REVOKED if exc.rsc in REVOKING_RSC else KeyStatus.UNREACHABLE), None
        except (M2MSecError, OSError, TimeoutError):
            return KeyStatus.UNREACHABLE, None
        same = hmac.compare_digest(cred.key, key) and (enrolee_id is None or cred.enrolee_id == enrolee_id)
        return (KeyStatus.VALID if same else KeyStatus.REVOKED), cred

    async def fetch_km(self, ke_id_: str) -> FetchedCredential:
        """Km for a MAF (SUID 21) - what a MAF calls when a MAF Client presents a KeID."""
        return await self.fetch(ke_id_, SUID_MAF)

    def fetch_blocking(self, ke_id_: str, suid: int) -> FetchedCredential:
        """:meth:`fetch` from synchronous code (runs on a private thread with its own event loop)."""
        hit = self.cached(ke_id_, suid)
        if hit is not None:
            return hit
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.fetch(ke_id_, suid)).result(self.timeout + 5)


class MEFKpsaDirectory:
    """KpsaDirectory for :func:`m2msec.saef.psk_server` that fetches unknown KeIDs from the MEF.

    ``lookup`` first asks ``local`` (e.g. a :class:`~m2msec.saef.config.StoreKpsaDirectory`);
    on a miss, a KpsaID that is a KeID of ``fetcher.mef_fqdn`` is fetched with SUID 22 and
    the result (Kpsa, bound to the Enrolee-ID the MEF returned) is added to ``local`` when
    it has ``add`` (a store-backed directory gets ``expires_at`` = the key's lifetime).

    The TLS library asks for the PSK synchronously inside the handshake, so a miss blocks
    the calling thread for one MEF round trip (the MEF must therefore not be served by the
    same event loop).  Call :meth:`prefetch` from async code to warm the cache instead.
    """

    def __init__(self, fetcher: MEFKeyFetcher, local: KpsaDirectory | None = None) -> None:
        self.fetcher = fetcher
        self.local = local
        self.errors: deque[BaseException] = deque(maxlen=1000)  # the latest failed fetches (observability)

    def __repr__(self) -> str:
        return f"MEFKpsaDirectory({self.fetcher!r})"

    def _entry(self, cred: FetchedCredential) -> KpsaEntry:
        entry = KpsaEntry(cred.ke_id, cred.key, peer_id=cred.enrolee_id or None)
        add = getattr(self.local, "add", None)
        if add is not None:
            try:
                add(entry, expires_at=cred.lifetime)
            except TypeError:
                add(entry)
        return entry

    def lookup(self, kpsa_id: str) -> KpsaEntry | None:
        if self.local is not None:
            hit = self.local.lookup(kpsa_id)
            if hit is not None:
                return hit
        if not self.fetcher.is_ours(kpsa_id):
            return None
        try:
            return self._entry(self.fetcher.fetch_blocking(kpsa_id, SUID_SAEF))
        except Exception as exc:  # noqa: BLE001 - unknown to us: the handshake fails UNKNOWN_PSK_IDENTITY
            self.errors.append(exc)
            return None

    async def prefetch(self, kpsa_id: str) -> KpsaEntry:
        return self._entry(await self.fetcher.fetch(kpsa_id, SUID_SAEF))

