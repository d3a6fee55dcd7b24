"""ESCertKE Messages as TLS 1.2 flights (TS-0003 8.7.2.2 table 8.7.2.2-1).

Pure functions that look at the record layer only (RFC 5246 6.2.1, 7.4) to tell which
ESCertKE Message a byte string is and whether it holds whole records; the TLS engine
does the real processing.

=========  ============  ==================================================================
Message    Sender        TLS 1.2 flight (certificate suites of TS-0003 10.2.3, mutual auth)
=========  ============  ==================================================================
1          Initiating    ClientHello
2          Terminating   ServerHello, Certificate, ServerKeyExchange, CertificateRequest,
                         ServerHelloDone
3          Initiating    Certificate, ClientKeyExchange, CertificateVerify,
                         [ChangeCipherSpec], Finished
4          Terminating   [ChangeCipherSpec], Finished
=========  ============  ==================================================================
"""

from __future__ import annotations

import struct

__all__ = [
    "CHANGE_CIPHER_SPEC",
    "HANDSHAKE",
    "MAX_MESSAGE_SIZE",
    "classify",
    "first_kind",
    "client_hello_random",
    "split_records",
]

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
_HS_CLIENT_HELLO = 1
_HS_SERVER_HELLO = 2
_HS_CERTIFICATE = 11
_HS_CLIENT_KEY_EXCHANGE = 16
MAX_MESSAGE_SIZE = 64 * 1024  # a flight with a certificate chain is a few KiB


def split_records(data: bytes) -> list[tuple[int, bytes]] | None:
    """``[(content_type, fragment), ...]`` if ``data`` is whole TLS 1.x records, else None."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5:
            return None
        ctype, major, _minor, length = struct.unpack_from("!BBBH", data, pos)
        if major != 3 or ctype not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE) or length == 0 or length > 18432:
            return None
        if pos + 5 + length > len(data):
            return None
        out.append((ctype, data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out or None


def _first_record(data: bytes) -> tuple[int, int] | None:
    """``(content_type, fragment_length)`` of the first record if ``data`` is whole TLS 1.x
    records (the checks of :func:`split_records`, without copying any fragment), else None."""
    size = len(data)
    if size < 5:
        return None
    first = (data[0], (data[3] << 8) | data[4])
    pos = 0
    try:
        while pos < size:
            length = (data[pos + 3] << 8) | data[pos + 4]  # IndexError: truncated header
            if data[pos + 1] != 3 or data[pos] not in _RECORD_TYPES or not 0 < length <= 18432:
                return None
            pos += 5 + length
    except IndexError:
        return None
    return first if pos == size else None  # pos > size: the last fragment is truncated


_RECORD_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE))
_KIND_BY_HANDSHAKE_TYPE = {_HS_CLIENT_HELLO: 1, _HS_SERVER_HELLO: 2, _HS_CERTIFICATE: 3, _HS_CLIENT_KEY_EXCHANGE: 3}


def classify(data: bytes) -> int | None:
    """Which ESCertKE Message (1-4) ``data`` claims to be, from its first record; None if
    it is not whole TLS records starting like any of them."""
    if not data or len(data) > MAX_MESSAGE_SIZE:
        return None
    first = _first_record(data)
    if first is None:
        return None
    ctype = first[0]
    if ctype == CHANGE_CIPHER_SPEC:
        return 4
    if ctype != HANDSHAKE:
        return None
    return _KIND_BY_HANDSHAKE_TYPE.get(data[5])


def first_kind(data: bytes) -> int | None:
    """:func:`classify` from the first record header only, for flights our own TLS engine
    produced (their record framing needs no re-validation)."""
    if len(data) < 6 or data[1] != 3:
        return None
    if data[0] == CHANGE_CIPHER_SPEC:
        return 4
    if data[0] != HANDSHAKE:
        return None
    return _KIND_BY_HANDSHAKE_TYPE.get(data[5])


def client_hello_random(data: bytes) -> bytes | None:
    """The 32-octet ClientHello.random of a Message 1 (used to refuse replays)."""
    first = _first_record(data)
    if first is None or first[0] != HANDSHAKE:
        return None
    # record header(5), then msg_type(1) length(3) client_version(2) random(32)
    if first[1] < 38 or data[5] != _HS_CLIENT_HELLO:
        return None
    return bytes(data[11:43])
