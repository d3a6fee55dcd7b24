"""ESPrim processing errors, one class per row of TS-0004 table 7.6.2-1, plus the m2msec
replay refusals of the Receiver (TS-0003 8.4.1 freshness; not in table 7.6.2-1)."""

from __future__ import annotations

from m2msec.errors import M2MSecError
from m2msec.onem2m.rsc import ResponseStatusCode as RSC


class ESPrimError(M2MSecError):
    """Base class; ``rsc`` is the Response Status Code of table 7.6.2-1."""

    default_rsc = RSC.BAD_REQUEST


class ESPrimParseError(ESPrimError):
    """The ESPrim Object (or a rand object in it) could not be parsed: BAD_REQUEST."""

    default_rsc = RSC.BAD_REQUEST


class UnsupportedOption(ESPrimError):
    """Protocol/AEAD combination or key-generation algorithm not supported."""

    default_rsc = RSC.ESPRIM_UNSUPPORTED_OPTION


class UnknownKeyID(ESPrimError):
    """pairwiseESPrimKey identifier unknown or expired."""

    default_rsc = RSC.ESPRIM_UNKNOWN_KEY_ID


class UnknownOrigRandID(ESPrimError):
    """originatorESPrimRandObject unknown or expired."""

    default_rsc = RSC.ESPRIM_UNKNOWN_ORIG_RAND_ID


class UnknownRecvRandID(ESPrimError):
    """receiverESPrimRandObject unknown or expired."""

    default_rsc = RSC.ESPRIM_UNKNOWN_RECV_RAND_ID


class BadMAC(ESPrimError):
    """AES-GCM integrity verification of the ESPrim payload failed."""

    default_rsc = RSC.ESPRIM_BAD_MAC


class ImpersonationError(ESPrimError):
    """Inner request From differs from the identity bound to the pairwiseESPrimKey."""

    default_rsc = RSC.ESPRIM_IMPERSONATION_ERROR


class DecryptionError(ESPrimError):
    """Some other problem while decrypting: the inner primitive could not be obtained."""

    default_rsc = RSC.ESPRIM_DECRYPTION_ERROR


class EncryptionError(ESPrimError):
    """The inner response primitive could not be encrypted."""

    default_rsc = RSC.ESPRIM_ENCRYPTION_ERROR


# --- Replay detection at the Receiver (m2msec, beyond the 8.4.1 freshness bound).  Table
# 7.6.2-1 has no row for them; the codes are m2msec profile decisions.


class ReplayedObject(ESPrimError):
    """An authentic ESPrim request Object that this Receiver (or another instance on its
    store) has already accepted: CONFLICT (4105, HTTP 409).  A legitimate Originator never
    sends the same object twice (a retry is sealed again under a fresh IV), so the request
    is not executed again; the Originator's ``handle_error`` aborts (no automatic resend)."""

    default_rsc = RSC.CONFLICT


class ReplayCacheFull(ESPrimError):
    """The in-memory record of accepted objects is at its bound and none of its entries has
    expired: the authentic object is refused (nothing recorded, not executed) rather than a
    live entry forgotten.  INTERNAL_SERVER_ERROR (5000)."""

    default_rsc = RSC.INTERNAL_SERVER_ERROR


class RequestExpired(ESPrimError):
    """The authentic inner request carries an absolute Request Expiration Timestamp (``rqet``)
    that has passed when the Receiver opens it: REQUEST_TIMEOUT (4008, HTTP 504), as TS-0004
    7.3.2 and 7.3.3 require of a Receiver/Hosting CSE.  The check runs on the *inner* ``rqet``,
    which the Originator sealed and no CSE on the path can change, so a Transit CSE that
    withholds an object cannot have it executed after that time.  Nothing is recorded and the
    request is not executed.  A relative ``rqet`` cannot bound a delay (it counts from
    receipt) and is not checked here."""

    default_rsc = RSC.REQUEST_TIMEOUT


# --- Errors the Originator raises while building or opening (TS-0003 8.4.2 B.2, C.11a).
# They are never sent to a peer (a bad response is discarded), but carry the closest
# table 7.6.2-1 code so that logs and metrics classify them the same way.


class ESPrimNotSupported(ESPrimError):
    """B.2c.1: the Receiver's e2eSecInfo does not indicate ESPrim support (abort)."""

    default_rsc = RSC.ESPRIM_UNSUPPORTED_OPTION


class SessionMismatch(ESPrimError):
    """C.11a: a response names a kid/ori/rri that is not the session of the pending request,
    or answers another request (inner rqi differs), or its request was already answered."""

    default_rsc = RSC.BAD_REQUEST


class SessionExpired(ESPrimError):
    """C.11a: the session (one of its rand objects or the pairwise key) has expired."""

    default_rsc = RSC.ESPRIM_UNKNOWN_ORIG_RAND_ID


class SessionRetired(ESPrimError):
    """The session key reached its AES-GCM invocation bound: a new originatorESPrimRandObject is needed."""

    default_rsc = RSC.ESPRIM_ENCRYPTION_ERROR
