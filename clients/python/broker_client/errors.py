"""The SDK's one exception tree: each broker problem `code` maps to exactly one class."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "BoundaryFrozen",
    "BrokerClientError",
    "BrokerError",
    "CompletionFailed",
    "DelegationTooDeep",
    "DpopReplayFull",
    "Forbidden",
    "IdempotencyKeyReused",
    "IdentityUnavailable",
    "ImpersonationRefused",
    "InternalError",
    "InvalidAuthorizationDetails",
    "InvalidDpop",
    "InvalidIdentity",
    "InvalidRequest",
    "InvalidSubjectToken",
    "InvalidTarget",
    "InvalidToken",
    "LedgerUnavailable",
    "MultiBoundary",
    "NotFound",
    "PolicyDenied",
    "RateLimited",
    "ReceiptInvalid",
    "ScopeExceedsSubject",
    "SubjectFrozen",
    "TaskNotFound",
    "TooManyActiveGrants",
    "TransportError",
    "TtlExceedsCap",
    "UnknownBoundary",
    "UnknownScope",
    "ValidationFailed",
]


class BrokerClientError(Exception):
    """Base of every error the SDK raises."""


class TransportError(BrokerClientError):
    """The broker could not be reached, or did not answer in time (after retries where allowed)."""


class IdentityUnavailable(BrokerClientError):
    """No identity token could be obtained from the configured or detected identity source."""


class CompletionFailed(BrokerClientError):
    """A task's grants could not be completed; they still expire at their TTL."""


class BrokerError(BrokerClientError):
    """The broker answered with an RFC 9457 problem; `code` is its stable code."""

    code = "internal_error"

    def __init__(
        self, status: int, title: str, detail: str | None = None, body: dict[str, Any] | None = None, code: str = ""
    ) -> None:
        self.code = code or self.code
        super().__init__(f"{status} {self.code}: {detail or title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body or {}


class InvalidIdentity(BrokerError):
    """The identity token was refused."""

    code = "invalid_identity"


class InvalidDpop(BrokerError):
    """A DPoP proof was required and missing, invalid, replayed or by another key."""

    code = "invalid_dpop"


class DpopReplayFull(InvalidDpop):
    """The broker's shared DPoP replay cache is full; proofs are refused until entries expire (503, retried)."""

    code = "dpop_replay_full"


class PolicyDenied(BrokerError):
    """Policy does not allow this request."""

    code = "policy_denied"


class Forbidden(PolicyDenied):
    """The caller may not act on this resource."""

    code = "forbidden"


class SubjectFrozen(PolicyDenied):
    """An operator froze this subject."""

    code = "subject_frozen"


class BoundaryFrozen(PolicyDenied):
    """An operator froze this boundary."""

    code = "boundary_frozen"


class InvalidRequest(BrokerError):
    """The request asks for something invalid."""

    code = "invalid_request"


class MultiBoundary(InvalidRequest):
    """The request spans more than one boundary."""

    code = "multi_boundary"


class UnknownBoundary(InvalidRequest):
    """The boundary is not configured."""

    code = "unknown_boundary"


class InvalidTarget(InvalidRequest):
    """The token request names no resource, or one the broker does not serve (RFC 8707)."""

    code = "invalid_target"


class InvalidAuthorizationDetails(InvalidRequest):
    """The `authorization_details` (e.g. a tool-call binding) are malformed or not served (RFC 9396)."""

    code = "invalid_authorization_details"


class InvalidSubjectToken(InvalidRequest):
    """The `subject_token` of a delegation or transaction token is not an active broker token the caller holds."""

    code = "invalid_subject_token"


class ImpersonationRefused(InvalidRequest):
    """A broker token was presented to act as its subject without an `actor_token`."""

    code = "impersonation_refused"


class DelegationTooDeep(InvalidRequest):
    """The delegation would carry more `act` hops than the broker's `max_delegation_depth`."""

    code = "delegation_depth_exceeded"


class ScopeExceedsSubject(InvalidRequest):
    """A transaction token's scope is wider than its subject token's, or that scope is unknown."""

    code = "scope_exceeds_subject"


class UnknownScope(InvalidRequest):
    """A scope is not in the boundary's list."""

    code = "unknown_scope"


class TtlExceedsCap(InvalidRequest):
    """The requested TTL is above the policy or boundary cap."""

    code = "ttl_exceeds_cap"


class ValidationFailed(InvalidRequest):
    """The body or parameters did not validate (422)."""

    code = "validation_error"


class IdempotencyKeyReused(InvalidRequest):
    """The grant request's Idempotency-Key is bound to a live grant of another request."""

    code = "idempotency_key_reused"


class NotFound(BrokerError):
    """The grant or task does not exist or is not the caller's."""

    code = "not_found"


class TaskNotFound(NotFound):
    """The broker has no grant of this task for the caller: a task block has nothing to give back."""

    code = "task_not_found"


class RateLimited(BrokerError):
    """An abuse limit refused the grant for now (429); `retry_after` says how many seconds to wait."""

    code = "rate_limited"

    @property
    def retry_after(self) -> int | None:
        value = self.body.get("retry_after")
        return value if isinstance(value, int) else None


class TooManyActiveGrants(RateLimited):
    """The subject holds as many active grants at the boundary as allowed; complete one or wait."""

    code = "too_many_active_grants"


class BackendUnavailable(BrokerError):
    """The credential backend (Vault/OpenBao) failed."""

    code = "backend_unavailable"


class LedgerUnavailable(BrokerError):
    """The ledger could not be written; nothing was issued."""

    code = "ledger_unavailable"


class InternalError(BrokerError):
    """The broker failed unexpectedly."""

    code = "internal_error"


def _codes(cls: type[BrokerError]) -> dict[str, type[BrokerError]]:
    found = {cls.code: cls} if cls is not BrokerError else {}
    for sub in cls.__subclasses__():
        found.update(_codes(sub))
    return found


BY_CODE: dict[str, type[BrokerError]] = _codes(BrokerError)


def from_problem(status: int, body: Any) -> BrokerError:
    """The exception for a problem+json answer; an unknown code keeps its code on a plain BrokerError."""
    body = body if isinstance(body, dict) else {}
    code = str(body.get("code") or ("internal_error" if status >= 500 else "invalid_request"))
    cls = BY_CODE.get(code, BrokerError)
    return cls(status, str(body.get("title", "")), body.get("detail"), body, code=code)


class ReceiptInvalid(BrokerClientError):
    """A grant receipt does not verify offline against the log's key (or lacks required cosignatures)."""


class InvalidToken(BrokerClientError):
    """`verify`: a broker token (or its DPoP proof) failed an offline or introspection check."""
