"""The ESCertKE verification cache (``_CachedVerify``): hits without conversion, failures never cached,
validity re-checked at every hit."""

from __future__ import annotations

from typing import Any

import pytest
from _escertke_support import INI_ID, terminator_info
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.escertke import ESCertKEError
from m2msec.escertke.procedure import _CachedVerify
from m2msec.pki import CertificateVerificationError, VerificationReason


class Counting:
    def __init__(self, inner: Any, fail: int = 0) -> None:
        self.inner, self.fail, self.calls = inner, fail, 0

    def __call__(self, chain: Any) -> Any:
        self.calls += 1
        if self.calls <= self.fail:
            raise CertificateVerificationError(VerificationReason.BAD_SIGNATURE, "injected failure")
        return self.inner(chain)


def _run(ini, ter, pki):
    proc = ini.initiate(terminator_info(pki))
    m3 = proc.receive_message_2(ter.handle(INI_ID, proc.message_1()))
    return proc.receive_message_4(ter.handle(INI_ID, m3))


def _hooks(ini, ter) -> list[_CachedVerify]:
    ctxs = [*ini._contexts.values(), *ter._contexts.values()]
    return [c.config.verify_peer for c in ctxs]


def test_hit_needs_neither_the_verifier_nor_a_conversion(ends, pki, monkeypatch):
    ini, ter = ends
    first = _run(ini, ter, pki)
    hooks = _hooks(ini, ter)
    assert len(hooks) == 2 and all(isinstance(h, _CachedVerify) for h in hooks)
    counters = []
    for h in hooks:
        counters.append(Counting(h._hook))
        h._hook = counters[-1]
    import m2msec.tls.engine as engine_mod
    conversions = []
    real = engine_mod._load_chain
    monkeypatch.setattr(engine_mod, "_load_chain", lambda der: conversions.append(der) or real(der))
    second = _run(ini, ter, pki)
    assert [c.calls for c in counters] == [0, 0] and conversions == []
    assert second.peer is first.peer  # the cached VerifiedPeer of the first procedure
    assert second.key != first.key


def test_failures_are_never_cached(ends, pki):
    ini, ter = ends
    _run(ini, ter, pki)  # warm both caches, then clear them and make the next verification fail once
    for h in _hooks(ini, ter):
        h._ok.clear()
    ter_hook = _hooks(ini, ter)[1]
    ter_hook._hook = counting = Counting(ter_hook._hook, fail=1)
    with pytest.raises(ESCertKEError):
        _run(ini, ter, pki)
    assert counting.calls == 1 and len(ter_hook._ok) == 0
    _run(ini, ter, pki)  # the same chain verifies again in full, and only then is cached
    assert counting.calls == 2 and len(ter_hook._ok) == 1


def test_call_with_objects_and_der_share_one_cache(pki, clock):
    calls: list[int] = []

    class Result:
        trust_anchor = pki.ca.trust_anchor

    def inner(chain):
        calls.append(len(chain))
        return Result()

    cache = _CachedVerify(inner, clock)
    chain = [pki.ini.certificate, *pki.ini.chain, pki.ca.trust_anchor]
    r1 = cache(chain)
    der = tuple(c.public_bytes(Encoding.DER) for c in chain)
    r2 = cache.verify_der_chain(der, lambda: pytest.fail("a hit must not load the chain"))
    assert r1 is r2 and calls == [len(chain)]
    clock.advance(days=400)  # past the leaf's validity: the hit is refused, the verifier runs again
    r3 = cache.verify_der_chain(der, lambda: list(chain))
    assert calls == [len(chain), len(chain)] and r3 is not r1
