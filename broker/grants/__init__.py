"""The broker's use cases."""

from broker.grants.service import GrantRequest, GrantService, Issued, RevokeOutcome

__all__ = ["GrantRequest", "GrantService", "Issued", "RevokeOutcome"]
