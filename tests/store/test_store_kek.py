"""Key-encryption key handling and the at-rest secret format (pure functions, no database)."""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from m2msec.store import DecryptionFailure, KekFileModeError, KekMismatch, KeyEncryptionKey, StoreError
from m2msec.store.kek import open_secret, seal_secret

RAW = bytes(range(32))


def test_kek_from_hex_base64_and_base64url_agree() -> None:
    a = KeyEncryptionKey.from_text(RAW.hex())
    b = KeyEncryptionKey.from_text(base64.b64encode(RAW).decode())
    c = KeyEncryptionKey.from_text(base64.urlsafe_b64encode(RAW).decode().rstrip("="))
    d = KeyEncryptionKey.from_text("  " + RAW.hex().upper() + "\n")
    assert a == b == c == d
    assert a.kek_id == hashlib.sha256(b"m2msec.store.kek-id\x00" + RAW).digest()[:8]


@pytest.mark.parametrize(
    "text",
    ["", "zz" * 32, RAW.hex()[:-2], base64.b64encode(RAW[:31]).decode(), base64.b64encode(RAW + b"x").decode(), "é" * 10],
)
def test_kek_bad_text_rejected_without_echoing_it(text: str) -> None:
    with pytest.raises(StoreError) as ei:
        KeyEncryptionKey.from_text(text)
    if len(text) > 8:
        assert text not in str(ei.value)


def test_kek_wrong_length_bytes() -> None:
    with pytest.raises(StoreError):
        KeyEncryptionKey(b"\x00" * 16)


def test_kek_repr_hides_bytes() -> None:
    k = KeyEncryptionKey(RAW)
    for text in (repr(k), str(k), f"{k}"):
        assert RAW.hex() not in text and RAW.hex().upper() not in text
        assert base64.b64encode(RAW).decode() not in text
        assert k.kek_id.hex() in text
    with pytest.raises(TypeError):
        pickle.dumps(k)


def test_kek_file_written_0600_and_reloaded(tmp_path: Path) -> None:
    k = KeyEncryptionKey.generate()
    p = k.write_file(tmp_path / "kek")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert KeyEncryptionKey.from_file(p) == k
    with pytest.raises(StoreError, match="already exists"):
        KeyEncryptionKey.generate().write_file(p)
    assert KeyEncryptionKey.from_file(p) == k  # untouched
    k2 = KeyEncryptionKey.generate()
    k2.write_file(p, overwrite=True)
    assert KeyEncryptionKey.from_file(p) == k2 and stat.S_IMODE(p.stat().st_mode) == 0o600


def test_kek_file_raw_32_bytes(tmp_path: Path) -> None:
    p = tmp_path / "raw"
    p.write_bytes(RAW)
    p.chmod(0o600)
    assert KeyEncryptionKey.from_file(p) == KeyEncryptionKey(RAW)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o610, 0o700 | 0o001])
def test_kek_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    k = KeyEncryptionKey.generate()
    p = k.write_file(tmp_path / "kek")
    p.chmod(mode)
    for load in (lambda: KeyEncryptionKey.from_file(p),
                 lambda: KeyEncryptionKey.from_env({"M2MSEC_KEK_FILE": str(p)})):
        with pytest.raises(KekFileModeError) as ei:
            load()
        msg = str(ei.value)
        assert f"chmod 600 {p}" in msg and f"{mode:04o}" in msg
        assert k._key.hex() not in msg
    assert isinstance(ei.value, StoreError)
    p.chmod(0o600)
    assert KeyEncryptionKey.from_file(p) == k


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_kek_file_private_to_its_owner_is_accepted(tmp_path: Path, mode: int) -> None:
    k = KeyEncryptionKey.generate()
    p = k.write_file(tmp_path / "kek")
    p.chmod(mode)
    assert KeyEncryptionKey.from_file(p) == k


def test_kek_file_missing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot read KEK file"):
        KeyEncryptionKey.from_file(tmp_path / "nope")


def test_kek_from_env_prefers_file(tmp_path: Path) -> None:
    k_file, k_env = KeyEncryptionKey.generate(), KeyEncryptionKey.generate()
    p = k_file.write_file(tmp_path / "kek")
    env_hex = k_env._key.hex()
    assert KeyEncryptionKey.from_env({"M2MSEC_KEK_FILE": str(p), "M2MSEC_KEK": env_hex}) == k_file
    assert KeyEncryptionKey.from_env({"M2MSEC_KEK": env_hex}) == k_env
    with pytest.raises(StoreError, match="M2MSEC_KEK"):
        KeyEncryptionKey.from_env({})


def _independent_open(kek_raw: bytes, ns: str, cid: str, blob: bytes) -> bytes:
    """Decrypt following only the documented profile (docs/profile.md), not our code."""
    wk = HKDF(hashes.SHA256(), 32, None, b"m2msec.store.credential-wrap v1").derive(kek_raw)
    header, nonce, ct = blob[:9], blob[9:21], blob[21:]
    aad = (b"m2msec.store.credential\x00" + header + len(ns.encode()).to_bytes(4, "big") + ns.encode()
           + len(cid.encode()).to_bytes(4, "big") + cid.encode())
    return AESGCM(wk).decrypt(nonce, ct, aad)


def test_blob_layout_matches_profile() -> None:
    k = KeyEncryptionKey(RAW)
    blob = seal_secret(k, "mef.ke", "00ff@mef.example", b"s" * 32)
    assert len(blob) == 1 + 8 + 12 + 32 + 16
    assert blob[0] == 1 and blob[1:9] == k.kek_id
    assert _independent_open(RAW, "mef.ke", "00ff@mef.example", blob) == b"s" * 32
    assert open_secret(k, "mef.ke", "00ff@mef.example", blob) == b"s" * 32


def test_fresh_nonce_per_seal() -> None:
    k = KeyEncryptionKey(RAW)
    blobs = {seal_secret(k, "n", "i", b"same") for _ in range(50)}
    assert len(blobs) == 50
    assert len({b[9:21] for b in blobs}) == 50


@pytest.mark.parametrize(("ns", "cid"), [("n", "j"), ("m", "i"), ("ni", ""), ("", "ni")])
def test_blob_bound_to_row(ns: str, cid: str) -> None:
    k = KeyEncryptionKey(RAW)
    blob = seal_secret(k, "n", "i", b"secret")
    with pytest.raises(DecryptionFailure) as ei:
        open_secret(k, ns, cid, blob)
    assert f"{ns}/{cid}" in str(ei.value)
    assert RAW.hex() not in str(ei.value)


@pytest.mark.parametrize("pos", [0, 1, 8, 9, 20, 21, -1])
def test_tampered_blob_fails(pos: int) -> None:
    k = KeyEncryptionKey(RAW)
    blob = bytearray(seal_secret(k, "n", "i", b"secret"))
    blob[pos] ^= 0x01
    with pytest.raises(DecryptionFailure):
        open_secret(k, "n", "i", bytes(blob))


def test_truncated_blob_fails() -> None:
    k = KeyEncryptionKey(RAW)
    with pytest.raises(DecryptionFailure, match="unknown format"):
        open_secret(k, "n", "i", seal_secret(k, "n", "i", b"")[:-1])


def test_wrong_kek_names_both_ids_not_bytes() -> None:
    k1, k2 = KeyEncryptionKey(RAW), KeyEncryptionKey(os.urandom(32))
    blob = seal_secret(k1, "n", "i", b"secret")
    with pytest.raises(KekMismatch) as ei:
        open_secret(k2, "n", "i", blob)
    msg = str(ei.value)
    assert k1.kek_id.hex() in msg and k2.kek_id.hex() in msg and "n/i" in msg
    assert RAW.hex() not in msg
