"""Shared Signals (SSF 1.0) transmitter: CAEP SETs (RFC 8417) for ended grants, delivered by push or poll."""

from broker.signals.delivery import Delivery
from broker.signals.outbox import SignalOutbox
from broker.signals.sets import SET_TYPE, sign_set

__all__ = ["SET_TYPE", "Delivery", "SignalOutbox", "sign_set"]
