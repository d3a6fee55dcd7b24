"""Demo step: the Certificate-Based and GBA-Based RSPFs of the MEF (TS-0003 8.3.2.2, 8.3.2.3, 8.1.2.5, 8.1.3).

One M2M Enrolment Function (:class:`m2msec.mef.MEFServer`, its own thread and event loop,
SQLite store under ``workdir``) listens on 127.0.0.1 and serves both frameworks on one TLS
1.2 listener; every exchange below is real TLS over loopback sockets:

1. **Certificate-Based RSPF** (8.3.2.2; certificates 8.1.2, verification 8.1.2.5): a
   device manufacturer's CA (:class:`m2msec.pki.DevCA`) issued the device a Device
   certificate (10.1.1.4.1, M2M Device ID in ``otherName``); the MEF trusts that CA for
   enrolees and maps the Device ID to the configured Enrolee-ID.  The MEF presents an
   FQDN certificate from the Service Provider's CA, which the enrolee verifies.  The
   Enrolment Exchange yields KeID/Ke (10.3.1, 10.3.4).  A device certificate with the same
   Device ID from a CA the MEF does not trust is refused in the handshake (alert
   ``unknown_ca``; the enrolee's failure maps to RSC 4106).
2. **GBA-Based RSPF** (8.3.2.3, 8.1.3; m2msec profile in ``docs/mef-protocol.md``: the
   BSF stays an operator system and the MEF acts as GBA NAF): the
   :class:`~m2msec.mef.gba.BSFSimulator` stands in for the operator's BSF (HTTP/JSON Ub and
   Zn on 127.0.0.1); the enrolee bootstraps over Ub (B-TID, Ks), opens TLS-PSK with the
   MEF (hint ``3GPP-bootstrapping``, ``psk_identity`` = ``3GPP-bootstrapping.<B-TID>``,
   PSK = Ks_NAF, TS 33.220/33.222), the MEF fetches Ks_NAF over Zn, and the ordinary
   Enrolment Exchange yields Ke/KeID.  An unknown B-TID and the same B-TID after its
   lifetime are refused in the handshake.

Only identifiers and key fingerprints (first 4 octets of SHA-256) are shown, never key
octets.  The two "probe" handshakes only read the negotiated session parameters (the
enrolment client does not expose its TLS engine); they use the same credentials as the
enrolment that follows.  Threads, sockets, the store and its files are released on success
and on failure.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from m2msec.demo_provisioning import fingerprint

__all__ = ["run_other_rspfs"]

Rows = list[tuple[str, str]]

SP = "m2msec.example"
MEF_FQDN = f"mef.{SP}"
#: M2M Device ID (TS-0001 annex H) in the manufacturer's Device certificate (10.1.1.4.1)
DEVICE_ID = "0.2.481.1.100.3030.10011"
DEVICE_SUBTREE = "0.2.481.1/100.3030"  # what the manufacturer's CA may certify (name constraint)
CERT_ENROLEE = "Cdemo-rspf-cert"
GBA_ENROLEE = "Cdemo-rspf-gba"
IMPI = "001010000000042@ims.mnc001.mcc001.3gppnetwork.org"
BSF_DOMAIN = "bsf.operator.example"
BTID_LIFETIME = timedelta(hours=1)
MEF_THREAD = "demo-rspf-mef"
_TIMEOUT = 30.0


def _now() -> datetime:
    return datetime.now(UTC)


class _OperatorClock:
    """The BSF's (and the MEF's Zn cache's) clock: real time plus an offset the demo moves
    forward to pass a B-TID's lifetime without waiting."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class _HandshakeErrors(list[BaseException]):
    """``MEFServer.handshake_errors`` that can be waited on (the server records a failed
    handshake on its own thread, after sending the alert the client reacts to)."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def append(self, item: BaseException) -> None:
        with self._cond:
            super().append(item)
            self._cond.notify_all()

    def wait_for_count(self, n: int, timeout: float = 5.0) -> BaseException | None:
        with self._cond:
            self._cond.wait_for(lambda: len(self) >= n, timeout)
            return self[n - 1] if len(self) >= n else None


@contextmanager
def _mef_on_thread(server: Any) -> Iterator[tuple[str, int]]:
    """Run ``server`` on its own event loop thread: the GBA PSK callback makes a blocking Zn
    request, which must not stall the enrolee's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=MEF_THREAD, daemon=True)
    thread.start()
    started = False
    try:
        address: tuple[str, int] = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
        started = True
        yield address
    finally:
        try:
            if started:
                asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


@dataclass(frozen=True)
class _Session:
    version: str
    cipher: str
    hint: str | None
    peer: str | None


async def _probe(host: str, port: int, tls: Any) -> _Session:
    """One handshake with ``tls``, closed at once: the negotiated session parameters."""
    from m2msec.tls.aio import open_connection

    reader, writer = await open_connection(host, port, tls, timeout=10)
    try:
        engine = writer.engine
        pv = engine.peer_verification
        peer = f"{pv.flavour.value} {pv.identifier}" if pv is not None and hasattr(pv, "flavour") else None
        hint = engine.psk_identity_hint
        return _Session(str(engine.protocol_version), str(engine.cipher_name),
                        hint.decode("utf-8", "replace") if hint else None, peer)
    finally:
        writer.close()


def _refusal(exc: BaseException) -> str:
    """The enrolee's view of a refused handshake: the alert it received and the RSC it maps to."""
    from m2msec.errors import M2MSecError
    from m2msec.tls.engine import TLSHandshakeError

    if isinstance(exc, TLSHandshakeError):
        alert = exc.detail.split("alert ", 1)[1] if "alert " in exc.detail else exc.detail
        return f"alert '{alert}' ({exc.reason.value}), RSC {int(exc.rsc)} {exc.rsc.name}"
    if isinstance(exc, M2MSecError):
        return f"RSC {int(exc.rsc)} {exc.rsc.name}: {exc.args[0]}"
    return f"{type(exc).__name__}"


def _remove_store_files(db: Path) -> None:
    for p in db.parent.glob(db.name + "*"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def run_other_rspfs(workdir: Path) -> Rows:
    """Run the certificate- and GBA-based RSPF demo; returns ``(name, value)`` rows; raises on any failure."""
    from m2msec.mef import EnroleeConfig, MEFServer, MEFState
    from m2msec.mef.gba import BSFSimulator, GBANaf, ZnClient, add_gba_enrolee
    from m2msec.mef.state import NS_KE
    from m2msec.pki import CertificateFlavour, DevCA, PeerCertInfo
    from m2msec.store import KeyEncryptionKey, open_store
    from m2msec.tls.engine import CertCredentials

    created_dir = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = os.urandom(3).hex()
    db = workdir / f"mef-rspf-{tag}.db"
    now = _now()
    # Certificates: the device manufacturer's CA (enrolee certificates), the SP's CA (the MEF's), a rogue CA.
    maker = DevCA.create("Demo Device Maker", now=now, permit_device=[DEVICE_SUBTREE])
    sp_ca = DevCA.create("m2msec demo SP", now=now, permit_dns=[SP], permit_uri=[SP])
    rogue = DevCA.create("Rogue Device Maker", now=now, permit_device=[DEVICE_SUBTREE])

    def creds(issued: Any) -> CertCredentials:
        return CertCredentials(issued.private_key, issued.certificate, tuple(issued.chain))

    device = creds(maker.issue(CertificateFlavour.DEVICE, [DEVICE_ID], now=now))
    forged = creds(rogue.issue(CertificateFlavour.DEVICE, [DEVICE_ID], now=now))
    mef_cred = creds(sp_ca.issue(CertificateFlavour.FQDN, [MEF_FQDN], now=now))

    gba_k = os.urandom(32)  # the subscriber key K shared by the UICC/device and the operator's HSS
    naf_token = os.urandom(16).hex()
    op_clock = _OperatorClock()
    bsf = BSFSimulator(BSF_DOMAIN, clock=op_clock, lifetime=BTID_LIFETIME)
    store = open_store(f"sqlite:///{db}", KeyEncryptionKey.generate(), clock=_now)
    try:
        bsf.add_subscriber(IMPI, gba_k)
        bsf.add_naf(MEF_FQDN, naf_token)
        bsf.start("127.0.0.1", 0)
        state = MEFState(store, MEF_FQDN, _now, (maker.trust_anchor,))
        state.add_enrolee(EnroleeConfig(CERT_ENROLEE, cert=PeerCertInfo(CertificateFlavour.DEVICE, DEVICE_ID),
                                        expiry_seconds=3600))
        add_gba_enrolee(state, EnroleeConfig(GBA_ENROLEE, expiry_seconds=3600), IMPI)
        naf = GBANaf(state, ZnClient(bsf.url, MEF_FQDN, naf_token, clock=op_clock))
        server = MEFServer(state, credentials=mef_cred, gba=naf)
        errors = _HandshakeErrors()
        server.handshake_errors = errors
        with _mef_on_thread(server) as (host, port):
            rows: Rows = [("MEF", f"{MEF_FQDN} on {host}:{port}: one TLS 1.2 listener for both RSPFs"
                                  f" (certificate {MEF_FQDN} from the SP CA)")]
            rows += asyncio.run(asyncio.wait_for(
                _certificate_rspf(host, port, state, errors, device, forged, sp_ca.trust_anchor), _TIMEOUT))
            rows += asyncio.run(asyncio.wait_for(
                _gba_rspf(host, port, state, bsf, naf, gba_k, op_clock), _TIMEOUT))
            n_ke = len(store.list_credentials(NS_KE))
            if n_ke != 2:
                raise RuntimeError(f"the MEF holds {n_ke} Enrolment Keys, expected 2 (refused attempts leave none)")
            rows.append(("Enrolment Keys the MEF stored", "2 (one per accepted enrolment; none for the refused ones)"))
        return rows
    finally:
        try:
            bsf.close()
        finally:
            store.close()
            _remove_store_files(db)
            if created_dir and not any(workdir.iterdir()):
                workdir.rmdir()


async def _certificate_rspf(host: str, port: int, state: Any, errors: _HandshakeErrors, device: Any, forged: Any,
                            sp_anchor: Any) -> Rows:
    """Certificate-Based RSPF (8.3.2.2): mutual certificate TLS, 8.1.2.5 on both sides, Enrolment Exchange."""
    from m2msec.mef import enrol, mef_tls_config
    from m2msec.pki import VerificationReason
    from m2msec.tls.engine import TLSHandshakeError

    def tls(cred: Any) -> Any:
        return mef_tls_config(credentials=cred, mef_fqdn=MEF_FQDN, mef_anchors=(sp_anchor,), clock=_now)

    session = await _probe(host, port, tls(device))
    e = await enrol(host, port, tls(device), mef_fqdn=MEF_FQDN)
    held = state.enrolment_key(e.ke_id)
    if held is None:
        raise RuntimeError("the MEF did not store the Enrolment Key")
    mef_ke, md, _expires = held
    bound = str(md.get("credential"))
    if e.enrolee_id != CERT_ENROLEE or bound != f"cert:device|{DEVICE_ID}":
        raise RuntimeError(f"the MEF bound the session to {e.enrolee_id!r} via {bound!r}")
    if mef_ke != e.ke:
        raise RuntimeError("the enrolee and the MEF hold different Enrolment Keys")
    if not e.ke_id.endswith("@" + MEF_FQDN):
        raise RuntimeError("KeID is not of the form RelativeKeID@MEF-FQDN")

    before = len(errors)
    try:
        await enrol(host, port, tls(forged), mef_fqdn=MEF_FQDN)
    except TLSHandshakeError as exc:
        seen_by_enrolee = _refusal(exc)
        if "unknown ca" not in exc.detail:
            raise RuntimeError(f"the MEF refused the forged certificate with another alert: {exc.detail}") from None
    else:
        raise RuntimeError("the MEF accepted a device certificate from an untrusted CA")
    server_err = errors.wait_for_count(before + 1)
    reason = VerificationReason.UNTRUSTED_ROOT.value
    if not isinstance(server_err, TLSHandshakeError) or f"{reason}:" not in server_err.detail:
        raise RuntimeError(f"the MEF's verification failed for another reason: {server_err!r}")
    return [
        ("Certificate-Based RSPF (8.3.2.2)", "mutual certificate TLS; each side verifies the other per 8.1.2.5"),
        ("enrolee certificate", f"Device certificate (10.1.1.4.1), M2M Device ID {DEVICE_ID},"
                                " from the device manufacturer's CA (the MEF's enrolee trust anchor)"),
        ("MEF Handshake (mutual certificates)", f"{session.version}, {session.cipher};"
                                                f" the enrolee verified the MEF as {session.peer}"),
        ("Enrolee-ID the MEF bound from the certificate", f"{e.enrolee_id} (matched {bound})"),
        ("KeID of the certificate enrolee (10.3.4)", e.ke_id),
        ("Ke fingerprint: certificate enrolee / MEF", f"{fingerprint(e.ke)} / {fingerprint(mef_ke)} (same key)"),
        ("same Device ID, certificate from an untrusted CA", f"refused in the handshake: MEF says {reason};"
                                                             f" enrolee gets {seen_by_enrolee}"),
    ]


async def _gba_rspf(host: str, port: int, state: Any, bsf: Any, naf: Any, gba_k: bytes,
                    op_clock: _OperatorClock) -> Rows:
    """GBA-Based RSPF (8.3.2.3, profile): Ub with the BSF simulator, TLS-PSK with Ks_NAF, Zn, Enrolment Exchange."""
    from m2msec.mef import enrol, mef_tls_config
    from m2msec.mef.gba import gba_psk_identity, ub_bootstrap
    from m2msec.tls.engine import PSKCredentials, TLSHandshakeError

    rows: Rows = [
        ("GBA-Based RSPF (8.3.2.3, TS 33.220/33.222)", "the MEF acts as GBA NAF; Ke/KeID as in the PSK RSPF (profile)"),
        ("BSF", f"m2msec BSF simulator on {bsf.url} - a stand-in for the operator's BSF"
                " (simulated AKA, JSON Ub/Zn instead of HTTP Digest AKA / Diameter)"),
    ]
    boot = await asyncio.to_thread(ub_bootstrap, bsf.url, IMPI, gba_k)
    ks_naf = boot.ks_naf(MEF_FQDN)
    rows += [
        ("enrolee's GBA bootstrap over Ub", f"IMPI {IMPI}, B-TID {boot.btid}"),
        ("Ks_NAF for the MEF (TS 33.220 B.3)", f"fingerprint {fingerprint(ks_naf)}, NAF_Id = {MEF_FQDN} || "
                                              f"{naf.zn.naf_id[-5:].hex(' ')}"),
    ]
    zn_before = bsf.zn_requests
    session = await _probe(host, port, mef_tls_config(psk=boot.psk(MEF_FQDN)))
    if session.hint != "3GPP-bootstrapping" or not session.cipher.startswith("PSK-"):
        raise RuntimeError(f"unexpected GBA session: hint {session.hint!r}, cipher {session.cipher}")
    e = await enrol(host, port, mef_tls_config(psk=boot.psk(MEF_FQDN)), mef_fqdn=MEF_FQDN)
    held = state.enrolment_key(e.ke_id)
    if held is None:
        raise RuntimeError("the MEF did not store the Enrolment Key")
    mef_ke, md, _expires = held
    if e.enrolee_id != GBA_ENROLEE or md.get("credential") != f"gba:{boot.btid}":
        raise RuntimeError(f"the MEF bound the GBA session to {e.enrolee_id!r} via {md.get('credential')!r}")
    if mef_ke != e.ke or e.ke == ks_naf:
        raise RuntimeError("Ke differs between the enrolee and the MEF, or equals Ks_NAF")
    zn = bsf.zn_requests - zn_before
    rows += [
        ("MEF Handshake (TLS-PSK, MEF as NAF)", f"{session.version}, {session.cipher}, hint '{session.hint}',"
                                               f" psk_identity '{gba_psk_identity(boot.btid).decode()}'"),
        ("MEF fetched Ks_NAF over Zn", f"{zn} Zn request (then cached until the B-TID lifetime);"
                                       f" IMPI -> Enrolee-ID {e.enrolee_id}"),
        ("KeID of the GBA enrolee (10.3.4)", e.ke_id),
        ("Ke fingerprint: GBA enrolee / MEF", f"{fingerprint(e.ke)} / {fingerprint(mef_ke)} (same key, from the TLS"
                                          " exporter, not Ks_NAF itself)"),
    ]

    async def refused(psk: PSKCredentials) -> str:
        n = len(naf.errors)
        try:
            await enrol(host, port, mef_tls_config(psk=psk), mef_fqdn=MEF_FQDN)
        except TLSHandshakeError as exc:
            why = str(naf.errors[n].args[0]) if len(naf.errors) > n else "?"
            return f"refused in the handshake: MEF says '{why}'; enrolee gets {_refusal(exc)}"
        raise RuntimeError("the MEF accepted a GBA identity it should refuse")

    unknown = PSKCredentials(gba_psk_identity(f"{'A' * 22}==@{BSF_DOMAIN}"), os.urandom(32))
    rows.append(("B-TID the BSF never issued", await refused(unknown)))
    op_clock.offset += BTID_LIFETIME + timedelta(seconds=1)  # the operator's clock passes the B-TID lifetime
    rows.append((f"same B-TID after its lifetime ({int(BTID_LIFETIME.total_seconds())} s)",
                 await refused(boot.psk(MEF_FQDN))))
    if "expired" not in rows[-1][1] or "unknown B-TID" not in rows[-2][1]:
        raise RuntimeError(f"unexpected GBA refusals: {rows[-2][1]!r}, {rows[-1][1]!r}")
    return rows
