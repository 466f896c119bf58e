"""The ledger: grants and the tamper-evident audit chain, all SQL in one place."""

from broker.ledger.chain import VerifyResult
from broker.ledger.models import ACTIVE, FINAL_STATUSES, REVOKE_PENDING, AuditEvent, Grant
from broker.ledger.store import Event, LedgerStore, make_engine

__all__ = [
    "ACTIVE",
    "FINAL_STATUSES",
    "REVOKE_PENDING",
    "AuditEvent",
    "Event",
    "Grant",
    "LedgerStore",
    "VerifyResult",
    "make_engine",
]
