"""Phase A key sources (TS-0003 8.4.2 A, C.6a): provisioned, store-backed, chained; unknown and
expired identifiers are ESPRIM_UNKNOWN_KEY_ID (4112); keys never show in reprs."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from m2msec.esprim import ChainKeySource, PairwiseKey, PairwiseKeySource, ProvisionedKeySource, StoreKeySource
from m2msec.esprim.errors import UnknownKeyID
from m2msec.onem2m.enums import SUID
from m2msec.store import open_store


def test_pairwise_key_validation():
    with pytest.raises(ValueError):
        PairwiseKey(kid="k", key=os.urandom(15), peer_id="CAE1")  # profile K9: >= 16 octets
    with pytest.raises(ValueError):
        PairwiseKey(kid="k", key=os.urandom(32), peer_id="")
    with pytest.raises(ValueError):
        PairwiseKey(kid="k", key=os.urandom(32), peer_id="CAE1", suid=SUID.PRE_PROVISIONED_ESDATA_ENCRYPT)
    k = PairwiseKey(kid="k", key=os.urandom(32), peer_id="CAE1", suid=43)
    assert k.suid is SUID.CERTIFICATE_ESPRIM and k.key.hex() not in repr(k) and "hidden" in str(k)


def test_provisioned_source(clock):
    k13 = PairwiseKey(kid="a", key=os.urandom(32), peer_id="CAE1")
    k23 = PairwiseKey(kid="b", key=os.urandom(16), peer_id="CAE2", suid=23, expires_at=clock() + timedelta(hours=1))
    src = ProvisionedKeySource([k13, k23], clock=clock)
    assert isinstance(src, PairwiseKeySource)
    assert src.resolve("a") is k13 and src.resolve("b") is k23
    with pytest.raises(UnknownKeyID) as ei:
        src.resolve("c")
    assert int(ei.value.rsc) == 4112
    clock.advance(hours=1)
    with pytest.raises(UnknownKeyID):
        src.resolve("b")
    with pytest.raises(ValueError):  # MAF keys (33) are not provisioned ones
        src.add(PairwiseKey(kid="m", key=os.urandom(32), peer_id="CAE3", suid=33))
    assert src.remove("a") and not src.remove("a")


def test_store_source_and_chain(clock, tmp_path, kek):
    with open_store(f"sqlite://{tmp_path}/k.db", kek, clock=clock) as store:
        src = StoreKeySource(store)
        key = os.urandom(32)
        src.provision("esc@x.example", key, peer_id="/id-in/CAE9", suid=SUID.CERTIFICATE_ESPRIM,
                      expires_at=clock() + timedelta(minutes=5))
        got = src.resolve("esc@x.example")
        assert (got.key, got.peer_id, got.suid) == (key, "/id-in/CAE9", SUID.CERTIFICATE_ESPRIM)
        store.put_credential("esprim.pairwise", "broken", os.urandom(32), metadata={"suid": 13})  # no peer
        with pytest.raises(UnknownKeyID):
            src.resolve("broken")
        mem = ProvisionedKeySource([PairwiseKey(kid="mem", key=os.urandom(32), peer_id="CAE1")], clock=clock)
        chain = ChainKeySource(mem, src)
        assert chain.resolve("mem").peer_id == "CAE1"
        assert chain.resolve("esc@x.example").suid == 43
        clock.advance(minutes=5)
        for s in (src, chain):
            with pytest.raises(UnknownKeyID):
                s.resolve("esc@x.example")
        assert src.revoke("broken")
        with pytest.raises(UnknownKeyID):
            chain.resolve("broken")
        with pytest.raises(ValueError):
            ChainKeySource()
