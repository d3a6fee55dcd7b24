"""TLSEngine verify hooks with ``verify_der_chain``: DER chain, lazy conversion, rejection."""

from __future__ import annotations

from typing import Any

import pytest
from _tlshelp import PKI, make_pki, pump
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from m2msec.tls import Role, TLSConfig, TLSEngine, TLSFailureReason, TLSHandshakeError, Transport


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki()


class DERHook:
    """Records what the engine hands over; loads the objects only when told to."""

    def __init__(self, *, load: bool, fail: bool = False) -> None:
        self.load, self.fail = load, fail
        self.der: tuple[bytes, ...] | None = None
        self.loaded: list[x509.Certificate] | None = None
        self.plain_calls = 0

    def __call__(self, chain: list[x509.Certificate]) -> Any:
        self.plain_calls += 1
        return "plain"

    def verify_der_chain(self, der_chain: tuple[bytes, ...], load_chain: Any) -> Any:
        self.der = der_chain
        if self.load:
            self.loaded = load_chain()
            assert load_chain() == self.loaded  # converted once, same certificates again
        if self.fail:
            raise ValueError("refused by the DER hook")
        return ("verdict", len(der_chain))


def _pair(pki: PKI, transport: Transport, client_hook: Any, server_hook: Any, *, authoritative: bool):
    server_leaf, client_leaf = pki.leaf("server.example"), pki.leaf("client.example")
    c = TLSEngine(TLSConfig(Role.CLIENT, transport, credentials=pki.creds(client_leaf), trust_anchors=[pki.root.cert],
                            verify_peer=client_hook, verify_peer_authoritative=authoritative))
    s = TLSEngine(TLSConfig(Role.SERVER, transport, credentials=pki.creds(server_leaf), trust_anchors=[pki.root.cert],
                            verify_peer=server_hook, verify_peer_authoritative=authoritative))
    return c, s, client_leaf.cert, server_leaf.cert


@pytest.mark.parametrize("authoritative", [False, True])
@pytest.mark.parametrize("transport", list(Transport))
def test_der_hook_gets_the_chain_leaf_first_without_conversion(pki: PKI, transport: Transport,
                                                              authoritative: bool) -> None:
    ch, sh = DERHook(load=False), DERHook(load=True)
    c, s, client_cert, server_cert = _pair(pki, transport, ch, sh, authoritative=authoritative)
    pump(c, s)
    expected_c = [server_cert, pki.inter.cert, pki.root.cert]
    expected_s = [client_cert, pki.inter.cert, pki.root.cert]
    assert ch.der == tuple(x.public_bytes(Encoding.DER) for x in expected_c)
    assert sh.der == tuple(x.public_bytes(Encoding.DER) for x in expected_s)
    assert ch.loaded is None and sh.loaded == expected_s
    assert ch.plain_calls == sh.plain_calls == 0  # verify_der_chain replaces __call__
    assert c.verified_chain() == expected_c  # converted lazily, on request
    assert c.verified_chain() == expected_c and c.verified_chain() is not c.verified_chain()
    assert s.verified_chain() == expected_s
    if authoritative:
        assert c.peer_verification == s.peer_verification == ("verdict", 3)


@pytest.mark.parametrize("authoritative", [False, True])
def test_der_hook_rejection_aborts_the_handshake(pki: PKI, authoritative: bool) -> None:
    c, s, _, _ = _pair(pki, Transport.TLS, DERHook(load=False, fail=True), DERHook(load=True),
                       authoritative=authoritative)
    with pytest.raises(TLSHandshakeError) as ei:
        pump(c, s)
    assert ei.value.reason is TLSFailureReason.PEER_REJECTED
    assert isinstance(ei.value.__cause__, ValueError) and "refused by the DER hook" in str(ei.value.__cause__)
    assert c.peer_verification is None


def test_plain_hook_still_gets_cryptography_objects(pki: PKI) -> None:
    seen: list[list[x509.Certificate]] = []
    c, s, _, server_cert = _pair(pki, Transport.TLS, lambda ch: seen.append(ch) or "ok", None, authoritative=True)
    pump(c, s)
    assert len(seen) == 1 and all(isinstance(x, x509.Certificate) for x in seen[0])
    assert seen[0] == [server_cert, pki.inter.cert, pki.root.cert] == c.verified_chain()
    # no hook on the server: OpenSSL alone verified, the chain is still recorded (converted on request)
    assert s.verified_chain()[1:] == [pki.inter.cert, pki.root.cert] and s.peer_verification is None
