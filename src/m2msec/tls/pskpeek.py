"""Read the client's ``psk_identity`` from the TLS 1.2 bytes before the engine sees them
(RFC 4279 2 and 3, RFC 5489 2; TS-0003 10.2.2, 8.2.2.3).

A TLS-PSK server looks the key up synchronously inside the handshake (the OpenSSL PSK
callback).  When the key must come from elsewhere over the network - the MAF-based SAEF of
TS-0003 8.2.2.3, where Entity B retrieves Kc from the MAF (8.8.2.8) for the ``psk_identity``
it received - the server must not wait in that callback on its own event loop.  The
identity travels in the clear, as the first field of the client's ClientKeyExchange (``opaque
psk_identity<0..2^16-1>`` for PSK, DHE_PSK and ECDHE_PSK alike), so the transport can read it,
fetch the key asynchronously, and only then hand the held bytes to the engine, whose
callback then finds the key in a cache.

:class:`PSKIdentityPeek` is that reader, sans-I/O: feed it the client's bytes; it follows
the plaintext handshake records (content type 22) and returns the identity when a
ClientKeyExchange is complete.  It stops (``done``, no identity) at the first non-handshake
record (ChangeCipherSpec, alert, application data), at a client Certificate message (a
certificate handshake: its ClientKeyExchange carries no identity), after
``max_bytes`` of input, or once the identity was read.  It only observes: a malformed
stream is the engine's to refuse.

:class:`DTLSPSKIdentityPeek` does the same for DTLS 1.2 datagrams (RFC 6347 4.1, 4.2.2): each
datagram holds whole records (13-byte header with epoch and sequence number), each handshake
record holds message fragments (12-byte header with message_seq, fragment_offset and
fragment_length).  The identity is read from the ClientKeyExchange's fragments joined in order
from offset 0; a fragment out of order is skipped (the client's retransmission brings the flight
again).  Epoch-0 records only: anything encrypted is not looked at.

:func:`start_prefetch` and :func:`await_prefetch` are what both asyncio adapters
(:mod:`m2msec.tls.aio`, :mod:`m2msec.tls.dtls`) do with a found identity: call
``TLSConfig.psk_prefetch`` and wait for it, a failure logged and left to the PSK callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["DTLSPSKIdentityPeek", "PSKIdentityPeek", "await_prefetch", "start_prefetch"]

log = logging.getLogger("m2msec.tls")

_CHANGE_CIPHER_SPEC = 20
_HANDSHAKE = 22
_CERTIFICATE = 11
_CLIENT_KEY_EXCHANGE = 16


class PSKIdentityPeek:
    """The ``psk_identity`` of the client's ClientKeyExchange, read from the raw TLS stream."""

    def __init__(self, max_bytes: int = 1 << 16) -> None:
        self.max_bytes = max_bytes
        self.done = False
        self.identity: bytes | None = None
        self._records = bytearray()
        self._handshake = bytearray()
        self._seen = 0

    def __repr__(self) -> str:
        return f"PSKIdentityPeek(done={self.done}, identity={self.identity!r})"

    def feed(self, data: bytes) -> bytes | None:
        """Add received bytes; returns the identity the first time it is complete, else None."""
        if self.done:
            return None
        self._seen += len(data)
        if self._seen > self.max_bytes:
            self.done = True
            return None
        self._records += data
        while len(self._records) >= 5:
            if self._records[0] != _HANDSHAKE:
                self.done = True
                return None
            length = int.from_bytes(self._records[3:5], "big")
            if len(self._records) < 5 + length:
                break
            self._handshake += self._records[5:5 + length]
            del self._records[:5 + length]
            found = self._messages()
            if self.done:
                return found
        return None

    def _messages(self) -> bytes | None:
        hs = self._handshake
        while len(hs) >= 4:
            kind = hs[0]
            length = int.from_bytes(hs[1:4], "big")
            if len(hs) < 4 + length:
                return None
            body = bytes(hs[4:4 + length])
            del hs[:4 + length]
            if kind == _CERTIFICATE:
                self.done = True
                return None
            if kind == _CLIENT_KEY_EXCHANGE:
                self.done = True
                self.identity = _identity_of(body)[1]
                return self.identity
        return None


def _identity_of(body: bytes | bytearray) -> tuple[bool, bytes | None]:
    """(complete, identity) from the start of a ClientKeyExchange body: (False, None) while
    fewer bytes than the identity's length field announces are known."""
    if len(body) < 2:
        return False, None
    n = int.from_bytes(body[:2], "big")
    if len(body) < 2 + n:
        return False, None
    return True, bytes(body[2:2 + n])


class DTLSPSKIdentityPeek:
    """The ``psk_identity`` of the client's ClientKeyExchange, read from DTLS 1.2 datagrams."""

    _RECORD_HEADER = 13
    _FRAGMENT_HEADER = 12

    def __init__(self, max_bytes: int = 1 << 16) -> None:
        self.max_bytes = max_bytes
        self.done = False
        self.identity: bytes | None = None
        self._seen = 0
        self._cke = bytearray()  # the ClientKeyExchange body from offset 0, in order
        self._cke_length: int | None = None

    def __repr__(self) -> str:
        return f"DTLSPSKIdentityPeek(done={self.done}, identity={self.identity!r})"

    def feed(self, datagram: bytes) -> bytes | None:
        """Add one received datagram; returns the identity the first time it is complete."""
        if self.done:
            return None
        self._seen += len(datagram)
        if self._seen > self.max_bytes:
            self.done = True
            return None
        view = memoryview(datagram)
        while len(view) >= self._RECORD_HEADER:
            ctype = view[0]
            epoch = int.from_bytes(view[3:5], "big")
            length = int.from_bytes(view[11:13], "big")
            payload = view[13:13 + length]
            if len(payload) < length:
                return None  # a truncated datagram: the engine drops it, so do we
            view = view[13 + length:]
            if epoch != 0:
                continue  # encrypted (or garbage with a large epoch): not ours to read
            if ctype != _HANDSHAKE:
                # ChangeCipherSpec (or an alert) before any identity: nothing to find any more
                self.done = True
                return None
            found = self._fragments(payload)
            if self.done:
                return found
        return None

    def _fragments(self, payload: memoryview) -> bytes | None:
        while len(payload) >= self._FRAGMENT_HEADER:
            kind = payload[0]
            length = int.from_bytes(payload[1:4], "big")
            offset = int.from_bytes(payload[6:9], "big")
            frag_len = int.from_bytes(payload[9:12], "big")
            fragment = payload[12:12 + frag_len]
            payload = payload[12 + frag_len:]
            if len(fragment) < frag_len or offset + frag_len > length:
                return None  # malformed: the engine refuses it
            if kind == _CERTIFICATE:
                self.done = True  # a certificate handshake: no identity
                return None
            if kind != _CLIENT_KEY_EXCHANGE:
                continue
            if self._cke_length not in (None, length):
                continue  # another message claiming to be the CKE: the first one counts
            self._cke_length = length
            if offset == len(self._cke):
                self._cke += fragment
            elif offset < len(self._cke) < offset + frag_len:  # an overlapping retransmission
                self._cke += fragment[len(self._cke) - offset:]
            complete, identity = _identity_of(self._cke)
            if complete or len(self._cke) >= length:
                self.done = True
                self.identity = identity
                return identity
        return None


# --------------------------------------------------------------------------- what both adapters do with an identity


def start_prefetch(prefetch: Callable[[bytes], Any], identity: bytes) -> Any | None:
    """``prefetch(identity)``: the awaitable to hold the client's bytes for, or None (nothing to
    wait for, or the call failed: then the PSK callback decides alone)."""
    try:
        return prefetch(identity)
    except Exception as exc:  # noqa: BLE001 - the PSK callback decides; a failed prefetch finds nothing
        log.info("psk_prefetch failed: %s: %s", type(exc).__name__, exc)
        return None


async def await_prefetch(waiting: Any) -> None:
    """Wait for a prefetch; its failure is logged, not raised (the PSK callback then finds no
    key and the handshake fails as for an unknown identity)."""
    try:
        await waiting
    except Exception as exc:  # noqa: BLE001 - see above
        log.info("psk_prefetch failed: %s: %s", type(exc).__name__, exc)
