"""Errors raised by :mod:`m2msec.store`.

All of them are :class:`m2msec.errors.StoreError` subclasses.  They carry the
oneM2M Response Status Code (TS-0004 clause 6.6) a service should answer with
when the failure reaches a peer; messages name the row (namespace/identifier)
but never contain secret or key bytes.
"""

from __future__ import annotations

from m2msec.errors import StoreError, UnknownKeyError
from m2msec.onem2m.rsc import ResponseStatusCode

__all__ = [
    "StoreError",
    "DuplicateError",
    "VersionConflict",
    "TransactionConflict",
    "NotFound",
    "DecryptionFailure",
    "KekMismatch",
    "InvalidValue",
]


class DuplicateError(StoreError):
    """``put(..., if_absent=True)`` found a live item with the same identifier (CONFLICT 4105)."""

    default_rsc = ResponseStatusCode.CONFLICT


class VersionConflict(StoreError):
    """Compare-and-set failed: the record changed since it was read (CONFLICT 4105)."""

    default_rsc = ResponseStatusCode.CONFLICT


class TransactionConflict(StoreError):
    """The database aborted the transaction because of a concurrent one (PostgreSQL: deadlock
    detected, SQLSTATE 40P01, or serialization failure, 40001): nothing of it was written and
    the same request may succeed when retried (CONFLICT 4105, like :class:`VersionConflict`).

    Not a :class:`VersionConflict`: the transaction is aborted, so a compare-and-set loop must
    not re-read and try again inside it - the error ends the transaction."""

    default_rsc = ResponseStatusCode.CONFLICT


class NotFound(StoreError, UnknownKeyError):
    """No live (present and unexpired) item with this identifier (NOT_FOUND 4004)."""

    default_rsc = ResponseStatusCode.NOT_FOUND


class DecryptionFailure(StoreError):
    """A stored secret does not authenticate: tampered/swapped row or wrong KEK (5000)."""

    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR


class KekMismatch(DecryptionFailure):
    """A stored secret was sealed under another key-encryption key (KEK id differs)."""


class InvalidValue(StoreError, TypeError):
    """A value that the store refuses to persist (e.g. bytes in audit details)."""

    default_rsc = ResponseStatusCode.INTERNAL_SERVER_ERROR
