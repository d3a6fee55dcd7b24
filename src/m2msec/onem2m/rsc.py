"""Response Status Codes (TS-0004 clause 6.6, table 6.6.3.x) used by m2msec.

Only the codes a security framework or the HTTP binding needs are listed; the
values and names are exactly those of TS-0004 V3.32.0.
"""

from __future__ import annotations

from enum import IntEnum


class ResponseStatusCode(IntEnum):
    # 2xxx success
    OK = 2000
    CREATED = 2001
    DELETED = 2002
    UPDATED = 2004
    # 4xxx originator errors
    BAD_REQUEST = 4000
    RELEASE_VERSION_NOT_SUPPORTED = 4001
    NOT_FOUND = 4004
    OPERATION_NOT_ALLOWED = 4005
    REQUEST_TIMEOUT = 4008
    UNSUPPORTED_MEDIA_TYPE = 4015
    SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE = 4101
    CONTENTS_UNACCEPTABLE = 4102
    ORIGINATOR_HAS_NO_PRIVILEGE = 4103
    CONFLICT = 4105
    ORIGINATOR_NOT_AUTHENTICATED = 4106
    SECURITY_ASSOCIATION_REQUIRED = 4107
    ESPRIM_UNSUPPORTED_OPTION = 4111
    ESPRIM_UNKNOWN_KEY_ID = 4112
    ESPRIM_UNKNOWN_ORIG_RAND_ID = 4113
    ESPRIM_UNKNOWN_RECV_RAND_ID = 4114
    ESPRIM_BAD_MAC = 4115
    ESPRIM_IMPERSONATION_ERROR = 4116
    ORIGINATOR_HAS_ALREADY_REGISTERED = 4117
    # 5xxx receiver errors
    INTERNAL_SERVER_ERROR = 5000
    NOT_IMPLEMENTED = 5001
    TARGET_NOT_REACHABLE = 5103
    RECEIVER_HAS_NO_PRIVILEGE = 5105
    ALREADY_EXISTS = 5106
    REMOTE_ENTITY_NOT_REACHABLE = 5107
    TARGET_NOT_SUBSCRIBABLE = 5203
    NOT_ACCEPTABLE = 5207
    ESPRIM_DECRYPTION_ERROR = 5210
    ESPRIM_ENCRYPTION_ERROR = 5211

    @property
    def is_success(self) -> bool:
        return 2000 <= self.value < 3000

    @property
    def http_status(self) -> int:
        """HTTP status code for this RSC per TS-0009 clause 6.3.2 (table 6.3.2-1)."""
        return _HTTP_STATUS.get(self, 500)


# TS-0009 V3.9.1 table 6.3.2-1 (mapping of Response Status Code to HTTP status code).
_HTTP_STATUS: dict[ResponseStatusCode, int] = {
    ResponseStatusCode.OK: 200,
    ResponseStatusCode.CREATED: 201,
    ResponseStatusCode.DELETED: 200,
    ResponseStatusCode.UPDATED: 200,
    ResponseStatusCode.BAD_REQUEST: 400,
    ResponseStatusCode.RELEASE_VERSION_NOT_SUPPORTED: 501,
    ResponseStatusCode.NOT_FOUND: 404,
    ResponseStatusCode.OPERATION_NOT_ALLOWED: 405,
    ResponseStatusCode.REQUEST_TIMEOUT: 504,
    ResponseStatusCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ResponseStatusCode.SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE: 403,
    ResponseStatusCode.CONTENTS_UNACCEPTABLE: 400,
    ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE: 403,
    ResponseStatusCode.CONFLICT: 409,
    ResponseStatusCode.ORIGINATOR_NOT_AUTHENTICATED: 403,
    ResponseStatusCode.SECURITY_ASSOCIATION_REQUIRED: 403,
    ResponseStatusCode.ESPRIM_UNSUPPORTED_OPTION: 403,
    ResponseStatusCode.ESPRIM_UNKNOWN_KEY_ID: 403,
    ResponseStatusCode.ESPRIM_UNKNOWN_ORIG_RAND_ID: 403,
    ResponseStatusCode.ESPRIM_UNKNOWN_RECV_RAND_ID: 403,
    ResponseStatusCode.ESPRIM_BAD_MAC: 403,
    ResponseStatusCode.ESPRIM_IMPERSONATION_ERROR: 403,
    ResponseStatusCode.ORIGINATOR_HAS_ALREADY_REGISTERED: 403,
    ResponseStatusCode.INTERNAL_SERVER_ERROR: 500,
    ResponseStatusCode.NOT_IMPLEMENTED: 501,
    ResponseStatusCode.TARGET_NOT_REACHABLE: 404,
    ResponseStatusCode.RECEIVER_HAS_NO_PRIVILEGE: 403,
    ResponseStatusCode.ALREADY_EXISTS: 409,
    ResponseStatusCode.REMOTE_ENTITY_NOT_REACHABLE: 404,
    ResponseStatusCode.TARGET_NOT_SUBSCRIBABLE: 403,
    ResponseStatusCode.NOT_ACCEPTABLE: 406,
    ResponseStatusCode.ESPRIM_DECRYPTION_ERROR: 500,
    ResponseStatusCode.ESPRIM_ENCRYPTION_ERROR: 500,
}
