"""Audit seal format (profile S10): known answers for the key derivation, row encoding, tags,
chain and checkpoint MAC, each recomputed here from RFC 2104/5869 primitives written out
(hashlib HMAC, struct) and pinned as hex, so a change of the format cannot go unnoticed."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct

import pytest

from m2msec.store import KeyEncryptionKey
from m2msec.store.audit_seal import (
    GENESIS,
    chain_next,
    checkpoint_mac,
    details_text,
    encode_row,
    row_tag,
)
from m2msec.store.errors import StoreError
from m2msec.store.kek import AuditSealKey

KEK = bytes(range(32))


def _hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with an absent salt (HashLen zero octets), written out."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm, i = okm + t, i + 1
    return okm[:length]


def _lp(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">I", len(raw)) + raw


ROWS = [
    (1, "2030-01-01T12:00:00.000000Z", "maf", "key_retrieval", "C-AE1", "ok", {"relativeKeyID": "r1", "n": 1}),
    (2, "2030-01-01T12:00:01.250000Z", "mef-admin", "token-issue", "Cé", "ok", {"os_user": "root", "x": [1.5, None]}),
    (5, "2030-01-01T12:00:02.000001Z", "maf", "key_retrieval", "C-AE2", "denied", {}),
]

EXPECTED_SEAL_KEY = "750ac74547b4ec41c0b23055e27e32fda620d0edf488ce42be29c8199ed2b95b"


def test_seal_key_is_hkdf_of_the_kek_with_its_own_label() -> None:
    kek = KeyEncryptionKey(KEK)
    key = kek.audit_seal_key()
    want = _hkdf_sha256(KEK, b"m2msec.store.audit-seal v1")
    assert key._key == want
    assert key.mac(b"x") == hmac.new(want, b"x", hashlib.sha256).digest()
    # not the credential wrapping key (other label) and not the KEK
    assert want != _hkdf_sha256(KEK, b"m2msec.store.credential-wrap v1") and want != KEK
    assert key.kek_id == kek.kek_id


def test_seal_key_is_pinned() -> None:
    assert KeyEncryptionKey(KEK).audit_seal_key()._key.hex() == EXPECTED_SEAL_KEY


def test_seal_key_hides_itself() -> None:
    kek = KeyEncryptionKey(KEK)
    key = kek.audit_seal_key()
    assert repr(key) == f"AuditSealKey(kek_id={kek.kek_id.hex()})" and str(key) == repr(key)
    assert key._key.hex() not in repr(key) and KEK.hex() not in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(StoreError):
        AuditSealKey(b"short", bytes(8))


def _independent_chain(k: bytes) -> tuple[list[bytes], list[bytes]]:
    tags, chains, prev = [], [], bytes(32)
    for seq, ts, actor, action, subject, outcome, details in ROWS:
        det = json.dumps(details, sort_keys=True, separators=(",", ":"))
        enc = (b"m2msec.store.audit-row v1\x00" + struct.pack(">q", seq) + _lp(ts) + _lp(actor) + _lp(action)
               + _lp(subject) + _lp(outcome) + _lp(det))
        tag = hmac.new(k, b"\x01" + enc, hashlib.sha256).digest()
        prev = hmac.new(k, b"\x02" + prev + tag, hashlib.sha256).digest()
        tags.append(tag)
        chains.append(prev)
    return tags, chains


EXPECTED_CHAIN = [
    "4853114ce6711f75ea52368cb76b7fb6ff53f6d3e456ab095bd851856f7563f5",
    "92819d105dfb962190171d244e9fce775d85cd58ee1456550df64c367c0d1564",
    "e790fe66128062a89f75301970c9892c59da6d0158378ff991d0040340551ac3",
]
EXPECTED_CHECKPOINT_MAC = "f353c2d6044064df8560885f786f2d6fa93149a732cec960532e5479b8bca081"


def _module_chain() -> tuple[AuditSealKey, list[bytes], list[bytes]]:
    key = KeyEncryptionKey(KEK).audit_seal_key()
    tags, chains, prev = [], [], GENESIS
    for seq, ts, actor, action, subject, outcome, details in ROWS:
        tag = row_tag(key, encode_row(seq, ts, actor, action, subject, outcome, details_text(details)))
        prev = chain_next(key, prev, tag)
        tags.append(tag)
        chains.append(prev)
    return key, tags, chains


def test_row_encoding_layout() -> None:
    enc = encode_row(-2, "t", "a", "b", "é", "o", "{}")
    assert enc == (b"m2msec.store.audit-row v1\x00" + b"\xff" * 7 + b"\xfe" + b"\x00\x00\x00\x01t"
                   + b"\x00\x00\x00\x01a" + b"\x00\x00\x00\x01b" + b"\x00\x00\x00\x02\xc3\xa9"
                   + b"\x00\x00\x00\x01o" + b"\x00\x00\x00\x02{}")
    # length prefixes: moving a character between fields changes the encoding
    assert encode_row(1, "t", "ab", "", "s", "o", "{}") != encode_row(1, "t", "a", "b", "s", "o", "{}")
    assert details_text({"b": 1, "a": "é"}) == '{"a":"\\u00e9","b":1}'


def test_chain_matches_an_independent_computation_and_the_pinned_values() -> None:
    key, tags, chains = _module_chain()
    want_tags, want_chains = _independent_chain(key._key)
    assert tags == want_tags and chains == want_chains
    assert [c.hex() for c in chains] == EXPECTED_CHAIN
    # each link depends on the previous one: the same rows in another order give other values
    other = GENESIS
    for tag in reversed(tags):
        other = chain_next(key, other, tag)
    assert other != chains[-1]


def test_checkpoint_mac_known_answer() -> None:
    key, _, chains = _module_chain()
    mac = checkpoint_mac(key, 1, GENESIS, 5, 3, chains[-1], "2030-01-01T12:05:00.000000Z", bytes.fromhex("0011223344556677"))
    want = hmac.new(
        key._key,
        b"\x03" + struct.pack(">q", 1) + bytes(32) + struct.pack(">q", 5) + struct.pack(">q", 3) + chains[-1]
        + _lp("2030-01-01T12:05:00.000000Z") + bytes.fromhex("0011223344556677"),
        hashlib.sha256,
    ).digest()
    assert mac == want and mac.hex() == EXPECTED_CHECKPOINT_MAC
    # every field counts
    assert checkpoint_mac(key, 2, GENESIS, 5, 3, chains[-1], "2030-01-01T12:05:00.000000Z", bytes(8)) != mac
    assert checkpoint_mac(key, 1, mac, 5, 3, chains[-1], "2030-01-01T12:05:00.000000Z", bytes.fromhex("0011223344556677")) != mac
