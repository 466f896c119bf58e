"""The ledger: grants and the tamper-evident audit chain (its SQL here; the transparency log, signals and
keys keep theirs beside their code, in the same database and transactions)."""

from broker.ledger.chain import VerifyResult, verify_export
from broker.ledger.issuing import Committed, IdemClaim, Refused, Replayed
from broker.ledger.limits import Load
from broker.ledger.models import (
    ACTIVE,
    FINAL_STATUSES,
    REVOKE_PENDING,
    AuditEvent,
    DenialWindow,
    Event,
    Freeze,
    Grant,
    Revocation,
)
from broker.ledger.queries import Filter, Selector
from broker.ledger.store import LedgerStore, event_dict, make_engine

__all__ = [
    "ACTIVE",
    "FINAL_STATUSES",
    "REVOKE_PENDING",
    "AuditEvent",
    "Committed",
    "DenialWindow",
    "Event",
    "Filter",
    "Freeze",
    "Grant",
    "IdemClaim",
    "LedgerStore",
    "Load",
    "Refused",
    "Replayed",
    "Revocation",
    "Selector",
    "VerifyResult",
    "event_dict",
    "make_engine",
    "verify_export",
]
