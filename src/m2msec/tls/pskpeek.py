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
"""

from __future__ import annotations

__all__ = ["PSKIdentityPeek"]

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
                if len(body) < 2:
                    return None
                n = int.from_bytes(body[:2], "big")
                if 2 + n > len(body):
                    return None
                self.identity = body[2:2 + n]
                return self.identity
        return None
