"""Secrets never reach a log line, an exception text or a repr()/str() (house rule; TS-0003 6.2.5.2
secure storage: key material stays inside the secure environment).

Real flows run with the root logger at DEBUG and everything captured:

* in-process (``caplog``, every logger of every library): MEF enrolment with Kpm (PSK RSPF),
  the MAF fetching Km from the MEF for a remotely provisioned client, the MAF PSK handshake,
  Key Registration with an exported key (Kc) and a supplied one, Key Retrieval by a Target,
  a failed handshake with a wrong Km, a refused retrieval;
* as real processes (``m2msec mef serve`` and ``m2msec maf serve`` with the root logger at
  DEBUG on stderr): the same flows; their stderr is scanned;
* ESCertKE key establishment with a store-backed key cache, the key then used for ESPrim (SUID
  43) and ESData (SUID 44), a second instance reading the key through the store;
* Provisioned Symmetric Key SAEF (TLS-PSK) with key export.

Every known secret - Kpm, Ke, Kre, Km, Kc, the MAF's PSK towards the MEF, supplied and retrieved
keys, the store KEKs, SAEF Kpsa and exported keys, the ESCertKE pairwiseE2EKey, private keys (PEM,
DER, the private scalar) - is searched in hex (both cases), base64, base64url (with and without
padding), the raw ``bytes`` repr and the raw bytes themselves, and for integers in decimal and hex, in every captured record
(formatted message with traceback, and the record's attributes) and in repr()/str() of the objects
that hold the secrets.  A negative control proves the scanner finds a planted leak.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parent / "mef"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "escertke"))

from _escertke_support import INI_CERT_ID, INI_ID, SP, TER_CERT_ID, TER_ID, creds  # noqa: E402
from _escertke_support import terminator_info  # noqa: E402
from _escertke_support import PKI as ESCertKEPKI  # noqa: E402
from _mefhelp import ThreadedMEF  # noqa: E402

from m2msec.esdata import Source, Target  # noqa: E402
from m2msec.escertke import ESCertKEKeys, InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint  # noqa: E402
from m2msec.esprim import (  # noqa: E402
    MemoryReceiverState,
    Originator,
    OriginatorPolicy,
    Receiver,
    ReceiverPolicy,
    StoreKeySource,
)
from m2msec.esprim.originator import SessionReady  # noqa: E402
from m2msec.maf import AdminConfig, MAFClient, MAFClientConfig, MAFService  # noqa: E402
from m2msec.maf.client import MAFResponseError  # noqa: E402
from m2msec.maf.mef import FetcherMEFClient  # noqa: E402
from m2msec.maf.server import MAFServer  # noqa: E402
from m2msec.mef import (  # noqa: E402
    EnroleeConfig,
    EnrolmentRequest,
    MAFPreference,
    MEFKeyFetcher,
    MEFState,
    TargetConfig,
    enrol,
    mef_tls_config,
)
from m2msec.onem2m import Operation, RequestPrimitive, ResponsePrimitive  # noqa: E402
from m2msec.onem2m.enums import SUID  # noqa: E402
from m2msec.onem2m.rsc import ResponseStatusCode as RSC  # noqa: E402
from m2msec.pki import CertificateFlavour, CRLStore, DevCA, PeerCertInfo  # noqa: E402
from m2msec.saef import InMemoryKpsaDirectory, KpsaEntry, PeerKind, psk_client, psk_server  # noqa: E402
from m2msec.saef.framework import connect, serve  # noqa: E402
from m2msec.store import KeyEncryptionKey, open_store  # noqa: E402
from m2msec.tls import Transport  # noqa: E402
from m2msec.tls.engine import PSKCredentials, TLSHandshakeError  # noqa: E402
from m2msec.tls.profiles import EXPORTER_CONNECTION  # noqa: E402

MAF = "maf.m2m.example.com"
MEF_FQDN = "mef.m2m.example.com"
ADMIN = "sp.m2m.example.com"
DEVICE = "/id-in/Cleakdev"  # remotely provisioned MAF Client (MEF enrolee)
AE2 = "//sp.m2m.example.com/CAE2"  # a pre-provisioned MAF Client, the Target of the keys
MAF_PSK_ID = "maf-psk@mef"


# ------------------------------------------------------------------ the scanner


def _b64_forms(b: bytes) -> list[str]:
    std, url = base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode()
    return [std, std.rstrip("="), url, url.rstrip("=")]


def forms(secret: bytes) -> set[str]:
    """The ways a secret is usually written into text."""
    out = {secret.hex(), secret.hex().upper(), repr(secret)[2:-1], secret.decode("latin-1"), *_b64_forms(secret)}
    if len(secret) <= 64:
        n = int.from_bytes(secret, "big")
        out |= {str(n), format(n, "x")}
    return {f for f in out if len(f) >= 12}  # short forms would match by chance


@dataclass
class Secrets:
    """Named secrets and their text forms."""

    forms: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, secret: bytes) -> None:
        assert len(secret) >= 16, f"{name}: too short to search for reliably"
        self.forms[name] = forms(secret)

    def add_private_key(self, name: str, key: Any) -> None:
        """PKCS#8 DER and PEM (each body line), the private scalar/exponent."""
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        self.add(f"{name} DER", der)
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        # a body line that encodes public bytes only (an EC key's public point ends its PKCS#8) is
        # also in the certificate: it is no leak, and matches a stored certificate's base64 by chance
        self.forms[f"{name} PEM"] = {line for line in pem.splitlines()
                                     if len(line) >= 40 and base64.b64decode(line) not in spki}
        nums = key.private_numbers()
        value = getattr(nums, "private_value", None) or getattr(nums, "d")
        self.add(f"{name} scalar", value.to_bytes((value.bit_length() + 7) // 8, "big"))

    def add_kek(self, name: str, kek: KeyEncryptionKey) -> None:
        self.add(name, kek._key)  # noqa: SLF001 - the test must know the KEK bytes to look for them

    def find(self, text: str) -> list[str]:
        return sorted({name for name, fs in self.forms.items() for f in fs if f in text})

    def assert_absent(self, texts: Iterable[tuple[str, str]]) -> None:
        leaks = [(where, name) for where, text in texts for name in self.find(text)]
        assert leaks == [], f"secrets found: {leaks}"


_FMT = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


def record_texts(records: Iterable[logging.LogRecord]) -> Iterator[tuple[str, str]]:
    """Each record formatted (message, traceback, stack) and its attributes' reprs."""
    for r in records:
        yield f"log {r.name}", _FMT.format(r)
        yield f"log {r.name} attributes", repr({k: v for k, v in vars(r).items() if k != "exc_info"})


def store_texts(db: Path, kek: KeyEncryptionKey, *, audited: bool = True) -> Iterator[tuple[str, str]]:
    """The audit trail of the store at ``db`` and the raw database files (keys are stored
    encrypted under the KEK: no plaintext form may be in them)."""
    with open_store(f"sqlite:///{db}", kek) as store:
        entries = store.list_audit(limit=None)
    assert entries or not audited, f"{db.name}: no audit entries"
    yield f"{db.name} audit", "\n".join(repr(e) for e in entries)
    for f in sorted(db.parent.glob(db.name + "*")):
        yield f"file {f.name}", f.read_bytes().decode("latin-1")


def object_texts(**objects: Any) -> Iterator[tuple[str, str]]:
    for name, obj in objects.items():
        yield f"repr({name})", repr(obj)
        yield f"str({name})", str(obj)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    return caplog


def test_the_scanner_finds_planted_leaks(debug_logs: pytest.LogCaptureFixture) -> None:
    """Negative control: each form of a secret in a log record or a repr is found."""
    s = Secrets()
    key = secrets.token_bytes(32)
    s.add("K", key)
    pk = DevCA.create("X", now=datetime.now(UTC), permit_uri=["x.example.com"])._root_key  # noqa: SLF001
    s.add_private_key("CA key", pk)
    log = logging.getLogger("m2msec.test.leak")
    planted = [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("=")]
    for i, text in enumerate(planted):
        debug_logs.clear()
        log.debug("value %s", text)
        assert s.find(_FMT.format(debug_logs.records[0])) == ["K"], i
    debug_logs.clear()
    log.debug("bytes %r", key)  # raw repr, only in the arguments' rendering
    assert "K" in s.find(_FMT.format(debug_logs.records[0]))
    debug_logs.clear()
    try:
        raise ValueError(f"key={key.hex()}")
    except ValueError:
        log.exception("failed")  # in the traceback text only
    assert "K" in s.find(_FMT.format(debug_logs.records[0]))
    pem = pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()).decode()
    assert "CA key PEM" in s.find(pem) and "CA key scalar" in s.find(str(pk.private_numbers().private_value))
    body = [line for line in pem.splitlines() if not line.startswith("-----")]
    assert all(s.find(line) == ["CA key PEM"] for line in body[:-1])  # each line with private bytes alone
    spki = pk.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert s.find(base64.b64encode(spki).decode()) == []  # the public key (as in a stored certificate) is no leak
    assert base64.b64decode(body[-1]) in spki and s.find(body[-1]) == []  # the P-256 point ends the PKCS#8
    assert s.find("x" + key.decode("latin-1") + "y") == ["K"]  # raw bytes (database files are read as latin-1)
    with pytest.raises(AssertionError, match="secrets found"):
        s.assert_absent(object_texts(leaky=type("Leaky", (), {"__repr__": lambda self: f"L({key!r})"})()))


# ------------------------------------------------------------------ MEF + MAF flows


@dataclass
class Keys:
    kpm: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    maf_psk: bytes = field(default_factory=lambda: secrets.token_bytes(32))  # the MAF towards the MEF
    km_ae2: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    supplied: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    wrong_km: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    mef_kek: KeyEncryptionKey = field(default_factory=KeyEncryptionKey.generate)
    maf_kek: KeyEncryptionKey = field(default_factory=KeyEncryptionKey.generate)

    def secrets(self) -> Secrets:
        s = Secrets()
        for name in ("kpm", "maf_psk", "km_ae2", "supplied", "wrong_km"):
            s.add(name, getattr(self, name))
        s.add_kek("MEF KEK", self.mef_kek)
        s.add_kek("MAF KEK", self.maf_kek)
        return s


def _provision_mef(store: Any, k: Keys) -> MEFState:
    state = MEFState(store, MEF_FQDN, lambda: datetime.now(UTC), ())
    state.add_enrolee(EnroleeConfig(DEVICE, kpm_id="kpm-leakdev",
                                    mafs=(MAFPreference(MAF, "https://maf/keyreg", "https://maf/keyret",
                                                        "https://maf/clientreg"),)), kpm=k.kpm)
    state.add_target(TargetConfig(MAF, psk_id=MAF_PSK_ID), psk=k.maf_psk)
    return state


def _provision_maf(store: Any, k: Keys, mef: Any = None) -> MAFService:
    svc = MAFService(store, MAF, admins=[AdminConfig(ADMIN)], clock=lambda: datetime.now(UTC), mef=mef)
    svc.add_km_client("cae2@" + MAF, k.km_ae2, client_id=AE2)
    return svc


async def client_flows(mef_port: int, maf_port: int, k: Keys, s: Secrets) -> dict[str, Any]:
    """Enrol with the MEF, register with the MAF (Km fetched from the MEF), register an exported
    and a supplied key for AE2, AE2 retrieves both; a wrong Km and a non-Target are refused.
    Adds every secret seen to ``s``; returns the objects that hold secrets."""
    now = datetime.now(UTC)
    e = await enrol("127.0.0.1", mef_port, mef_tls_config(psk=PSKCredentials(b"kpm-leakdev", k.kpm)),
                    EnrolmentRequest(maf_enrolment=True))
    km = e.km(MAF)
    s.add("Ke", e.ke)
    s.add("Kre", e.kre)
    s.add("Km", km)
    cfg = MAFClientConfig(MAF, ADMIN, "127.0.0.1", maf_port, psk=PSKCredentials(e.ke_id.encode(), km))
    c1 = MAFClient(cfg)
    async with c1:
        reg = await c1.register(now + timedelta(days=1))
    async with c1:  # the assigned KmID now
        exported = await c1.register_key(SUID.MAF_ESPRIM, [AE2], now + timedelta(hours=1))
        kc, _ = c1.export_kc()
        s.add("Kc", kc)
        supplied = await c1.register_key(SUID.MAF_ESDATA_ENCRYPT, [AE2], now + timedelta(hours=1),
                                         key_value=k.supplied)
    assert exported.key == kc and supplied.key == k.supplied
    c2 = MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", maf_port, psk=PSKCredentials(b"cae2@" + MAF.encode(),
                                                                                         k.km_ae2)))
    async with c2:
        await c2.register(now + timedelta(days=1))
        got1 = await c2.retrieve_key(exported.key_id)
        got2 = await c2.retrieve_key(supplied.key_id)
    assert got1.key == kc and got2.key == k.supplied
    # refusals: a wrong Km for the KeID, a Source that is not a Target retrieving
    with pytest.raises(TLSHandshakeError) as bad_km:
        async with MAFClient(MAFClientConfig(MAF, ADMIN, "127.0.0.1", maf_port,
                                             psk=PSKCredentials(e.ke_id.encode(), k.wrong_km))):
            pass
    async with c1:
        with pytest.raises(MAFResponseError) as not_target:
            await c1.retrieve_key(exported.key_id)
    return {"enrolment": e, "client": c1, "client_config": cfg, "psk": cfg.psk, "registration": reg,
            "exported": exported, "exported.response": exported.response, "supplied": supplied,
            "supplied.response": supplied.response, "retrieved": got1, "retrieved.response": got1.response,
            "retrieved2": got2, "retrieved2.response": got2.response, "target_client": c2,
            "wrong Km error": bad_km.value, "not a Target error": not_target.value}


def test_mef_and_maf_in_process(tmp_path: Path, debug_logs: pytest.LogCaptureFixture) -> None:
    k = Keys()
    s = k.secrets()
    mef_store = open_store(f"sqlite:///{tmp_path / 'mef.db'}", k.mef_kek)
    maf_store = open_store(f"sqlite:///{tmp_path / 'maf.db'}", k.maf_kek)
    state = _provision_mef(mef_store, k)
    objects: dict[str, Any] = {}
    try:
        with ThreadedMEF(state) as mef:
            fetcher = MEFKeyFetcher(mef.host, mef.port, mef_tls_config(psk=PSKCredentials(MAF_PSK_ID.encode(),
                                                                                          k.maf_psk)),
                                    target_id=MAF, mef_fqdn=MEF_FQDN)
            svc = _provision_maf(maf_store, k, FetcherMEFClient(fetcher))

            async def main() -> None:
                async with MAFServer(svc) as srv:
                    objects.update(await client_flows(mef.port, srv.port, k, s))
                    objects.update(maf_server=srv, maf_service=svc, fetcher=fetcher, mef_server=mef.server,
                                   mef_state=state, maf_store=maf_store, mef_store=mef_store, maf_kek=k.maf_kek,
                                   mef_kek=k.mef_kek, fetched=fetcher.cached(objects["enrolment"].ke_id, 21))

            asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        mef_store.close()
        maf_store.close()
    assert objects["fetched"] is not None  # the MAF did fetch Km from the MEF
    assert len(debug_logs.records) > 0 and any(r.levelno == logging.DEBUG for r in debug_logs.records)
    s.assert_absent(record_texts(debug_logs.records))
    s.assert_absent(object_texts(**objects))
    s.assert_absent(store_texts(tmp_path / "mef.db", k.mef_kek))
    s.assert_absent(store_texts(tmp_path / "maf.db", k.maf_kek))


# ------------------------------------------------------------------ the same as real processes

_DEBUG_MAIN = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, "
               "format='%(levelname)s %(name)s %(message)s'); from {mod} import app; app()")


class _Service:
    """``python -c <root logger at DEBUG> m2msec.<x>.cli serve`` with stderr kept in a file."""

    def __init__(self, mod: str, config: Path, expect: str) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", _DEBUG_MAIN.format(mod=mod), "serve", "--config",
                                      str(config)], stdout=subprocess.PIPE, stderr=self.err,
                                     stdin=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(30)
        if not line or expect not in line[0]:
            self.stop()
            raise RuntimeError(f"{mod} did not start: {line!r} {self.stderr()[-2000:]}")
        self.port = int(line[0].strip().rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")


def test_mef_and_maf_processes(tmp_path: Path, debug_logs: pytest.LogCaptureFixture) -> None:
    k = Keys()
    s = k.secrets()
    k.mef_kek.write_file(tmp_path / "mef.kek")  # 0600: a group/other-readable KEK file is refused
    k.maf_kek.write_file(tmp_path / "maf.kek")
    with open_store(f"sqlite:///{tmp_path / 'mef.db'}", k.mef_kek) as st:
        _provision_mef(st, k)
    with open_store(f"sqlite:///{tmp_path / 'maf.db'}", k.maf_kek) as st:
        _provision_maf(st, k)
    (tmp_path / "mef.toml").write_text(f'[mef]\nfqdn = "{MEF_FQDN}"\nstore = "sqlite:///{tmp_path / "mef.db"}"\n'
                                       'kek_file = "mef.kek"\nhost = "127.0.0.1"\nport = 0\n')
    mef = _Service("m2msec.mef.cli", tmp_path / "mef.toml", "listening ")
    maf = None
    try:
        (tmp_path / "maf.toml").write_text(
            f'fqdn = "{MAF}"\nstore = "sqlite:///{tmp_path / "maf.db"}"\nkek_file = "maf.kek"\nhost = "127.0.0.1"\n'
            f'port = 0\n[mef]\nfqdn = "{MEF_FQDN}"\nhost = "127.0.0.1"\nport = {mef.port}\n'
            f'psk_identity = "{MAF_PSK_ID}"\npsk_hex = "{k.maf_psk.hex()}"\n[[admin]]\nfqdn = "{ADMIN}"\n')
        maf = _Service("m2msec.maf.cli", tmp_path / "maf.toml", "listening on")
        objects = asyncio.run(asyncio.wait_for(client_flows(mef.port, maf.port, k, s), 60))
    finally:
        if maf is not None:
            maf.stop()
        mef.stop()
    outputs = {"mef serve stderr": mef.stderr(), "maf serve stderr": maf.stderr() if maf else ""}
    for name, text in outputs.items():
        assert "DEBUG" in text, f"{name}: the root logger was not at DEBUG: {text[:500]}"
    # the services did the work: the MEF answered the MAF's fetch, the handshake failure was seen
    s.assert_absent(outputs.items())
    s.assert_absent(record_texts(debug_logs.records))
    s.assert_absent(object_texts(**objects))
    s.assert_absent(store_texts(tmp_path / "mef.db", k.mef_kek))
    s.assert_absent(store_texts(tmp_path / "maf.db", k.maf_kek))
    mef.err.close()
    if maf is not None:
        maf.err.close()


# ------------------------------------------------------------------ ESCertKE, ESPrim, ESData


@pytest.fixture
def escertke_pki() -> ESCertKEPKI:
    from m2msec.pki.ca import private_key_pem

    now = datetime.now(UTC)
    ca = DevCA.create("ESCertKE SP", now=now, permit_uri=[SP], permit_dns=[SP], intermediate=True)
    ini = ca.issue(CertificateFlavour.AE_ID, [INI_CERT_ID], now=now)
    ter = ca.issue(CertificateFlavour.AE_ID, [TER_CERT_ID], now=now)
    return ESCertKEPKI(ca, ca, creds(ini), creds(ter), creds(ini), private_key_pem(ini.private_key),
                       private_key_pem(ter.private_key))


def test_escertke_key_establishment_and_use(escertke_pki: ESCertKEPKI, tmp_path: Path,
                                            debug_logs: pytest.LogCaptureFixture) -> None:
    pki = escertke_pki
    clock = lambda: datetime.now(UTC)  # noqa: E731
    kek = KeyEncryptionKey.generate()
    s = Secrets()
    s.add_kek("KEK", kek)
    s.add_private_key("initiator key", pki.ini.private_key)
    s.add_private_key("terminator key", pki.ter.private_key)
    s.add_private_key("CA root key", pki.ca._root_key)  # noqa: SLF001
    store = open_store(f"sqlite:///{tmp_path / 'keys.db'}", kek)
    store2 = open_store(f"sqlite:///{tmp_path / 'keys.db'}", kek)
    try:
        ter_keys = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(store))
        other_instance = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(store2))
        ini = InitiatingEndPoint(pki.ini, clock=clock, keys=ESCertKEKeys(clock=clock))
        crls = CRLStore([pki.ca.issue_crl(now=clock())])
        ini_info = InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, INI_CERT_ID), (pki.ca.trust_anchor,),
                                 identity=INI_ID, crls=crls)
        ter = TerminatingEndPoint(pki.ter, [ini_info], clock=clock, keys=ter_keys)
        proc = ini.initiate(terminator_info(pki))
        m2 = ter.handle(INI_ID, proc.message_1())
        m4 = ter.handle(INI_ID, proc.receive_message_2(m2))
        res = proc.receive_message_4(m4)
        s.add("pairwiseE2EKey", res.key)
        tres = ter.keys.for_peer(INI_ID)
        assert tres is not None and tres.key == res.key
        # ESPrim with the key (SUID 43), the Receiver on the other instance (read through the store)
        receiver = Receiver(keys=other_instance, state=MemoryReceiverState(clock=clock), clock=clock,
                            policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))
        originator = Originator(clock=clock, policy=OriginatorPolicy())
        key = ini.keys.resolve(res.kid)
        step = originator.start(key, receiver.e2e_sec_info())
        assert isinstance(step, SessionReady)
        inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{TER_ID}/cnt", fr=INI_ID, rqi="i1", rvi="3")
        obj, pending = originator.protect_request(inner, step.session)
        got, ctx = receiver.open_request(obj, outer_from=INI_ID)
        assert got.rqet is not None and replace(got, rqet=None) == inner  # + the sealed rqet (R11)
        reply = ResponsePrimitive(rsc=RSC.OK, rqi="i1", pc={"m2m:cin": {"con": "42"}}, rvi="3")
        assert originator.open_response(receiver.protect_response(ctx, reply), pending) == reply
        # ESData (SUID 44)
        env = Source().seal(b"reading=21.5", serialization="compact", recipients=[res.esdata_recipient()])
        assert Target(ter.keys.esdata).open(env).payload == b"reading=21.5"
        objects = {"initiator": ini, "terminator": ter, "procedure": proc, "result": res, "terminator_result": tres,
                   "keys": ter_keys, "other_instance": other_instance, "pairwise_key": key,
                   "stored_key": other_instance.resolve(res.kid), "session": step.session, "originator": originator,
                   "receiver": receiver, "esdata_recipient": res.esdata_recipient(),
                   "esdata_resolved": ter.keys.esdata.resolve(res.kid), "credentials": pki.ini, "ca": pki.ca,
                   "store": store, "kek": kek}
        assert StoreKeySource(store).lookup(res.kid)[0].key == res.key  # the key is in the store now
        s.assert_absent(store_texts(tmp_path / "keys.db", kek, audited=False))  # ... encrypted
        # the Initiator's certificate is revoked: the key is dropped with a warning (peer, kid, serial)
        pki.ca.revoke(pki.ini.certificate, now=clock(), reason=x509.ReasonFlags.key_compromise)
        crls.replace([pki.ca.issue_crl(now=clock())])
        assert ter.keys.for_peer(INI_ID) is None
    finally:
        store.close()
        store2.close()
    assert any("dropped" in r.getMessage() and res.kid in r.getMessage() for r in debug_logs.records)
    s.assert_absent(record_texts(debug_logs.records))
    s.assert_absent(object_texts(**objects))


# ------------------------------------------------------------------ SAEF PSK


def test_saef_psk(debug_logs: pytest.LogCaptureFixture) -> None:
    kpsa = secrets.token_bytes(32)
    wrong = secrets.token_bytes(32)
    s = Secrets()
    s.add("Kpsa", kpsa)
    s.add("wrong Kpsa", wrong)
    entry = KpsaEntry("ae1-kpsa@sp.m2m.example.com", kpsa, peer_id="//m2m.example.com/id-in/Cae1",
                      peer_kind=PeerKind.AE)
    directory = InMemoryKpsaDirectory([entry])
    server = psk_server(directory, id_b="/id-in", transport=Transport.TLS)
    client = psk_client(KpsaEntry(entry.kpsa_id, kpsa), id_b="/id-in", id_a=entry.peer_id, transport=Transport.TLS)
    bad_client = psk_client(KpsaEntry(entry.kpsa_id, wrong), id_b="/id-in", id_a=entry.peer_id,
                            transport=Transport.TLS)

    async def main() -> dict[str, Any]:
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: Any, ctx: Any) -> None:
            if not got.done():
                got.set_result(ctx)
            writer.write(await reader.read(100))
            await writer.drain()

        srv = await serve(server, handler)
        port = srv.sockets[0].getsockname()[1]
        try:
            reader, writer, cctx = await connect(client, "127.0.0.1", port)
            writer.write(b"hello")
            assert await reader.read(100) == b"hello"
            sctx = await got
            exported = cctx.export_onem2m_key(EXPORTER_CONNECTION)
            assert exported == sctx.export_onem2m_key(EXPORTER_CONNECTION)
            s.add("exported key", exported[0])
            writer.close()
            with pytest.raises(TLSHandshakeError):
                await connect(bad_client, "127.0.0.1", port)
        finally:
            srv.close()
        return {"client_ctx": cctx, "server_ctx": sctx, "entry": entry, "directory": directory,
                "server": server, "client": client}

    objects = asyncio.run(asyncio.wait_for(main(), 30))
    assert debug_logs.records
    s.assert_absent(record_texts(debug_logs.records))
    s.assert_absent(object_texts(**objects))
