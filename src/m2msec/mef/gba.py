"""GBA-Based Remote Security Provisioning (TS-0003 8.1.3, 8.3.2.3; 3GPP TS 33.220, TS 33.222).

The MEF takes the role of a GBA **NAF**: the Enrolee (UE) has bootstrapped with the
operator's BSF (Ub) and holds (Ks, RAND, B-TID, lifetime); it opens the Bootstrap
Security Handshake with the MEF as TLS 1.2 PSK (TS 33.222 "Shared key-based mutual
authentication between UE and NAF"):

* the MEF sends the PSK identity hint ``3GPP-bootstrapping``;
* the Enrolee answers ``psk_identity`` = ``"3GPP-bootstrapping." || B-TID`` (the form of
  TS 36.508 table 4.7H-5; the MEF also accepts the prefix without the ``.``);
* PSK = Ks_NAF = KDF(Ks, "gba-me", RAND, IMPI, NAF_Id) (TS 33.220 B.3,
  :func:`m2msec.keys.derive_gba_ks_naf`), NAF_Id = MEF-FQDN || Ua security protocol
  identifier (0x01,0x00,0x01,yy,zz), (yy,zz) = the TLS cipher suite (TS 33.220 H.3); the
  MEF's PSK listener offers exactly TLS_PSK_WITH_AES_128_CBC_SHA256 (0x00,0xAE, TS-0003
  10.2.2), so NAF_Id = MEF-FQDN || 01 00 01 00 AE;
* the MEF obtains Ks_NAF, the IMPI and the key lifetime from the BSF over **Zn**
  (:class:`ZnClient`), maps the IMPI to a configured enrolee (:func:`add_gba_enrolee`) and
  from there the Enrolment Key Generation and Enrolment Exchange run exactly as in the
  Pre-Provisioned Symmetric Key RSPF (Ke/KeID from the exporter, 10.3.1/10.3.4).

Profile note: TS-0003 8.3.2.3 lets the MEF *be* the BSF (Ke = Ks, KeID = B-TID, the
Enrolment Target a NAF).  m2msec keeps the BSF an operator system (3GPP's split) and uses
GBA to authenticate the MEF Handshake, so every key the Enrolment Targets fetch keeps the
10.3.2/10.3.3/10.3.7 derivations and KeID keeps the 10.3.4 form.

:class:`BSFSimulator` is a stand-in for the operator's BSF: a small HTTP/JSON server on
127.0.0.1 holding (IMPI, Ks, RAND, B-TID, lifetime) records, a simulated Ub
(challenge/response with :func:`m2msec.keys.gba_simulated_aka`, not Milenage) and the Zn
look-up a NAF makes (JSON instead of Diameter/SOAP, NAF authenticated by a bearer token).
"""

from __future__ import annotations

from collections import deque

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from m2msec.errors import M2MSecError, ParseError, UnknownKeyError
from m2msec.keys import GBA_RAND_LENGTH, derive_gba_ks_naf, gba_naf_id, gba_simulated_aka, gba_ua_protocol_id_tls12
from m2msec.mef.state import NS_ENROLEE, EnroleeConfig, MEFError, MEFState, SessionPeer
from m2msec.osuser import admin_details
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.tls.engine import PSKCredentials
from m2msec.tls.profiles import TLS_PSK_WITH_AES_128_CBC_SHA256

__all__ = [
    "PSK_IDENTITY_HINT",
    "BSFSimulator",
    "GBABootstrap",
    "GBAError",
    "GBANaf",
    "ZnAnswer",
    "ZnClient",
    "add_gba_enrolee",
    "gba_psk_identity",
    "parse_gba_psk_identity",
    "ub_bootstrap",
]

Clock = Callable[[], datetime]

PSK_IDENTITY_HINT: Final = b"3GPP-bootstrapping"
"""psk_identity_hint the NAF (MEF) sends (TS 33.222 5.4, TS 24.109 F.3)."""
_PREFIX: Final = "3GPP-bootstrapping"
DEFAULT_SUITE: Final = TLS_PSK_WITH_AES_128_CBC_SHA256.code  # the one PSK suite of TS-0003 10.2.2 (TLS)
NS_GBA_IMPI: Final = "mef.gba_impi"
"""Store records IMPI -> {"enrolee_id"} (the GBA enrolee's Bootstrap Instruction Configuration)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class GBAError(M2MSecError):
    """A GBA refusal (Ub, Zn or the NAF's mapping); never carries key bytes."""


def gba_psk_identity(btid: str) -> bytes:
    """``"3GPP-bootstrapping." || B-TID`` (UTF-8)."""
    if not btid or "\x00" in btid:
        raise ParseError("B-TID must be a non-empty string")
    return f"{_PREFIX}.{btid}".encode("utf-8")


def parse_gba_psk_identity(identity: bytes) -> str | None:
    """The B-TID of a GBA_ME psk_identity, or None for any other identity.

    Accepted: ``3GPP-bootstrapping.<B-TID>`` and ``3GPP-bootstrapping<B-TID>``; the
    ``-uicc``/``-digest`` variants (GBA_U Ks_int_NAF, GBA_Digest) are not supported
    (None).  A B-TID (base64(RAND)@BSF-FQDN) cannot start with '.' or '-'."""
    try:
        text = identity.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith(_PREFIX):
        return None
    rest = text[len(_PREFIX):]
    if rest.startswith("-"):
        return None
    if rest.startswith("."):
        rest = rest[1:]
    return rest if "@" in rest and rest.count("@") == 1 and rest.split("@")[0] else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ParseError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ParseError(f"{what} is not base64") from None


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ParseError("lifetime must be an ISO 8601 string")
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError("lifetime is not ISO 8601") from None
    if t.tzinfo is None:
        raise ParseError("lifetime must carry a UTC offset")
    return t


def _naf_id(naf_fqdn: str, suite_code: int) -> bytes:
    return gba_naf_id(naf_fqdn, gba_ua_protocol_id_tls12(suite_code))


# ============================================================================ UE side


@dataclass(frozen=True, repr=False)
class GBABootstrap:
    """What the UE keeps after GBA bootstrapping (Ub): Ks is never shown."""

    impi: str
    btid: str
    ks: bytes = field(repr=False)
    rand: bytes = field(repr=False)
    expires_at: datetime

    def __repr__(self) -> str:
        return f"GBABootstrap(impi={self.impi!r}, btid={self.btid!r}, expires_at={self.expires_at.isoformat()})"

    def ks_naf(self, naf_fqdn: str, suite_code: int = DEFAULT_SUITE) -> bytes:
        """Ks_NAF for the NAF ``naf_fqdn`` and the TLS-PSK Ua protocol with ``suite_code``."""
        return derive_gba_ks_naf(self.ks, self.rand, self.impi, _naf_id(naf_fqdn, suite_code))

    def psk(self, naf_fqdn: str, suite_code: int = DEFAULT_SUITE) -> PSKCredentials:
        """TLS-PSK credentials towards the NAF: identity ``3GPP-bootstrapping.<B-TID>``, key Ks_NAF."""
        return PSKCredentials(gba_psk_identity(self.btid), self.ks_naf(naf_fqdn, suite_code))


def _post(url: str, doc: dict[str, Any], *, token: str | None = None,
          timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as rsp:  # noqa: S310 - operator URL from config
            status, body = rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise GBAError(f"BSF not reachable: {type(exc).__name__}", rsc=RSC.TARGET_NOT_REACHABLE) from None
    try:
        parsed = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise GBAError(f"BSF answered HTTP {status} without JSON", rsc=RSC.BAD_REQUEST) from None
    if not isinstance(parsed, dict):
        raise GBAError("BSF answer is not a JSON object", rsc=RSC.BAD_REQUEST)
    return status, parsed


def ub_bootstrap(bsf_url: str, impi: str, k: bytes, *, timeout: float = 5.0) -> GBABootstrap:
    """GBA bootstrapping over the simulator's Ub: challenge (RAND), response (RES); Ks is
    computed here from the subscriber key K and never crosses the wire."""
    url = bsf_url.rstrip("/") + "/ub/bootstrap"
    status, doc = _post(url, {"impi": impi}, timeout=timeout)
    if status != 401 or "rand" not in doc:
        raise GBAError(f"Ub: expected a challenge, got HTTP {status}", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
    rand = _unb64(doc["rand"], "RAND")
    if len(rand) != GBA_RAND_LENGTH:
        raise GBAError("Ub: RAND must be 16 octets", rsc=RSC.BAD_REQUEST)
    res, ks = gba_simulated_aka(k, rand)
    status, doc = _post(url, {"impi": impi, "rand": _b64(rand), "res": _b64(res)}, timeout=timeout)
    if status != 200:
        raise GBAError(f"Ub: bootstrapping refused (HTTP {status}: {doc.get('error', '?')})",
                       rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
    btid = doc.get("btid")
    if not isinstance(btid, str) or btid.split("@")[0] != _b64(rand):
        raise GBAError("Ub: B-TID does not name this RAND", rsc=RSC.BAD_REQUEST)
    return GBABootstrap(impi, btid, ks, rand, _parse_time(doc.get("lifetime")))


# ============================================================================ BSF simulator


@dataclass(frozen=True, repr=False)
class BootstrapRecord:
    """One bootstrapping session held by the BSF (TS 33.220 4.5.2)."""

    impi: str
    ks: bytes
    rand: bytes
    btid: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"BootstrapRecord(impi={self.impi!r}, btid={self.btid!r}, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True, repr=False)
class ZnAnswer:
    """The BSF's Zn answer: Ks_NAF, the IMPI, the B-TID and the key lifetime."""

    btid: str
    impi: str
    ks_naf: bytes
    expires_at: datetime

    def __repr__(self) -> str:
        return f"ZnAnswer(btid={self.btid!r}, impi={self.impi!r}, expires_at={self.expires_at.isoformat()})"


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class BSFSimulator:
    """A BSF stand-in (operator system): subscribers (IMPI -> K), NAFs (FQDN -> bearer token),
    bootstrapping records; in-process methods plus an HTTP/JSON server (:meth:`start`).

    HTTP (``application/json``):

    * ``POST /ub/bootstrap`` ``{"impi"}`` -> 401 ``{"rand"}``; ``{"impi","rand","res"}`` ->
      200 ``{"btid","lifetime"}`` (403 wrong RES, 404 unknown IMPI, 400 stale RAND);
    * ``POST /zn/bootstrapping-info`` with ``Authorization: Bearer <NAF token>``,
      ``{"btid","naf_id"}`` (naf_id hex) -> 200 ``{"btid","impi","ks_naf","lifetime"}``
      (ks_naf hex); 401 unknown NAF, 403 NAF_Id's FQDN is not the NAF's, 404 unknown or
      expired B-TID, 400 malformed.
    """

    def __init__(self, domain: str = "bsf.operator.example", *, clock: Clock = _utcnow,
                 lifetime: timedelta = timedelta(hours=1)) -> None:
        self.domain = domain
        self.clock = clock
        self.lifetime = lifetime
        self._subscribers: dict[str, bytes] = {}
        self._nafs: dict[str, bytes] = {}
        self._records: dict[str, BootstrapRecord] = {}
        self._challenges: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.zn_requests = 0

    def __repr__(self) -> str:
        return f"BSFSimulator(domain={self.domain!r}, {len(self._records)} sessions)"

    # -- configuration ------------------------------------------------------------------
    def add_subscriber(self, impi: str, k: bytes) -> None:
        if len(k) < 16:
            raise ValueError("K must be at least 16 octets")
        self._subscribers[impi] = bytes(k)

    def add_naf(self, naf_fqdn: str, token: str) -> None:
        self._nafs[naf_fqdn.lower().rstrip(".")] = _token_hash(token)

    # -- Ub ------------------------------------------------------------------------------
    def challenge(self, impi: str) -> bytes:
        if impi not in self._subscribers:
            raise GBAError("unknown IMPI", rsc=RSC.NOT_FOUND)
        rand = secrets.token_bytes(GBA_RAND_LENGTH)
        with self._lock:
            self._challenges[impi] = rand
        return rand

    def respond(self, impi: str, rand: bytes, res: bytes) -> BootstrapRecord:
        k = self._subscribers.get(impi)
        if k is None:
            raise GBAError("unknown IMPI", rsc=RSC.NOT_FOUND)
        with self._lock:
            expected = self._challenges.get(impi)
            if expected is None or not hmac.compare_digest(expected, rand):
                raise GBAError("no outstanding challenge with this RAND", rsc=RSC.BAD_REQUEST)
            xres, ks = gba_simulated_aka(k, rand)
            if not hmac.compare_digest(xres, res):
                raise GBAError("RES does not match", rsc=RSC.ORIGINATOR_NOT_AUTHENTICATED)
            del self._challenges[impi]
            rec = BootstrapRecord(impi, ks, rand, f"{_b64(rand)}@{self.domain}", self.clock() + self.lifetime)
            self._records[rec.btid] = rec
        return rec

    def bootstrap(self, impi: str) -> GBABootstrap:
        """In-process Ub (both sides at once): what the UE would hold afterwards."""
        rand = self.challenge(impi)
        res, ks = gba_simulated_aka(self._subscribers[impi], rand)
        rec = self.respond(impi, rand, res)
        return GBABootstrap(impi, rec.btid, ks, rand, rec.expires_at)

    # -- Zn ------------------------------------------------------------------------------
    def authenticate_naf(self, token: str | None) -> str | None:
        if not token:
            return None
        h = _token_hash(token)
        for fqdn, known in self._nafs.items():
            if hmac.compare_digest(h, known):
                return fqdn
        return None

    def zn_lookup(self, naf_fqdn: str, btid: str, naf_id: bytes) -> ZnAnswer:
        """Ks_NAF for ``btid`` as requested by the (authenticated) NAF ``naf_fqdn`` (TS 33.220 4.5.3)."""
        self.zn_requests += 1
        if len(naf_id) < 6:
            raise GBAError("NAF_Id too short", rsc=RSC.BAD_REQUEST)
        try:
            fqdn = naf_id[:-5].decode("ascii").lower()
        except UnicodeDecodeError:
            raise GBAError("NAF_Id FQDN is not ASCII", rsc=RSC.BAD_REQUEST) from None
        if fqdn != naf_fqdn:
            raise GBAError("NAF_Id does not name the requesting NAF", rsc=RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
        with self._lock:
            rec = self._records.get(btid)
        if rec is None:
            raise GBAError("unknown B-TID", rsc=RSC.NOT_FOUND)
        if rec.expires_at <= self.clock():
            raise GBAError("bootstrapping session expired", rsc=RSC.NOT_FOUND)
        return ZnAnswer(btid, rec.impi, derive_gba_ks_naf(rec.ks, rec.rand, rec.impi, bytes(naf_id)), rec.expires_at)

    # -- HTTP ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="bsf-sim", daemon=True)
        self._thread.start()
        return self.url

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> BSFSimulator:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HTTP_OF = {RSC.BAD_REQUEST: 400, RSC.ORIGINATOR_NOT_AUTHENTICATED: 403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE: 403,
            RSC.NOT_FOUND: 404}


def _handler_for(bsf: BSFSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            try:
                n = int(self.headers.get("Content-Length", "0"))
                if n > 16384:
                    raise GBAError("body too large", rsc=RSC.BAD_REQUEST)
                doc = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(doc, dict):
                    raise ParseError("body must be a JSON object")
                if self.path == "/ub/bootstrap":
                    self._ub(doc)
                elif self.path == "/zn/bootstrapping-info":
                    self._zn(doc)
                else:
                    self._reply(404, {"error": "no such resource"})
            except M2MSecError as exc:
                self._reply(_HTTP_OF.get(exc.rsc, 400), {"error": exc.args[0]})
            except (ValueError, TypeError) as exc:
                self._reply(400, {"error": f"malformed request: {type(exc).__name__}"})

        def _ub(self, doc: dict[str, Any]) -> None:
            impi = doc.get("impi")
            if not isinstance(impi, str):
                raise ParseError("impi missing")
            if "res" not in doc:
                self._reply(401, {"rand": _b64(bsf.challenge(impi))})
                return
            rec = bsf.respond(impi, _unb64(doc.get("rand"), "rand"), _unb64(doc.get("res"), "res"))
            self._reply(200, {"btid": rec.btid, "lifetime": rec.expires_at.isoformat()})

        def _zn(self, doc: dict[str, Any]) -> None:
            auth = self.headers.get("Authorization", "")
            naf = bsf.authenticate_naf(auth[7:] if auth.startswith("Bearer ") else None)
            if naf is None:
                self._reply(401, {"error": "NAF not authenticated"})
                return
            btid, naf_id = doc.get("btid"), doc.get("naf_id")
            if not isinstance(btid, str) or not isinstance(naf_id, str):
                raise ParseError("btid and naf_id (hex) are required")
            ans = bsf.zn_lookup(naf, btid, bytes.fromhex(naf_id))
            self._reply(200, {"btid": ans.btid, "impi": ans.impi, "ks_naf": ans.ks_naf.hex(),
                              "lifetime": ans.expires_at.isoformat()})

    return Handler


# ============================================================================ NAF side (the MEF)


def check_zn_url(bsf_url: str) -> None:
    """Zn returns Ks_NAF: refuse a ``bsf_url`` that would send it in clear over a network.

    ``https://`` is always allowed; ``http://`` only to a loopback host (``localhost``,
    127.0.0.0/8, ``::1``: the BSF simulator of the tests and demos); anything else is a
    :class:`GBAError` (an m2msec profile decision; TS-0003 8.1.3 leaves Zn to 3GPP TS 29.109)."""
    try:
        parts = urllib.parse.urlsplit(bsf_url)
        host = parts.hostname
    except ValueError:
        raise GBAError("Zn: bsf_url is not a URL", rsc=RSC.BAD_REQUEST) from None
    scheme = parts.scheme.lower()
    if scheme == "https" and host:
        return
    if scheme == "http" and host:
        if host.lower() in ("localhost", "localhost.") or _is_loopback(host):
            return
        raise GBAError(f"Zn: bsf_url {scheme}://{host} is plain http to a non-loopback host; Ks_NAF would "
                       "travel in clear: use https://", rsc=RSC.BAD_REQUEST)
    raise GBAError("Zn: bsf_url must be an https:// URL (or http:// to a loopback BSF simulator)",
                   rsc=RSC.BAD_REQUEST)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ZnClient:
    """The NAF's Zn client: Ks_NAF for a B-TID from the BSF, cached until the key lifetime.

    Synchronous (urllib): it runs inside the TLS PSK callback, so the BSF must not be
    served by the caller's own event loop."""

    def __init__(self, bsf_url: str, naf_fqdn: str, token: str, *, suite_code: int = DEFAULT_SUITE,
                 clock: Clock = _utcnow, timeout: float = 5.0) -> None:
        check_zn_url(bsf_url)
        self.bsf_url = bsf_url.rstrip("/")
        self.naf_fqdn = naf_fqdn.lower().rstrip(".")
        self._token = token
        self.naf_id = _naf_id(self.naf_fqdn, suite_code)
        self.clock = clock
        self.timeout = timeout
        self._cache: dict[str, ZnAnswer] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ZnClient(bsf={self.bsf_url!r}, naf={self.naf_fqdn!r})"

    def lookup(self, btid: str) -> ZnAnswer:
        with self._lock:
            hit = self._cache.get(btid)
            if hit is not None and hit.expires_at > self.clock():
                return hit
        status, doc = _post(self.bsf_url + "/zn/bootstrapping-info", {"btid": btid, "naf_id": self.naf_id.hex()},
                            token=self._token, timeout=self.timeout)
        if status != 200:
            raise UnknownKeyError(f"Zn: BSF refused B-TID (HTTP {status}: {doc.get('error', '?')})")
        try:
            ks_naf = bytes.fromhex(doc["ks_naf"])
            ans = ZnAnswer(str(doc["btid"]), str(doc["impi"]), ks_naf, _parse_time(doc["lifetime"]))
        except (KeyError, ValueError, TypeError):
            raise GBAError("Zn: malformed BSF answer", rsc=RSC.BAD_REQUEST) from None
        if ans.btid != btid or len(ks_naf) != 32:
            raise GBAError("Zn: BSF answered for another B-TID or with a bad key", rsc=RSC.BAD_REQUEST)
        if ans.expires_at <= self.clock():
            raise UnknownKeyError("Zn: bootstrapping session expired")
        with self._lock:
            self._cache[btid] = ans
        return ans


def add_gba_enrolee(state: MEFState, cfg: EnroleeConfig, impi: str) -> None:
    """Bootstrap Instruction Configuration of a GBA enrolee: ``cfg`` (no KpmID, no certificate)
    bound to the subscriber ``impi`` (the identity the BSF returns over Zn)."""
    if cfg.kpm_id is not None or cfg.cert is not None:
        raise MEFError("a GBA enrolee has neither a KpmID nor certificate information", rsc=RSC.BAD_REQUEST)
    if not impi:
        raise MEFError("the GBA enrolee needs an IMPI", rsc=RSC.BAD_REQUEST)
    if cfg.expiry_seconds <= 0:
        raise MEFError("Enrolment Expiry must be positive", rsc=RSC.BAD_REQUEST)
    with state.store.transaction() as tx:
        tx.put_record(NS_ENROLEE, cfg.enrolee_id, cfg.to_doc())
        tx.put_record(NS_GBA_IMPI, impi, {"enrolee_id": cfg.enrolee_id})
        tx.append_audit("mef-admin", "enrolee-add", cfg.enrolee_id, "ok", admin_details({"rspf": "gba"}))


class GBANaf:
    """The MEF's GBA NAF role (pass as ``MEFServer(state, gba=...)``): PSK look-up and
    session identity for ``3GPP-bootstrapping`` identities."""

    def __init__(self, state: MEFState, zn: ZnClient) -> None:
        if zn.naf_fqdn != state.fqdn.lower().rstrip("."):
            raise ValueError("the Zn client's NAF FQDN must be the MEF-FQDN")
        self.state = state
        self.zn = zn
        self.errors: deque[BaseException] = deque(maxlen=1000)  # the latest refusals (observability)

    def __repr__(self) -> str:
        return f"GBANaf({self.zn!r})"

    @staticmethod
    def handles(identity: bytes) -> bool:
        return identity.startswith(PSK_IDENTITY_HINT)

    def _resolve(self, identity: bytes) -> tuple[ZnAnswer, str] | None:
        btid = parse_gba_psk_identity(identity)
        if btid is None:
            return None
        try:
            ans = self.zn.lookup(btid)
        except M2MSecError as exc:
            self.errors.append(exc)
            return None
        rec = self.state.store.find_record(NS_GBA_IMPI, ans.impi)
        if rec is None:
            self.errors.append(GBAError("no enrolee is configured for this IMPI", rsc=RSC.NOT_FOUND))
            return None
        return ans, str(rec.doc["enrolee_id"])

    def psk_for(self, identity: bytes) -> bytes | None:
        hit = self._resolve(identity)
        return hit[0].ks_naf if hit is not None else None

    def peer_for(self, identity: bytes) -> SessionPeer | None:
        hit = self._resolve(identity)  # cached by the Zn client
        if hit is None:
            return None
        return SessionPeer("enrolee", hit[1], f"gba:{hit[0].btid}")
