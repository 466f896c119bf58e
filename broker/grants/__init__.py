"""The broker's use cases."""

from broker.grants.service import GrantRequest, GrantService, Issued, Prepared, RevokeOutcome

__all__ = ["GrantRequest", "GrantService", "Issued", "Prepared", "RevokeOutcome"]
