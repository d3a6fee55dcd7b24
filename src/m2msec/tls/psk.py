"""TLS-PSK callbacks for pyOpenSSL contexts (TS-0003 clause 10.2.2, RFC 4279).

pyOpenSSL has no PSK API, so the OpenSSL callbacks
``SSL_CTX_set_psk_server_callback`` / ``SSL_CTX_set_psk_client_callback`` are
registered through the cffi ``lib``/``ffi`` objects pyOpenSSL itself uses.

* The cffi callback objects are returned to the caller, which must keep them
  alive as long as the context (:class:`PSKCallbacks` holds them; the engine
  stores it next to the context).
* The server looks the client's identity up through a user callback
  ``lookup(identity: bytes, sni: str | None) -> bytes | None`` so that a MEF,
  MAF or CSE can find Kpm/Km/Kpsa in its store; the SNI callback has already
  run when the PSK callback runs, so ``sni`` is the name the client asked for.
* OpenSSL reports an unknown identity only as a generic alert, and the
  library bindings lack ``SSL_get_psk_identity``: the callback records the
  identity and the precise failure reason in the connection's
  :class:`CallbackRecord` (the pyOpenSSL ``Connection``'s app data).
* No exception ever propagates into C: it is caught, recorded, and the
  callback returns 0, which makes OpenSSL abort the handshake.
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakValueDictionary

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

__all__ = [
    "PSKLookup",
    "CallbackRecord",
    "PSKCallbacks",
    "install_server_psk",
    "install_client_psk",
    "record_for_ssl",
    "servername_of",
]

#: ``lookup(identity, sni) -> key or None``
PSKLookup = Callable[[bytes, "str | None"], "bytes | None"]

_SERVER_CB_TYPE = "unsigned int (*)(SSL *, char *, unsigned char *, unsigned int)"
_CLIENT_CB_TYPE = "unsigned int (*)(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)"


@dataclass(eq=False)
class CallbackRecord:
    """Python-side state written by the C callbacks of one connection."""

    psk_identity: bytes | None = None
    psk_identity_hint: bytes | None = None
    #: server: SHA-256 of the PSK the lookup returned (never the key; see TLSEngine.psk_digest)
    psk_digest: bytes | None = None
    failure_reason: str | None = None
    failure_detail: str | None = None
    failure_cause: BaseException | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str, detail: str, cause: BaseException | None = None) -> None:
        """Remember the first failure only (later ones are consequences)."""
        if self.failure_reason is None:
            self.failure_reason = reason
            self.failure_detail = detail
            self.failure_cause = cause

    def __repr__(self) -> str:
        return f"CallbackRecord(psk_identity={self.psk_identity!r}, failure_reason={self.failure_reason!r})"


_REVERSE = SSL.Connection._reverse_mapping
# pyOpenSSL's mapping is a WeakValueDictionary: read its underlying dict of weak references
# directly (this runs in every C callback); anything else goes through .get()
_REVERSE_REFS: dict[Any, Any] | None = getattr(_REVERSE, "data", None) if isinstance(_REVERSE, WeakValueDictionary) \
    else None


def record_for_ssl(ssl: Any) -> CallbackRecord | None:
    """The :class:`CallbackRecord` of the pyOpenSSL connection owning ``SSL *ssl``.

    Uses pyOpenSSL's own SSL* -> Connection mapping (the one its callbacks use).
    """
    if _REVERSE_REFS is not None:
        ref = _REVERSE_REFS.get(ssl)
        conn = ref() if ref is not None else None
    else:
        conn = _REVERSE.get(ssl)
    if conn is None:
        return None
    data = conn._app_data  # Connection.get_app_data()
    return data if isinstance(data, CallbackRecord) else getattr(data, "callback_record", None)


def servername_of(ssl: Any) -> str | None:
    """The SNI host name the client sent, as text (None when absent)."""
    p = _lib.SSL_get_servername(ssl, _lib.TLSEXT_NAMETYPE_host_name)
    if p == _ffi.NULL:
        return None
    return _ffi.string(p).decode("utf-8", "replace")


class PSKCallbacks:
    """Keeps the cffi callback objects alive for the life of their context."""

    def __init__(self, *callbacks: Any) -> None:
        self._callbacks = callbacks

    def __repr__(self) -> str:
        return f"PSKCallbacks({len(self._callbacks)} callbacks)"


def install_server_psk(
    ctx: SSL.Context, lookup: PSKLookup, *, identity_hint: bytes | None = None
) -> PSKCallbacks:
    """Register the server PSK callback on ``ctx`` (keep the returned object alive)."""

    def server_cb(ssl: Any, identity: Any, psk: Any, max_psk_len: int) -> int:
        rec = None
        try:
            rec = record_for_ssl(ssl)
            ident = _ffi.string(identity) if identity != _ffi.NULL else b""
            if rec is not None:
                rec.psk_identity = ident
            key = lookup(ident, servername_of(ssl))
            if key is None:
                if rec is not None:
                    rec.fail("UNKNOWN_PSK_IDENTITY", "the client's PSK identity is not known")
                return 0
            key = bytes(key)
            if not key or len(key) > max_psk_len:
                if rec is not None:
                    rec.fail("INTERNAL_ERROR", f"PSK length {len(key)} not in 1..{max_psk_len}")
                return 0
            _ffi.memmove(psk, key, len(key))
            if rec is not None:
                rec.psk_digest = hashlib.sha256(key).digest()
            return len(key)
        except BaseException as exc:  # never propagate into C
            if rec is not None:
                rec.fail("INTERNAL_ERROR", f"PSK lookup raised {type(exc).__name__}", exc)
            return 0

    cb = _ffi.callback(_SERVER_CB_TYPE, server_cb)
    _lib.SSL_CTX_set_psk_server_callback(ctx._context, cb)
    if identity_hint:
        if _lib.SSL_CTX_use_psk_identity_hint(ctx._context, identity_hint) != 1:
            raise ValueError("OpenSSL refused the PSK identity hint")
    return PSKCallbacks(cb)


def install_client_psk(ctx: SSL.Context, identity: bytes, key: bytes) -> PSKCallbacks:
    """Register the client PSK callback offering ``identity`` / ``key``."""
    identity = bytes(identity)
    key = bytes(key)
    if not identity or b"\x00" in identity:
        raise ValueError("PSK identity must be non-empty and contain no NUL octet")
    if not key:
        raise ValueError("PSK must not be empty")

    def client_cb(ssl: Any, hint: Any, identity_out: Any, max_identity_len: int, psk: Any, max_psk_len: int) -> int:
        rec = None
        try:
            rec = record_for_ssl(ssl)
            if rec is not None:
                rec.psk_identity_hint = _ffi.string(hint) if hint != _ffi.NULL else None
            if len(identity) + 1 > max_identity_len or len(key) > max_psk_len:
                if rec is not None:
                    rec.fail("INTERNAL_ERROR", "PSK identity or key too long for OpenSSL")
                return 0
            _ffi.memmove(identity_out, identity + b"\x00", len(identity) + 1)
            _ffi.memmove(psk, key, len(key))
            if rec is not None:
                rec.psk_identity = identity
            return len(key)
        except BaseException as exc:  # never propagate into C
            if rec is not None:
                rec.fail("INTERNAL_ERROR", f"PSK client callback raised {type(exc).__name__}", exc)
            return 0

    cb = _ffi.callback(_CLIENT_CB_TYPE, client_cb)
    _lib.SSL_CTX_set_psk_client_callback(ctx._context, cb)
    return PSKCallbacks(cb)
