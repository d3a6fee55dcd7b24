"""Key-encryption key (KEK) and the at-rest format of stored secrets.

Implements the Secure Storage function of TS-0003 clause 6.2.5.2 (Sensitive Data
Handling) for every entity holding symmetric credentials (the MEF/MAF key stores of
clauses 8.3.4, 8.8.2 and 10.3.5 keep Ke, Km, Kpsa and MAF-distributed keys).  The at-rest format is an m2msec profile decision
(see ``docs/profile.md``):

* wrapping key ``WK = HKDF-SHA-256(IKM=KEK, salt=none, info="m2msec.store.credential-wrap v1", L=32)``
* KEK identifier ``kek_id = SHA-256("m2msec.store.kek-id" || 0x00 || KEK)[0:8]``
* blob = ``0x01 (format version) || kek_id (8) || nonce (12) || AES-256-GCM ciphertext || tag (16)``
* AAD  = ``"m2msec.store.credential" || 0x00 || blob[0:9] || len32(ns) || ns || len32(id) || id``
  (``len32`` = 4-byte big-endian length of the UTF-8 encoding) so a ciphertext only opens in
  its own row, under the format version and KEK that it names.

The audit trail's seal key (:mod:`m2msec.store.audit_seal`) is derived here too, so that the
KEK never leaves this module: ``k = HKDF-SHA-256(IKM=KEK, salt=none, info="m2msec.store.audit-seal v1",
L=32)``, used only for HMAC-SHA-256 through :class:`AuditSealKey`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from m2msec.store.errors import DecryptionFailure, KekMismatch, StoreError

__all__ = ["AuditSealKey", "KeyEncryptionKey", "KekFileModeError", "seal_secret", "open_secret", "blob_kek_id", "FORMAT_V1"]

KEK_LEN = 32
FORMAT_V1 = 0x01
KEK_ID_LEN = 8
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = 1 + KEK_ID_LEN
_AAD_LABEL = b"m2msec.store.credential\x00"
_WRAP_INFO = b"m2msec.store.credential-wrap v1"
_KEK_ID_LABEL = b"m2msec.store.kek-id\x00"
_AUDIT_SEAL_INFO = b"m2msec.store.audit-seal v1"

ENV_KEK = "M2MSEC_KEK"
ENV_KEK_FILE = "M2MSEC_KEK_FILE"


class KekFileModeError(StoreError):
    """A KEK file that group or others can access (mode & 0o077 != 0): ``chmod 600`` it."""


class KeyEncryptionKey:
    """A 256-bit key-encryption key.  Never written to the database; ``repr`` shows only its id."""

    __slots__ = ("_key", "_aead", "kek_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEK_LEN:
            raise StoreError(f"a key-encryption key must be exactly {KEK_LEN} bytes")
        self._key = bytes(key)
        wrap = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_WRAP_INFO).derive(self._key)
        self._aead = AESGCM(wrap)
        #: 8-byte public identifier (does not reveal the key).
        self.kek_id: bytes = hashlib.sha256(_KEK_ID_LABEL + self._key).digest()[:KEK_ID_LEN]

    # -- construction ---------------------------------------------------------------
    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(secrets.token_bytes(KEK_LEN))

    @classmethod
    def from_text(cls, text: str | bytes, *, source: str = "value") -> KeyEncryptionKey:
        """Parse hex (64 digits) or base64/base64url (of 32 bytes); whitespace is ignored."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise StoreError(f"KEK {source} is not hex or base64 text") from None
        s = "".join(text.split())
        raw: bytes | None = None
        if len(s) == 2 * KEK_LEN:
            try:
                raw = bytes.fromhex(s)
            except ValueError:
                raw = None
        if raw is None:
            try:
                b64 = s.replace("-", "+").replace("_", "/")
                b64 += "=" * (-len(b64) % 4)
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise StoreError(f"KEK {source} is not hex or base64 text") from None
        if len(raw) != KEK_LEN:
            raise StoreError(f"KEK {source} does not encode exactly {KEK_LEN} bytes")
        return cls(raw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyEncryptionKey:
        """Load a KEK file written by :meth:`write_file` (hex/base64 text, or 32 raw bytes).

        On POSIX systems a file that group or others can read, write or execute is refused
        (:class:`KekFileModeError`), as OpenSSH refuses an open private key file.
        """
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                if os.name != "nt":
                    mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
                    if mode & 0o077:
                        raise KekFileModeError(
                            f"KEK file {p} is accessible by group or others (mode {mode:04o}); "
                            f"refusing to use it: chmod 600 {p}"
                        )
                data = fh.read()
        except OSError as exc:
            raise StoreError(f"cannot read KEK file {p}: {exc.strerror}") from None
        if len(data) == KEK_LEN:
            try:
                return cls.from_text(data, source=f"file {p}")
            except StoreError:
                return cls(data)
        return cls.from_text(data, source=f"file {p}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyEncryptionKey:
        """``M2MSEC_KEK_FILE`` (path) if set, else ``M2MSEC_KEK`` (hex or base64)."""
        env = os.environ if environ is None else environ
        if env.get(ENV_KEK_FILE):
            return cls.from_file(env[ENV_KEK_FILE])
        if env.get(ENV_KEK):
            return cls.from_text(env[ENV_KEK], source=f"${ENV_KEK}")
        raise StoreError(f"no key-encryption key configured: set {ENV_KEK_FILE} or {ENV_KEK}")

    def write_file(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the KEK as hex text to a new file created with mode 0600."""
        p = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(p, flags, 0o600)
        except FileExistsError:
            raise StoreError(f"KEK file {p} already exists") from None
        except OSError as exc:
            raise StoreError(f"cannot create KEK file {p}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (self._key.hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return p

    # -- derived keys ---------------------------------------------------------------
    def audit_seal_key(self) -> AuditSealKey:
        """The HMAC key that seals the audit trail (HKDF-SHA-256, info ``m2msec.store.audit-seal v1``)."""
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_AUDIT_SEAL_INFO).derive(self._key)
        return AuditSealKey(key, self.kek_id)

    # -- identity -------------------------------------------------------------------
    @property
    def kek_id_hex(self) -> str:
        return self.kek_id.hex()

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(kek_id={self.kek_id.hex()})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyEncryptionKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.kek_id)

    def __reduce__(self) -> object:
        raise TypeError("KeyEncryptionKey is not picklable")


class AuditSealKey:
    """HMAC-SHA-256 under the audit seal key derived from a KEK.  ``repr`` shows only the KEK id."""

    __slots__ = ("_key", "kek_id")

    def __init__(self, key: bytes, kek_id: bytes) -> None:
        if len(key) != 32:
            raise StoreError("an audit seal key must be 32 bytes")
        self._key = bytes(key)
        #: id of the KEK it was derived from (public)
        self.kek_id: bytes = bytes(kek_id)

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA-256(k, data), 32 bytes."""
        return hmac.digest(self._key, data, "sha256")

    def __repr__(self) -> str:
        return f"AuditSealKey(kek_id={self.kek_id.hex()})"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("AuditSealKey is not picklable")


def _aad(header: bytes, namespace: str, item_id: str) -> bytes:
    ns = namespace.encode("utf-8")
    ident = item_id.encode("utf-8")
    return b"".join(
        (_AAD_LABEL, header, struct.pack(">I", len(ns)), ns, struct.pack(">I", len(ident)), ident)
    )


def seal_secret(kek: KeyEncryptionKey, namespace: str, item_id: str, secret: bytes) -> bytes:
    """Encrypt ``secret`` for row (namespace, item_id) with a fresh 96-bit nonce."""
    header = bytes([FORMAT_V1]) + kek.kek_id
    nonce = os.urandom(NONCE_LEN)
    ct = kek._aead.encrypt(nonce, bytes(secret), _aad(header, namespace, item_id))
    return header + nonce + ct


def blob_kek_id(blob: bytes) -> bytes:
    if len(blob) < HEADER_LEN + NONCE_LEN + TAG_LEN or blob[0] != FORMAT_V1:
        raise DecryptionFailure("stored secret has an unknown format")
    return bytes(blob[1:HEADER_LEN])


def open_secret(kek: KeyEncryptionKey, namespace: str, item_id: str, blob: bytes) -> bytes:
    """Decrypt a blob written by :func:`seal_secret` for the same row; errors name the row."""
    row = f"{namespace}/{item_id}"
    blob = bytes(blob)
    if len(blob) < HEADER_LEN + NONCE_LEN + TAG_LEN or blob[0] != FORMAT_V1:
        raise DecryptionFailure(f"stored secret of credential {row} has an unknown format")
    header = blob[:HEADER_LEN]
    if header[1:] != kek.kek_id:
        raise KekMismatch(
            f"credential {row} is sealed under KEK id {header[1:].hex()}, "
            f"but the store uses KEK id {kek.kek_id.hex()}"
        )
    nonce = blob[HEADER_LEN : HEADER_LEN + NONCE_LEN]
    try:
        return kek._aead.decrypt(nonce, blob[HEADER_LEN + NONCE_LEN :], _aad(header, namespace, item_id))
    except InvalidTag:
        raise DecryptionFailure(
            f"stored secret of credential {row} does not authenticate (tampered or moved from another row)"
        ) from None
