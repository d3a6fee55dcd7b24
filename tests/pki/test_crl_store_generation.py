"""``CRLStore.generation``: a content version that caches of verification results key on (8.1.2.2)."""

from __future__ import annotations

from datetime import timedelta

from _pki_support import NOW, make_ca
from m2msec.pki import CRLStore


def test_generation_counts_changes_only() -> None:
    ca = make_ca("Generation SP")
    old, new = ca.issue_crl(now=NOW), ca.issue_crl(now=NOW + timedelta(hours=1))
    root = ca.issue_crl(now=NOW, signer="root")
    store = CRLStore()
    assert store.generation == 0
    assert store.add(old) is True and store.generation == 1
    assert store.add(old) is False and store.generation == 1  # equal issue: unchanged
    assert store.add(new) is True and store.generation == 2
    assert store.add(old) is False and store.generation == 2  # older issue: unchanged
    assert store.add(root) is True and store.generation == 3  # another issuer
    store.replace([old])
    assert store.generation == 4 and list(store) == [old]
    store.replace([old])  # a refresh with the same content still counts (cheap, conservative)
    assert store.generation == 5
    assert CRLStore([old, new]).generation == 2
