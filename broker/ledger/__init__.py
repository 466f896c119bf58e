"""The ledger: grants and the tamper-evident audit chain, all SQL in one place."""

from broker.ledger.chain import VerifyResult, verify_export
from broker.ledger.limits import Load
from broker.ledger.models import (
    ACTIVE,
    FINAL_STATUSES,
    REVOKE_PENDING,
    AuditEvent,
    DenialWindow,
    Freeze,
    Grant,
    Revocation,
)
from broker.ledger.queries import Filter, Selector
from broker.ledger.store import Event, LedgerStore, make_engine
from broker.ledger.store import _as_dict as event_dict

__all__ = [
    "ACTIVE",
    "FINAL_STATUSES",
    "REVOKE_PENDING",
    "AuditEvent",
    "DenialWindow",
    "Event",
    "Filter",
    "Freeze",
    "Grant",
    "LedgerStore",
    "Load",
    "Revocation",
    "Selector",
    "VerifyResult",
    "event_dict",
    "make_engine",
    "verify_export",
]
