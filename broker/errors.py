"""The broker's one exception tree. No HTTP here: `broker/api/errors.py` maps `code` to status."""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    code = "internal_error"
    public_message = "The broker could not complete the request."

    def __init__(self, detail: str = "", **context: object) -> None:
        super().__init__(detail or self.public_message)
        self.detail = detail or self.public_message
        self.context = context


class ConfigError(BrokerError):
    """Configuration or policy file is invalid; the message names file, field and problem."""

    code = "config_error"


class InvalidIdentity(BrokerError):
    """The identity token was missing, malformed, unsigned, expired or not from a trusted issuer."""

    code = "invalid_identity"
    public_message = "The identity token could not be verified."


class PolicyDenied(BrokerError):
    """Policy does not allow this subject this boundary, scope or role."""

    code = "policy_denied"
    public_message = "Policy does not allow this request."


class Forbidden(PolicyDenied):
    """The caller is authenticated but does not own or may not act on the resource."""

    code = "forbidden"
    public_message = "The caller may not act on this resource."


class SubjectFrozen(PolicyDenied):
    """An operator froze this subject; no new grant until lifted."""

    code = "subject_frozen"
    public_message = "This subject is frozen by an operator."


class BoundaryFrozen(PolicyDenied):
    """An operator froze this boundary; no new grant until lifted."""

    code = "boundary_frozen"
    public_message = "This boundary is frozen by an operator."


class BadRequest(BrokerError):
    """The request is well-formed JSON but asks for something invalid."""

    code = "invalid_request"
    public_message = "The request is invalid."


class MultiBoundary(BadRequest):
    """The request spans more than one boundary."""

    code = "multi_boundary"
    public_message = "A grant covers exactly one boundary; this request spans several."


class UnknownBoundary(BadRequest):
    """The boundary is not configured."""

    code = "unknown_boundary"
    public_message = "The boundary is not known."


class InvalidTarget(BadRequest):
    """The token request names no resource, or one the broker does not serve (RFC 8707 §2)."""

    code = "invalid_target"
    public_message = "The requested resource is missing or not served by this broker."


class InvalidAuthorizationDetails(BadRequest):
    """`authorization_details` is not one well-formed binding this broker serves (RFC 9396 §5)."""

    code = "invalid_authorization_details"
    public_message = "The authorization_details are invalid."


class InvalidSubjectToken(BadRequest):
    """The `subject_token` is not an active broker token the caller may exchange (RFC 6749 §5.2 `invalid_grant`)."""

    code = "invalid_subject_token"
    public_message = "The subject token is not an active token this caller may exchange."


class ImpersonationRefused(BadRequest):
    """A token for another party's subject was asked for without an `actor_token` (RFC 8693 §1.1)."""

    code = "impersonation_refused"
    public_message = "Impersonation is refused: name the acting party with an actor_token."


class DelegationTooDeep(BadRequest):
    """The delegated token would carry more `act` hops than `max_delegation_depth`."""

    code = "delegation_depth_exceeded"
    public_message = "The delegation chain would exceed the configured depth."


class ScopeExceedsSubject(BadRequest):
    """A transaction token's scope would be wider than its subject token's, or that scope is unknown."""

    code = "scope_exceeds_subject"
    public_message = "The requested scope is not within the subject token's scope."


class UnknownScope(BadRequest):
    """A scope is not in the boundary's closed list."""

    code = "unknown_scope"
    public_message = "A requested scope does not exist in this boundary."


class TtlExceedsCap(BadRequest):
    """The requested TTL is above the policy or boundary cap."""

    code = "ttl_exceeds_cap"
    public_message = "The requested TTL exceeds the allowed cap."


class NotFound(BrokerError):
    """The grant, task or revocation does not exist (or is not visible to the caller)."""

    code = "not_found"
    public_message = "Not found."


class TaskNotFound(NotFound):
    """The caller has no grant with this task id (the stable code clients treat as "nothing to give back")."""

    code = "task_not_found"
    public_message = "No grant of this task was found."


class InvalidDpop(BrokerError):
    """A DPoP proof is required and missing, or it is invalid, replayed or for another key."""

    code = "invalid_dpop"
    public_message = "A valid DPoP proof is required."


class DpopReplayFull(InvalidDpop):
    """The shared DPoP replay cache is at its cap: proofs are refused until entries expire (fail closed)."""

    code = "dpop_replay_full"
    public_message = "DPoP proofs cannot be checked for replay right now; retry shortly."


class BackendUnavailable(BrokerError):
    """The downstream credential backend (Vault/OpenBao) failed or could not be reached."""

    code = "backend_unavailable"
    public_message = "The credential backend is unavailable."


class LedgerUnavailable(BrokerError):
    """The ledger could not be written; nothing is issued (fail closed)."""

    code = "ledger_unavailable"
    public_message = "The ledger is unavailable; nothing was issued."


class IdempotencyKeyReused(BrokerError):
    """The `Idempotency-Key` is bound to a live grant of a different request."""

    code = "idempotency_key_reused"
    public_message = "This Idempotency-Key was used for a different request."


class InternalError(BrokerError):
    """An unexpected failure inside a use case, recorded as `denied` before it is answered."""

    code = "internal_error"


class LimitExceeded(BrokerError):
    """An abuse limit refuses this request for now; `retry_after` (seconds) says when to try again."""

    code = "rate_limited"
    public_message = "Too many requests; retry later."

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = max(1, retry_after)


class RateLimited(LimitExceeded):
    """This subject was issued as many grants at this boundary as the rate limit allows in its window."""

    code = "rate_limited"


class TooManyActiveGrants(LimitExceeded):
    """This subject holds as many active grants at this boundary as the limit allows."""

    code = "too_many_active_grants"
    public_message = "Too many active grants; complete some or retry later."
