"""ESCertKE keys held in memory by several instances on one store (TS-0003 8.7.2.2 C.2 with
8.1.2.2; profile C6; DESIGN 3 scale-out).

Instance A established a key (memory + store).  When another instance B drops it - its own CRL
store learns of a revocation first - B deletes it from the store and notifies
``m2msec_escertke_keys``; A's next use (ESPrim resolve, ESData
resolve, ``for_peer``) confirms the key is still stored and refuses it at once, although A's own
CRL store never changed.  While nothing changes, A's uses make no store look-up (SQLite: one
sequence read; PostgreSQL: a LISTEN session, none).  (A newer key established with the peer on
*another* instance does not end the older one: that instance does not know it.)  Run on SQLite (two connections to one file)
and, where PostgreSQL binaries exist, on PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _escertke_support import INI_CERT_ID, INI_ID, SP, TER_CERT_ID, TER_ID, Clock, creds  # type: ignore[import-not-found]

from m2msec.esdata import Source, Target
from m2msec.esdata.errors import UnknownKidError
from m2msec.escertke import ESCertKEKeys, InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint, TerminatorInfo
from m2msec.escertke.keys import ESCERTKE_CHANNEL
from m2msec.esprim import Originator, OriginatorPolicy, Receiver, ReceiverPolicy, StoreKeySource
from m2msec.esprim.errors import UnknownKeyID
from m2msec.esprim.originator import SessionReady
from m2msec.esprim.state import MemoryReceiverState
from m2msec.onem2m.enums import SUID, Operation
from m2msec.onem2m.primitives import RequestPrimitive
from m2msec.pki import CertificateFlavour, CRLStore, DevCA, PeerCertInfo
from m2msec.store import KeyEncryptionKey, Store, open_store

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def open_instance_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Clock], Store]]:
    """Opens connections (one per instance) to one shared database."""
    url = (f"sqlite://{tmp_path}/esc.db" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_server").create_database()))
    kek = KeyEncryptionKey.generate()
    opened: list[Store] = []

    def _open(clock: Clock) -> Store:
        st = open_store(url, kek, clock=clock)
        opened.append(st)
        return st

    yield _open
    for st in opened:
        st.close()


class Instance:
    """One Terminating End-Point instance (its own CRL store and key cache) on the shared store."""

    def __init__(self, ca: DevCA, ter_creds: Any, store: Store, clock: Clock) -> None:
        self.crls = CRLStore([ca.issue_crl(now=clock.now - timedelta(seconds=1))])
        self.keys = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(store), crls=self.crls)
        info = InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, INI_CERT_ID), (ca.trust_anchor,),
                             identity=INI_ID, crls=self.crls)
        self.ter = TerminatingEndPoint(ter_creds, [info], clock=clock, keys=self.keys)

    def wait_listening(self) -> None:
        """PostgreSQL: until the LISTEN session is up (uses before that look the kid up)."""
        self.keys._epoch()  # noqa: SLF001 - starts the listener
        listener = self.keys._listener  # noqa: SLF001
        if listener is not None:
            assert listener.wait_connected(10)


class World:
    def __init__(self, open_store_: Callable[[Clock], Store]) -> None:
        self.clock = Clock()
        now = self.clock.now - timedelta(hours=1)
        self.ca = DevCA.create("Instances SP", now=now, permit_uri=[SP], permit_dns=[SP], intermediate=True)
        self.ini_c = creds(self.ca.issue(CertificateFlavour.AE_ID, [INI_CERT_ID], now=now))
        ter_c = creds(self.ca.issue(CertificateFlavour.AE_ID, [TER_CERT_ID], now=now))
        self.a = Instance(self.ca, ter_c, open_store_(self.clock), self.clock)
        self.b = Instance(self.ca, ter_c, open_store_(self.clock), self.clock)
        self.ini = InitiatingEndPoint(self.ini_c, clock=self.clock, keys=ESCertKEKeys(clock=self.clock))
        self.target = TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, TER_CERT_ID), (self.ca.trust_anchor,),
                                     identity=TER_ID)

    def establish(self, at: Instance) -> Any:
        proc = self.ini.initiate(self.target)
        m3 = proc.receive_message_2(at.ter.handle(INI_ID, proc.message_1()))
        return proc.receive_message_4(at.ter.handle(INI_ID, m3))

    def esprim_request(self, at: Instance, kid: str) -> None:
        receiver = Receiver(keys=at.keys, state=MemoryReceiverState(clock=self.clock), clock=self.clock,
                            policy=ReceiverPolicy(supported_suids=(SUID.CERTIFICATE_ESPRIM,)))
        step = Originator(clock=self.clock, policy=OriginatorPolicy()).start(self.ini.keys.resolve(kid),
                                                                             receiver.e2e_sec_info())
        assert isinstance(step, SessionReady)
        inner = RequestPrimitive(op=Operation.RETRIEVE, to=f"/id-in/{TER_ID}/cnt", fr=INI_ID, rqi="r1", rvi="3")
        obj, _ = Originator(clock=self.clock, policy=OriginatorPolicy()).protect_request(inner, step.session)
        got, _ = receiver.open_request(obj, outer_from=INI_ID)
        assert got.rqet is not None and replace(got, rqet=None) == inner  # + the sealed rqet (R11)


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """PostgreSQL notifications arrive asynchronously (on commit, to the listener thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _refused_everywhere(keys: ESCertKEKeys, kid: str) -> bool:
    try:
        keys.resolve(kid)
    except UnknownKeyID:
        pass
    else:
        return False
    with pytest.raises(UnknownKidError):
        keys.esdata.resolve(kid)
    return keys.for_peer(INI_ID) is None


def test_a_key_dropped_by_another_instance_is_refused_at_once(open_instance_store: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    w = World(open_instance_store)
    w.a.wait_listening()
    res = w.establish(w.a)
    assert w.a.keys.for_peer(INI_ID).kid == res.kid and len(w.a.keys) == 1  # in A's memory
    w.esprim_request(w.a, res.kid)
    assert w.b.keys.resolve(res.kid).key == res.key and len(w.b.keys) == 0  # B reads it through the store
    # only B's CRL store learns of the revocation; B drops the key from the store
    w.ca.revoke(w.ini_c.certificate, now=w.clock.now)
    assert w.b.crls.add(w.ca.issue_crl(now=w.clock.now))
    gen_a = w.a.crls.generation
    with pytest.raises(UnknownKeyID):
        w.b.keys.resolve(res.kid)
    # A's CRL store did not change, yet A refuses its in-memory copy on every kind of use
    caplog.set_level(logging.WARNING, logger="m2msec.escertke.keys")
    assert _eventually(lambda: _refused_everywhere(w.a.keys, res.kid))
    assert w.a.crls.generation == gen_a and len(w.a.keys) == 0
    assert any("no longer in the store" in r.getMessage() and res.kid in r.getMessage() for r in caplog.records)
    with pytest.raises(UnknownKeyID):
        w.esprim_request(w.a, res.kid)
    env = Source().seal(b"x", serialization="compact", recipients=[res.esdata_recipient()])
    with pytest.raises(UnknownKidError):
        Target(w.a.keys.esdata).open(env)


def test_a_replaced_key_is_refused_by_store_readers(open_instance_store: Any) -> None:
    """A newer key with the peer (on the instance holding the older one) deletes the older kid
    with a notification: an instance that read the older kid through the store refuses it too."""
    w = World(open_instance_store)
    w.b.wait_listening()
    first = w.establish(w.a)
    assert w.b.keys.resolve(first.kid).key == first.key
    second = w.establish(w.a)
    with pytest.raises(UnknownKeyID):
        w.b.keys.resolve(first.kid)
    with pytest.raises(UnknownKeyID):
        w.a.keys.resolve(first.kid)
    assert w.b.keys.resolve(second.kid).key == second.key


def test_unchanged_store_means_no_lookups_per_use(open_instance_store: Any) -> None:
    w = World(open_instance_store)
    w.a.wait_listening()
    res = w.establish(w.a)
    w.a.keys.resolve(res.kid)  # the first use may confirm once (the provision itself is a change)
    checks = w.a.keys.presence_checks
    for _ in range(20):
        assert w.a.keys.resolve(res.kid).key == res.key
        assert w.a.keys.esdata.resolve(res.kid).key == res.key
        assert w.a.keys.for_peer(INI_ID).kid == res.kid
    assert w.a.keys.presence_checks == checks
    # an unrelated key dropped elsewhere is a change: one confirmation, and the key stays
    other = StoreKeySource(open_instance_store(w.clock))
    other.provision("unrelated", b"\x05" * 32, peer_id="Cx", suid=SUID.CERTIFICATE_ESPRIM)
    assert other.revoke("unrelated", notify=ESCERTKE_CHANNEL)
    assert _eventually(lambda: (w.a.keys.resolve(res.kid).key == res.key
                                and w.a.keys.presence_checks == checks + 1))
    assert w.a.keys.resolve(res.kid).key == res.key and w.a.keys.presence_checks == checks + 1


def test_without_a_store_nothing_is_looked_up() -> None:
    clock = Clock()
    now = clock.now - timedelta(hours=1)
    ca = DevCA.create("No store SP", now=now, permit_uri=[SP], permit_dns=[SP], intermediate=True)
    keys = ESCertKEKeys(clock=clock)
    ini = InitiatingEndPoint(creds(ca.issue(CertificateFlavour.AE_ID, [INI_CERT_ID], now=now)), clock=clock)
    ter = TerminatingEndPoint(creds(ca.issue(CertificateFlavour.AE_ID, [TER_CERT_ID], now=now)),
                              [InitiatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, INI_CERT_ID), (ca.trust_anchor,),
                                             identity=INI_ID)], clock=clock, keys=keys)
    proc = ini.initiate(TerminatorInfo(PeerCertInfo(CertificateFlavour.AE_ID, TER_CERT_ID), (ca.trust_anchor,),
                                       identity=TER_ID))
    res = proc.receive_message_4(ter.handle(INI_ID, proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))))
    assert keys.resolve(res.kid).key == res.key and keys.presence_checks == 0
    keys.close()  # nothing to stop


def test_close_stops_the_listener(open_instance_store: Any) -> None:
    w = World(open_instance_store)
    w.a.wait_listening()
    res = w.establish(w.a)
    listener = w.a.keys._listener  # noqa: SLF001
    w.a.keys.close()
    w.a.keys.close()
    assert w.a.keys._listener is None  # noqa: SLF001
    if listener is None:  # SQLite: no listener, the sequence number is read per use
        return
    assert listener.closed
    # PostgreSQL after close: no new listener; every use looks the kid up (still correct)
    checks = w.a.keys.presence_checks
    assert w.a.keys.resolve(res.kid).key == res.key and w.a.keys.resolve(res.kid).key == res.key
    assert w.a.keys.presence_checks == checks + 2 and w.a.keys._listener is None  # noqa: SLF001
