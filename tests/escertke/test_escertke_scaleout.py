"""ESCertKE results shared through the store (DESIGN 3 scale-out rule) and concurrent
procedures from several threads on one Terminating End-Point."""

from __future__ import annotations

import threading

from _escertke_support import INI_ID, TER_ID, PKI, initiator_info, terminator_info  # type: ignore[import-not-found]

from m2msec.escertke import ESCertKEKeys, InitiatingEndPoint, InitiatorInfo, TerminatingEndPoint
from m2msec.esprim import StoreKeySource
from m2msec.onem2m.enums import SUID
from m2msec.store import KeyEncryptionKey, open_store


def test_terminator_key_reaches_other_instances_through_the_store(pki: PKI, clock, tmp_path) -> None:
    kek = KeyEncryptionKey.generate()
    url = f"sqlite://{tmp_path}/esc.db"
    store_a, store_b = open_store(url, kek, clock=clock), open_store(url, kek, clock=clock)
    try:
        keys = ESCertKEKeys(clock=clock, esprim_store=StoreKeySource(store_a))
        ter = TerminatingEndPoint(pki.ter, [initiator_info(pki)], clock=clock, keys=keys)
        ini = InitiatingEndPoint(pki.ini, clock=clock)
        p = ini.initiate(terminator_info(pki))
        res = p.receive_message_4(ter.handle(INI_ID, p.receive_message_2(ter.handle(INI_ID, p.message_1()))))
        other = StoreKeySource(store_b).resolve(res.kid)  # another instance, same database
        assert other.key == res.key and other.peer_id == INI_ID and other.suid is SUID.CERTIFICATE_ESPRIM
        assert res.key not in (tmp_path / "esc.db").read_bytes()  # encrypted at rest
    finally:
        store_a.close()
        store_b.close()


def test_concurrent_procedures_from_threads(pki: PKI, clock) -> None:
    base = initiator_info(pki)
    peers = [f"Cae-ini-{i}" for i in range(6)]
    ter = TerminatingEndPoint(pki.ter, [InitiatorInfo(base.cert_info, base.trust_anchors, identity=p) for p in peers],
                              clock=clock)
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def one(peer: str) -> None:
        try:
            ini = InitiatingEndPoint(pki.ini, clock=clock)
            for _ in range(3):
                p = ini.initiate(terminator_info(pki))
                m3 = p.receive_message_2(ter.handle(peer, p.message_1()))
                results[peer] = p.receive_message_4(ter.handle(peer, m3)).key
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(p,)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(set(results.values())) == len(peers)
    for peer in peers:
        assert ter.keys.for_peer(peer).key == results[peer]
    assert ter.unfinished() == {} and len(ter.keys) == len(peers)
    assert TER_ID
