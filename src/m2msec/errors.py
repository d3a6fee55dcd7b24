"""Exception hierarchy shared by every m2msec framework.

Every error a peer can provoke carries the oneM2M Response Status Code (RSC) to
answer with, in the spirit of h11's ``error_status_hint``.  Messages name the
failure precisely but never contain key material.
"""

from __future__ import annotations

from m2msec.onem2m.rsc import ResponseStatusCode


class M2MSecError(Exception):
    """Base class. ``rsc`` is the oneM2M Response Status Code for this failure."""

    default_rsc: ResponseStatusCode = ResponseStatusCode.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, rsc: ResponseStatusCode | None = None) -> None:
        super().__init__(message)
        self.rsc: ResponseStatusCode = rsc if rsc is not None else self.default_rsc

    def __str__(self) -> str:  # "[4000 BAD_REQUEST] message"
        return f"[{int(self.rsc)} {self.rsc.name}] {self.args[0]}"


class ParseError(M2MSecError, ValueError):
    """Input that is not a well-formed oneM2M/m2msec data item (BAD_REQUEST, 4000)."""

    default_rsc = ResponseStatusCode.BAD_REQUEST


class IdentifierError(ParseError):
    """A malformed identifier (e.g. a ``relative@fqdn`` key identifier)."""


class UnknownKeyError(M2MSecError, LookupError):
    """A key identifier that is not known (NOT_FOUND unless the framework says otherwise)."""

    default_rsc = ResponseStatusCode.NOT_FOUND


class StoreError(M2MSecError):
    """The durable store failed or holds data that does not decrypt/authenticate."""

    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR
