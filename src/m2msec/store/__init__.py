"""Durable state for m2msec services: SQLite (default) or PostgreSQL behind one interface.

Keeps what TS-0003 entities must remember and share between instances (DESIGN.md
section 3): credentials such as Ke/Km/Kpsa and session keys (TS-0003 clauses 8.3,
8.4, 8.8; encrypted at rest under a key-encryption key), registrations and rand
objects as versioned JSON records, single-use tokens (TS-0003 8.3.2.1
Enrolment-Token) and an append-only audit trail.

    from m2msec.store import open_store, KeyEncryptionKey
    store = open_store("sqlite:///var/lib/m2msec/mef.db", KeyEncryptionKey.from_env())
    store.put_credential("mef.ke", key_id, ke, metadata={"suid": 21}, if_absent=True)
    with store.transaction() as tx:
        tok = tx.take_record("mef.token", token_id)
        tx.append_audit("mef", "enrol", key_id, "ok")
    # many concurrent audit-only appends, one commit per batch (group commit):
    AuditBatcher(store).append("maf", "key_retrieval", client_id, "ok", {"relativeKeyID": rel})
    # an operator (cron) makes changes to the trail evident to whoever holds the KEK:
    store.seal_audit(); assert store.verify_audit().intact
"""

from __future__ import annotations

from m2msec.store.audit import AuditBatcher, AuditCommitError
from m2msec.store.audit_seal import (
    AuditCheckpoint,
    AuditFinding,
    AuditSealError,
    AuditSealKekMismatch,
    AuditSealResult,
    AuditTampered,
    AuditVerification,
)
from m2msec.store.errors import (
    DecryptionFailure,
    DuplicateError,
    InvalidValue,
    KekMismatch,
    NotFound,
    StoreError,
    TransactionConflict,
    VersionConflict,
)
from m2msec.store.kek import KekFileModeError, KeyEncryptionKey
from m2msec.store.notify import Listener
from m2msec.store.store import (
    UNCHANGED,
    AuditEntry,
    Clock,
    Credential,
    Record,
    Store,
    Transaction,
    open_store,
)

__all__ = [
    "UNCHANGED",
    "AuditBatcher",
    "AuditCheckpoint",
    "AuditCommitError",
    "AuditEntry",
    "AuditFinding",
    "AuditSealError",
    "AuditSealKekMismatch",
    "AuditSealResult",
    "AuditTampered",
    "AuditVerification",
    "Clock",
    "Credential",
    "DecryptionFailure",
    "DuplicateError",
    "InvalidValue",
    "KekFileModeError",
    "KekMismatch",
    "KeyEncryptionKey",
    "Listener",
    "NotFound",
    "Record",
    "Store",
    "StoreError",
    "Transaction",
    "TransactionConflict",
    "VersionConflict",
    "open_store",
]
