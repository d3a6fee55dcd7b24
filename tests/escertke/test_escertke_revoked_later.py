"""Established ESCertKE keys end when the peer's certificate is revoked later (TS-0003 8.7.2.2 C.2
with 8.1.2.2): the key keeps the peer's path, every use compares the CRL store generation and
re-checks the path only when it changed; a revoked path drops the key from memory and store,
and ESPrim (SUID 43) / ESData (SUID 44) then see an unknown key identifier."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _escertke_support import (  # type: ignore[import-not-found]
    INI_CERT_ID, INI_ID, SP, TER_CERT_ID, TER_ID, Clock, creds)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.escertke import (
    DroppedKey,
    ESCertKEKeys,
    ESCertKEResult,
    InitiatingEndPoint,
    InitiatorInfo,
    TerminatingEndPoint,
    TerminatorInfo,
)
from m2msec.esdata import Source, Target
from m2msec.esdata.errors import ESDataError, UnknownKidError
from m2msec.esprim import Originator, OriginatorPolicy, Receiver, ReceiverPolicy, StoreKeySource
from m2msec.esprim.errors import ESPrimError, UnknownKeyID
from m2msec.esprim.originator import SessionReady
from m2msec.esprim.state import MemoryReceiverState
from m2msec.onem2m.enums import SUID, Operation
from m2msec.onem2m.primitives import RequestPrimitive
from m2msec.onem2m.rsc import ResponseStatusCode as RSC
from m2msec.pki import CertificateFlavour, CRLStore, DevCA, PeerCertInfo, RevocationPolicy
from m2msec.pki.crl import build_crl
from m2msec.store import KeyEncryptionKey, Store, open_store
from m2msec.tls import CertCredentials

LOGGER = "m2msec.escertke.keys"


def new_ca(name: str) -> DevCA:
    """A CA of one test only: the tests revoke certificates (and intermediates) on it."""
    return DevCA.create(name, now=datetime.now(UTC) - timedelta(hours=1), permit_uri=[SP], permit_dns=[SP],
                        intermediate=True)


def issue(ca: DevCA, clock: Clock, identifier: str) -> CertCredentials:
    return creds(ca.issue(CertificateFlavour.AE_ID, [identifier], now=clock.now - timedelta(minutes=5)))


def fresh_crls(ca: DevCA, clock: Clock) -> list[x509.CertificateRevocationList]:
    """Current CRLs of the issuing intermediate and the root (enough for ``require``)."""
    at = clock.now - timedelta(seconds=1)
    return [ca.issue_crl(now=at), ca.issue_crl(now=at, signer="root")]


class CountingCRLStore(CRLStore):
    """A CRL store that counts reads of its CRLs: the hot path must make none."""

    def __init__(self, crls: Any = ()) -> None:
        self.reads = 0
        super().__init__(crls)

    def for_issuer(self, issuer: x509.Name) -> tuple[x509.CertificateRevocationList, ...]:
        self.reads += 1
        return super().for_issuer(issuer)


class Setup:
    """A Terminating End-Point whose Initiator configuration checks status against ``crls``."""

    def __init__(self, ca: DevCA, clock: Clock, *, revocation: str = "if-available", store: Store | None = None,
                 ini_crls: CRLStore | None = None) -> None:
        self.ca, self.clock = ca, clock
        self.ini_c, self.ter_c = issue(ca, clock, INI_CERT_ID), issue(ca, clock, TER_CERT_ID)
        self.crls = CountingCRLStore(fresh_crls(ca, clock))
        self.dropped: list[DroppedKey] = []
        self.keys = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(store) if store is not None else None,
                                 on_drop=self.dropped.append)
        info = InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, INI_CERT_ID), (ca.trust_anchor,),
                             identity=INI_ID, crls=self.crls, revocation=revocation)
        self.ter = TerminatingEndPoint(self.ter_c, [info], clock=clock, keys=self.keys)
        self.ini = InitiatingEndPoint(self.ini_c, clock=clock, keys=ESCertKEKeys(clock=clock))
        self.target = TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, TER_CERT_ID), (ca.trust_anchor,),
                                     identity=TER_ID, revocation=revocation,
                                     crls=ini_crls if ini_crls is not None else CRLStore(fresh_crls(ca, clock)))

    def run(self) -> ESCertKEResult:
        proc = self.ini.initiate(self.target)
        m3 = proc.receive_message_2(self.ter.handle(INI_ID, proc.message_1()))
        return proc.receive_message_4(self.ter.handle(INI_ID, m3))

    def publish(self, *, root: bool = False) -> None:
        """The CA publishes a new CRL of the issuing CA (or the root) and the store takes it."""
        at = self.clock.now
        gen = self.crls.generation
        assert self.crls.add(self.ca.issue_crl(now=at, signer="root" if root else None)) is True
        assert self.crls.generation == gen + 1


class ESPrimPair:
    """The Initiator's Originator and the Terminator's Receiver over the ESCertKE key."""

    def __init__(self, s: Setup, res: ESCertKEResult, receiver_keys: Any = None) -> None:
        clock = s.clock
        self.receiver = Receiver(keys=receiver_keys or s.keys, state=MemoryReceiverState(clock=clock), clock=clock,
                                 policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))
        self.originator = Originator(clock=clock, policy=OriginatorPolicy())
        step = self.originator.start(s.ini.keys.resolve(res.kid), self.receiver.e2e_sec_info())
        assert isinstance(step, SessionReady)
        self.session = step.session
        self.n = 0

    def request(self) -> RequestPrimitive:
        self.n += 1
        inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{TER_ID}/cnt", fr=INI_ID, rqi=f"r{self.n}",
                                 rvi="3")
        obj, _ = self.originator.protect_request(inner, self.session)
        got, _ = self.receiver.open_request(obj, outer_from=INI_ID)
        assert got.rqet is not None and replace(got, rqet=None) == inner  # + the sealed rqet (R11)
        return got


def esdata_roundtrip(s: Setup, res: ESCertKEResult, payload: bytes = b"reading=21.5") -> bytes:
    env = Source().seal(payload, serialization="compact", recipients=[res.esdata_recipient()])
    return Target(s.keys.esdata).open(env).payload


@pytest.fixture
def sqlite(tmp_path: Any) -> Any:
    kek = KeyEncryptionKey.generate()
    url = f"sqlite://{tmp_path}/esc.db"
    opened: list[Store] = []

    def _open(clock: Clock) -> Store:
        st = open_store(url, kek, clock=clock)
        opened.append(st)
        return st

    yield _open
    for st in opened:
        st.close()


# ------------------------------------------------------------------ the leaf revoked after the procedure


def test_revoked_leaf_ends_esprim_and_esdata_and_the_stored_key(sqlite: Any, caplog: Any) -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP")
    db = sqlite(clock)
    s = Setup(ca, clock, store=db)
    res = s.run()
    kid = res.kid
    pair = ESPrimPair(s, res)
    pair.request()
    assert esdata_roundtrip(s, res) == b"reading=21.5"
    assert StoreKeySource(db).resolve(kid).key == res.key
    assert s.keys.status_checks == 0

    clock.advance(minutes=1)
    ca.revoke(s.ini_c.certificate, now=clock.now, reason=x509.ReasonFlags.key_compromise)
    s.publish()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with pytest.raises(ESPrimError) as ei:
            pair.request()  # the ESPrim session established before is refused too
    assert isinstance(ei.value, UnknownKeyID) and ei.value.rsc == RSC.ESPRIM_UNKNOWN_KEY_ID
    assert s.keys.status_checks == 1
    # gone from memory and from the store
    assert len(s.keys) == 0 and s.keys.for_peer(INI_ID) is None
    with pytest.raises(UnknownKeyID):
        s.keys.resolve(kid)
    with pytest.raises(UnknownKeyID):
        StoreKeySource(db).resolve(kid)
    with pytest.raises(ESDataError) as ed:
        esdata_roundtrip(s, res)
    assert isinstance(ed.value, UnknownKidError)
    # one log line and one DroppedKey naming the peer and the revoked certificate's serial, no key bytes
    serial = s.ini_c.certificate.serial_number
    assert s.dropped == [DroppedKey(INI_ID, kid, "REVOKED", serial, s.dropped[0].detail)]
    assert "keyCompromise" in s.dropped[0].detail
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and INI_ID in lines[0] and format(serial, "x") in lines[0] and kid in lines[0]
    for secret in (res.key.hex(), base64.urlsafe_b64encode(res.key).decode().rstrip("=")):
        assert secret not in caplog.text and secret not in repr(s.dropped)


def test_revoked_leaf_refuses_esdata_first(caplog: Any) -> None:
    """The ESData path re-checks by itself (no ESPrim use before)."""
    clock = Clock()
    ca = new_ca("Revoked later SP esdata")
    s = Setup(ca, clock)
    res = s.run()
    assert esdata_roundtrip(s, res) == b"reading=21.5"
    ca.revoke(s.ini_c.certificate, now=clock.now)
    s.publish()
    with pytest.raises(UnknownKidError):
        s.keys.esdata.resolve(res.kid)
    assert len(s.keys) == 0 and [d.reason for d in s.dropped] == ["REVOKED"]


def test_initiator_key_ends_when_the_terminator_is_revoked() -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP initiator")
    crls = CRLStore(fresh_crls(ca, clock))
    s = Setup(ca, clock, ini_crls=crls)
    res = s.run()
    assert s.ini.keys.for_peer(TER_ID) == res and s.ini.keys.resolve(res.kid).peer_id == TER_ID
    ca.revoke(s.ter_c.certificate, now=clock.now)
    assert crls.add(ca.issue_crl(now=clock.now))
    assert s.ini.keys.for_peer(TER_ID) is None  # the sender side stops using the key
    with pytest.raises(UnknownKeyID):
        s.ini.keys.resolve(res.kid)
    assert s.keys.for_peer(INI_ID) is not None  # the Terminator's own configuration saw no change


def test_revoked_intermediate_drops_the_key() -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP intermediate")
    s = Setup(ca, clock)
    res = s.run()
    ESPrimPair(s, res).request()
    intermediate = s.ini_c.chain[0]
    ca.revoke(intermediate, now=clock.now)  # on the root's CRL
    s.publish(root=True)
    with pytest.raises(UnknownKeyID):
        s.keys.resolve(res.kid)
    (d,) = s.dropped
    assert d.reason == "REVOKED" and d.serial == intermediate.serial_number != s.ini_c.certificate.serial_number


# ------------------------------------------------------------------ what does not drop a key


def test_unrelated_revocation_keeps_the_key_after_one_check() -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP unrelated")
    s = Setup(ca, clock)
    res = s.run()
    pair = ESPrimPair(s, res)
    pair.request()
    bystander = issue(ca, clock, f"https://{SP}/id-in/Cbystander")
    ca.revoke(bystander.certificate, now=clock.now)
    s.publish()
    pair.request()  # generation changed: re-checked once, still good
    assert esdata_roundtrip(s, res) == b"reading=21.5"
    assert s.keys.for_peer(INI_ID).kid == res.kid
    assert s.keys.status_checks == 1 and s.dropped == []
    reads = s.crls.reads
    for _ in range(5):
        pair.request()
    assert s.keys.status_checks == 1 and s.crls.reads == reads


def test_policy_off_keeps_the_key_of_a_revoked_peer() -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP off")
    s = Setup(ca, clock, revocation="off")
    res = s.run()
    pair = ESPrimPair(s, res)
    pair.request()
    ca.revoke(s.ini_c.certificate, now=clock.now)
    s.publish()
    pair.request()
    assert esdata_roundtrip(s, res) == b"reading=21.5"
    assert s.keys.status_checks == 0 and s.crls.reads == 0 and s.dropped == []


def test_hot_path_does_no_crl_work_while_the_generation_is_unchanged() -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP hot path")
    s = Setup(ca, clock, revocation="require")
    res = s.run()
    reads_after_handshake = s.crls.reads  # the handshake's verification read the CRLs
    assert reads_after_handshake > 0
    pair = ESPrimPair(s, res)
    for _ in range(20):
        pair.request()
        s.keys.resolve(res.kid)
        s.keys.esdata.resolve(res.kid)
        assert s.keys.for_peer(INI_ID).kid == res.kid
    assert s.keys.status_checks == 0 and s.crls.reads == reads_after_handshake
    # an add that changes nothing (the same CRL again) leaves the generation: still no CRL work
    assert s.crls.add(s.crls.for_issuer(s.ini_c.certificate.issuer)[0]) is False
    pair.request()
    assert s.keys.status_checks == 0


# ------------------------------------------------------------------ policies for an established key


def test_require_drops_the_key_when_the_crls_go_stale() -> None:
    """Under ``require`` a stale CRL (past nextUpdate, +7 days) is REVOCATION_UNKNOWN: the key goes
    without any CRL reload; under ``if-available`` the same is undetermined and the key stays."""
    clock = Clock()
    ca = new_ca("Revoked later SP stale")
    req, ifa = Setup(ca, clock, revocation="require"), Setup(ca, clock)
    r_req, r_ifa = req.run(), ifa.run()
    clock.advance(days=6)
    req.keys.resolve(r_req.kid)
    assert req.keys.status_checks == 0  # still before the earliest nextUpdate
    clock.advance(days=1, minutes=1)
    with pytest.raises(UnknownKeyID):
        req.keys.resolve(r_req.kid)
    assert [d.reason for d in req.dropped] == ["REVOCATION_UNKNOWN"]
    ifa.keys.resolve(r_ifa.kid)
    assert ifa.dropped == [] and ifa.keys.for_peer(INI_ID).kid == r_ifa.kid


def test_require_with_fresh_crls_moves_the_recheck_deadline() -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP require fresh")
    s = Setup(ca, clock, revocation="require")
    res = s.run()
    clock.advance(days=6)
    s.crls.replace(fresh_crls(ca, clock))  # the CA republishes in time
    s.keys.resolve(res.kid)
    assert s.keys.status_checks == 1
    clock.advance(days=2)  # past the first CRLs' nextUpdate, inside the new ones'
    s.keys.resolve(res.kid)
    assert s.keys.status_checks == 1 and s.dropped == []


def _invalid_crl_for(ca: DevCA, clock: Clock) -> x509.CertificateRevocationList:
    """A CRL naming the issuing CA but signed with another key: unusable (CRL_INVALID)."""
    return build_crl(issuer_cert=ca.issuing_cert, issuer_key=ec.generate_private_key(ec.SECP256R1()),
                     entries=(), number=99, this_update=clock.now)


@pytest.mark.parametrize("policy,kept", [("if-available", True), ("require", False)])
def test_crl_invalid_keeps_under_if_available_and_drops_under_require(policy: str, kept: bool, caplog: Any) -> None:
    clock = Clock()
    ca = new_ca(f"Revoked later SP invalid {policy}")
    s = Setup(ca, clock, revocation=policy)
    res = s.run()
    root_crl = s.crls.for_issuer(ca.issuing_cert.issuer)
    s.crls.replace([_invalid_crl_for(ca, clock), *root_crl])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        if kept:
            assert s.keys.resolve(res.kid).key == res.key
            assert s.keys.resolve(res.kid).key == res.key  # logged and checked once per generation
            assert s.keys.status_checks == 1 and "kept" in caplog.text
        else:
            with pytest.raises(UnknownKeyID):
                s.keys.resolve(res.kid)
            assert [d.reason for d in s.dropped] == ["CRL_INVALID"]
            assert s.dropped[0].serial == s.ini_c.certificate.serial_number
    assert res.key.hex() not in caplog.text


# ------------------------------------------------------------------ sweep


def test_sweep_drops_keys_of_revoked_peers_without_use(sqlite: Any) -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP sweep")
    db = sqlite(clock)
    s = Setup(ca, clock, store=db)
    res = s.run()
    assert s.keys.sweep() == [] and s.keys.status_checks == 0  # nothing changed: nothing checked
    ca.revoke(s.ini_c.certificate, now=clock.now)
    s.publish()
    (d,) = s.keys.sweep()
    assert d.peer_id == INI_ID and d.kid == res.kid and d.serial == s.ini_c.certificate.serial_number
    assert s.dropped == [d] and len(s.keys) == 0
    with pytest.raises(UnknownKeyID):
        StoreKeySource(db).resolve(res.kid)
    assert s.keys.sweep() == []


# ------------------------------------------------------------------ the shared store (scale-out)


def test_stored_key_carries_its_path_not_secrets(sqlite: Any, tmp_path: Any) -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP metadata")
    db = sqlite(clock)
    s = Setup(ca, clock, store=db, revocation="require")
    res = s.run()
    _, md = StoreKeySource(db).lookup(res.kid)
    doc = md["escertke"]
    assert doc["revocation"] == "require"
    path = [x509.load_der_x509_certificate(base64.b64decode(d)) for d in doc["path"]]
    assert path == [s.ini_c.certificate, *s.ini_c.chain, ca.trust_anchor]  # leaf first, anchor last
    assert res.key not in (tmp_path / "esc.db").read_bytes()  # the key is still encrypted at rest
    assert res.key.hex() not in json.dumps(md)


def test_another_instance_sees_the_key_dropped(sqlite: Any) -> None:
    """Instance A established the key and drops it; B (same SQLite file) resolves through the store."""
    clock = Clock()
    ca = new_ca("Revoked later SP scale-out A")
    s = Setup(ca, clock, store=sqlite(clock))
    res = s.run()
    b_store = sqlite(clock)
    b_crls = CountingCRLStore(fresh_crls(ca, clock))
    b = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(b_store), crls=b_crls)
    assert b.resolve(res.kid).key == res.key and len(b) == 0  # read through, not copied into B's memory
    assert b.esdata.resolve(res.kid).suid == 44
    assert b.status_checks == 1  # B checks a stored path once with its own CRLs ...
    reads = b_crls.reads
    for _ in range(5):
        b.resolve(res.kid)
    assert b.status_checks == 1 and b_crls.reads == reads  # ... then only compares the generation
    ESPrimPair(s, res, receiver_keys=b).request()  # B as the ESPrim Receiver

    ca.revoke(s.ini_c.certificate, now=clock.now)
    s.publish()  # only A's CRL store learns of it
    with pytest.raises(UnknownKeyID):
        s.keys.resolve(res.kid)  # A drops it from memory and store
    with pytest.raises(UnknownKeyID):
        b.resolve(res.kid)
    with pytest.raises(UnknownKidError):
        b.esdata.resolve(res.kid)
    with pytest.raises(UnknownKeyID):
        StoreKeySource(b_store).resolve(res.kid)  # also a plain store reader


def test_another_instance_rechecks_and_drops_for_everyone(sqlite: Any, caplog: Any) -> None:
    """B's own CRL reload is enough: B re-checks the stored path, drops the key from the store,
    and A (reading through the store) no longer finds it either once A's own entry is gone."""
    clock = Clock()
    ca = new_ca("Revoked later SP scale-out B")
    a_store = sqlite(clock)
    s = Setup(ca, clock, store=a_store)
    res = s.run()
    b_crls = CRLStore(fresh_crls(ca, clock))
    b_dropped: list[DroppedKey] = []
    b = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(sqlite(clock)), crls=b_crls, on_drop=b_dropped.append)
    b.resolve(res.kid)
    ca.revoke(s.ini_c.certificate, now=clock.now)
    assert b_crls.add(ca.issue_crl(now=clock.now))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with pytest.raises(UnknownKeyID):
            b.resolve(res.kid)
    assert [d.serial for d in b_dropped] == [s.ini_c.certificate.serial_number]
    assert "read through the store" in caplog.text
    with pytest.raises(UnknownKeyID):
        StoreKeySource(a_store).resolve(res.kid)
    # A's in-memory copy goes at A's next check (its own CRL store is refreshed from the same CA)
    s.publish()
    with pytest.raises(UnknownKeyID):
        s.keys.resolve(res.kid)


def test_store_reader_without_crls_under_require_refuses(sqlite: Any) -> None:
    """An instance configured without CRLs cannot establish a ``require`` key's status: refused."""
    clock = Clock()
    ca = new_ca("Revoked later SP scale-out no CRLs")
    s = Setup(ca, clock, store=sqlite(clock), revocation="require")
    res = s.run()
    b = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(sqlite(clock)))
    with pytest.raises(UnknownKeyID):
        b.resolve(res.kid)
    # under if-available the same instance accepts (status undetermined)
    s2 = Setup(new_ca("Revoked later SP scale-out no CRLs 2"), clock, store=sqlite(clock))
    res2 = s2.run()
    assert b.resolve(res2.kid).key == res2.key


def test_store_reader_refuses_foreign_and_broken_entries(sqlite: Any) -> None:
    clock = Clock()
    db = sqlite(clock)
    b = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(db))
    # a pre-provisioned (SUID 13) key in the same namespace is not an ESCertKE key
    StoreKeySource(db).provision("k13", b"\x01" * 32, peer_id="Cae1", suid=SUID.PRE_PROVISIONED_ESPRIM)
    with pytest.raises(UnknownKeyID):
        b.resolve("k13")
    with pytest.raises(UnknownKidError):
        b.esdata.resolve("k13")
    # an ESCertKE key whose stored path does not parse is refused, not accepted unchecked
    StoreKeySource(db).provision("k43", b"\x02" * 32, peer_id="Cae1", suid=SUID.CERTIFICATE_ESPRIM,
                                 metadata={"escertke": {"path": ["not base64!"], "revocation": "require"}})
    with pytest.raises(UnknownKeyID):
        b.resolve("k43")
    StoreKeySource(db).provision("k43b", b"\x03" * 32, peer_id="Cae1", suid=SUID.CERTIFICATE_ESPRIM,
                                 metadata={"escertke": {"path": [], "revocation": "sometimes"}})
    with pytest.raises(UnknownKeyID):
        b.resolve("k43b")
    with pytest.raises(UnknownKeyID):
        b.resolve("nope")


def test_a_newer_key_replaces_the_older_also_in_the_store(sqlite: Any) -> None:
    clock = Clock()
    ca = new_ca("Revoked later SP replace")
    db = sqlite(clock)
    s = Setup(ca, clock, store=db)
    first = s.run()
    second = s.run()
    assert first.kid != second.kid
    with pytest.raises(UnknownKeyID):
        StoreKeySource(db).resolve(first.kid)
    with pytest.raises(UnknownKeyID):
        s.keys.resolve(first.kid)  # not read back through the store either
    assert s.keys.resolve(second.kid).key == second.key


def test_store_changed_during_the_handshake_is_checked_on_first_use() -> None:
    """A key added with an older generation than the store's (a CRL arrived between the peer's
    verification and the key's caching) is re-checked on its first use."""
    clock = Clock()
    ca = new_ca("Revoked later SP race")
    s = Setup(ca, clock)
    res = s.run()
    keys = ESCertKEKeys(clock=clock)
    keys.add(res, crls=s.crls, revocation=RevocationPolicy.IF_AVAILABLE, checked_generation=s.crls.generation - 1)
    keys.resolve(res.kid)
    assert keys.status_checks == 1
    keys.resolve(res.kid)
    assert keys.status_checks == 1


def test_concurrent_uses_after_a_revocation_drop_once() -> None:
    import threading

    clock = Clock()
    ca = new_ca("Revoked later SP threads")
    s = Setup(ca, clock)
    res = s.run()
    ca.revoke(s.ini_c.certificate, now=clock.now)
    s.publish()
    refused: list[BaseException] = []
    barrier = threading.Barrier(6)

    def use() -> None:
        barrier.wait()
        try:
            s.keys.resolve(res.kid)
        except UnknownKeyID as exc:
            refused.append(exc)

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(refused) == 6 and len(s.dropped) == 1 and len(s.keys) == 0
