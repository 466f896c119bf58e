"""The use cases: authenticate, issue, complete (revocation: broker/grants/outbox.py).

Every decision is chained into the ledger before it is answered (promise 4).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from broker import context
from broker.backends import Backend, Minted, MintRequest
from broker.config import BoundaryConfig, Settings
from broker.errors import (
    BadRequest,
    BoundaryFrozen,
    BrokerError,
    IdempotencyKeyReused,
    InvalidDpop,
    InvalidIdentity,
    InvalidSubjectToken,
    LedgerUnavailable,
    MultiBoundary,
    NotFound,
    PolicyDenied,
    SubjectFrozen,
    TaskNotFound,
    TtlExceedsCap,
    UnknownBoundary,
    UnknownScope,
)
from broker.fingerprint import fingerprint
from broker.grants.limits import EXCEEDED, IssuanceLimits
from broker.grants.outbox import Outbox, RevokeOutcome
from broker.grants.recording import recorded
from broker.identity import Attestors, Identity
from broker.identity.dpop import DpopVerifier
from broker.ids import time_ordered
from broker.ledger import ACTIVE, REVOKE_PENDING, Committed, Event, Grant, IdemClaim, LedgerStore, Refused, Replayed
from broker.ledger.issuing import Ended, EndGrant
from broker.ledger.models import GRANT_DEFAULTS
from broker.policy import Decision, PolicySource
from broker.signing import KeyStore

log = logging.getLogger(__name__)
recorded_use_case = functools.partial(recorded, record=lambda service: service.record_refusal)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# The one task grammar, on every endpoint that takes a task (body, path, query, form): printable
# ASCII only, no whitespace, control characters, brackets, quotes or `%`, so a task id is safe in
# a URL path, a log line and a terminal; `/` is allowed (`deploy/prod`) and routes accept it.
TASK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
BAD_TASK = "task must be 1-128 of A-Z a-z 0-9 . _ : / @ -, starting with a letter or digit"


@dataclass(frozen=True)
class GrantRequest:
    """What a workload asks for: one task, one boundary, some scopes, a TTL (seconds, "max" or default)."""

    task: str
    boundary: str | list[str]
    scopes: tuple[str, ...]
    ttl: int | Literal["max"] | None = None
    cnf_jkt: str | None = None
    idempotency_key: str | None = None
    cnf_x5t: str | None = None  # RFC 8705: the client certificate the caller was proven by
    authorization_details: tuple[dict[str, str], ...] = ()  # RFC 9396: an MCP call token's tool binding
    ttl_ceiling: int | None = None  # a kind's own cap below policy and boundary (call tokens: 60 s)
    derived: Derived | None = None  # a token exchanged from another grant's (broker/grants/delegation.py)


@dataclass(frozen=True)
class Derived:
    """What a grant derived from a parent grant carries: the parent, whom it is for, the other parties.

    `authority` is the parent's decision when the derived grant takes its rights from the parent alone
    (a transaction token); None means policy decides for the grant's own subject as for any grant.
    """

    parent_grant_id: str
    principal: str  # the `sub` of the minted token
    guard_subjects: tuple[str, ...]  # a freeze of any of these refuses the grant (orchestrator, actors)
    act: dict[str, Any] | None = None
    txn: dict[str, Any] | None = None
    backend: str | None = None  # minted by this backend instead of the boundary's (`txn_token`)
    authority: Decision | None = None


@dataclass(frozen=True)
class Issued:
    """A committed grant and the credential to hand out once."""

    grant: Grant
    credential: dict[str, Any]
    log_index: int | None = None  # the `issued` event's leaf in the transparency log


@dataclass(frozen=True)
class Prepared:
    """A minted credential and its grant row, waiting for the ledger to take them."""

    identity: Identity
    request: GrantRequest
    grant: Grant
    row: dict[str, Any]  # the grant's column values, taken off the event loop (the writer inserts them)
    minted: Minted
    event: Event
    claim: IdemClaim | None


class GrantService:
    """Ties identity, policy, backends and the ledger into the broker's use cases."""

    def __init__(
        self,
        *,
        settings: Settings,
        attestors: Attestors,
        policy: PolicySource,
        backends: Mapping[str, Backend],
        ledger: LedgerStore,
        keys: KeyStore,
        clock: Callable[[], float] = time.time,
        dpop: DpopVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.attestors = attestors
        self.policy = policy
        self.backends = backends
        self.ledger = ledger
        self.keys = keys
        self.clock = clock
        self.boundaries = {b.name: b for b in settings.boundaries}
        self.dpop = dpop or DpopVerifier(clock=clock)
        self.limits = IssuanceLimits(settings, ledger)
        self.outbox = Outbox(settings, backends, ledger, clock)
        self.withdrawal: Any = None  # broker/grants/withdrawal.py, wired by the app: grants a reload took away

    # --- identity --------------------------------------------------------------------------

    def authenticate(self, token: str | None, *, action: str, tls: Any = None) -> Identity:
        """Verify the identity token (else the client certificate, `tls`); a failure is recorded, then raised."""
        try:
            if not token and tls is not None:
                token = tls.leaf_pem  # what the refusal is fingerprinted by; never stored
                return self.attestors.verify_certificate(tls)
            if not token:
                raise InvalidIdentity("no bearer identity token")
            identity = self.attestors.verify(token)
            context.note_subject(fingerprint(identity.subject, short=True))  # for the access log line
            return identity
        except InvalidIdentity as exc:
            # nothing of an unverified token is stored (its issuer text is the attacker's): code + fingerprint
            self.limits.record_unverified(exc.code, action, token, self.clock(), self.provenance())
            raise

    def readiness_checks(self) -> dict[str, Callable[[], object]]:
        """What `/readyz` checks (broker/grants/readiness.py runs them); backends with a remote system add theirs."""
        checks: dict[str, Callable[[], object]] = {"ledger": self.ledger.probe_write, "keys": lambda: self.keys.active}
        for backend in {id(b): b for b in self.backends.values()}.values():
            ping = getattr(backend, "ping", None)
            if ping:
                checks[backend.kind] = ping
        return checks

    def roles(self, identity: Identity) -> frozenset[str]:
        return self.policy.current.roles(attestor=identity.attestor, subject=identity.subject, claims=identity.claims)

    def proof_key(self, proof: str, *, identity: Identity | None, action: str, **request: Any) -> str:
        """The thumbprint of a valid DPoP proof (see DpopVerifier.verify); an invalid one is recorded, refused."""
        try:
            return self.dpop.verify(proof, **request).jkt
        except InvalidDpop as exc:
            self.refuse_dpop(identity, action, exc)
            raise

    def refuse_dpop(self, identity: Identity | None, action: str, exc: InvalidDpop, grant_id: str | None = None) -> None:
        """Record a DPoP refusal as `denied` before it is answered."""
        subject = identity.subject if identity else None
        detail = {"code": exc.code, "action": action, "reason": exc.detail[:200], **self.provenance()}
        self.ledger.record(Event(kind="denied", subject=subject, actor=subject, grant_id=grant_id, detail=detail))

    def check_holder(self, identity: Identity, grant: Grant, proof_jkt: str | None, action: str) -> None:
        """A DPoP-bound grant is acted on only with a proof by the key it is bound to; a certificate-bound
        one (RFC 8705) only by a caller proven by that same certificate."""
        if grant.cnf_x5t and grant.cnf_x5t != identity.x5t:
            self.record_refusal(identity, action, code=InvalidIdentity.code, grant_id=grant.id)
            raise InvalidIdentity("not the client certificate the grant is bound to")
        if grant.cnf_jkt and grant.cnf_jkt != proof_jkt:
            exc = InvalidDpop("no proof by the bound key" if proof_jkt is None else "proof by another key")
            self.refuse_dpop(identity, action, exc, grant_id=grant.id)
            raise exc

    # --- issue -----------------------------------------------------------------------------

    def issue(self, identity: Identity, request: GrantRequest) -> Issued:
        """Check, decide, mint, record, answer: in that order, failing closed."""
        prepared = self.prepare(identity, request)
        if isinstance(prepared, Issued):
            return prepared
        return self.conclude(prepared, self.commit(prepared))

    @recorded_use_case("issue")
    def prepare(self, identity: Identity, request: GrantRequest) -> Prepared | Issued:
        """Admit and mint (an earlier live grant of the same Idempotency-Key is answered instead)."""
        boundary, scopes, ttl, decision = self._admit(identity, request)
        claim = self._idem_claim(identity, request, boundary)
        replay = self._replay_before_mint(identity, request, claim)
        if replay is not None:
            return replay
        now = self.clock()
        mint = MintRequest(
            grant_id="g_" + time_ordered(now, 12),
            subject=identity.subject,
            task=request.task,
            boundary=boundary,
            scopes=scopes,
            ttl=ttl,
            issued_at=now,
            expires_at=now + ttl,
            cnf_jkt=request.cnf_jkt,
            cnf_x5t=request.cnf_x5t,
            authorization_details=request.authorization_details,
            principal=request.derived.principal if request.derived else None,
            act=request.derived.act if request.derived else None,
            txn=request.derived.txn if request.derived else None,
        )
        minted = self._mint(identity, request, mint, decision)
        if "crash_after_mint" in self.settings.fault_injection:  # env=test only: a crash before the ledger commit
            os.kill(os.getpid(), signal.SIGKILL)
        row = self._grant_row(identity, mint, minted, decision, request.derived)
        grant = Grant.of_row(row)  # the instance holds its own copy: the writer's batch may change `row`
        event = _issued_event(grant, minted, identity, request.derived)
        return Prepared(identity, request, grant, row, minted, event, claim)

    def commit(self, prepared: Prepared) -> Future:
        """Hand the grant and its `issued` event to the ledger writer; the future resolves once durable."""
        if "fail_ledger_after_mint" in self.settings.fault_injection:
            failed: Future = Future()
            failed.set_exception(LedgerUnavailable("fault injection: ledger write fails after mint"))
            return failed
        derived = prepared.request.derived
        guard = derived.guard_subjects if derived else ()
        grant = prepared.grant
        return self.ledger.submit_issued(prepared.row, prepared.event, idem=prepared.claim, guard_subjects=guard,
                                         limits=self.limits.at(grant.boundary),
                                         only_here=grant.backend in self.outbox.local_backends)  # fmt: skip

    def conclude(self, prepared: Prepared, committed: Future) -> Issued:
        """Answer from the commit's outcome; fail closed: an unrecorded or refused credential is revoked."""
        return self._conclude(prepared.identity, prepared, committed)

    @recorded_use_case("issue")
    def _conclude(self, identity: Identity, prepared: Prepared, committed: Future) -> Issued:
        grant = prepared.grant
        try:
            outcome = committed.result()
        except LedgerUnavailable:
            self._revoke_unrecorded(grant)
            raise
        if "crash_after_commit" in self.settings.fault_injection:  # env=test only: the answer is lost
            os.kill(os.getpid(), signal.SIGKILL)
        if isinstance(outcome, Replayed):
            return self._replay(outcome.grant_id)
        if isinstance(outcome, Refused):
            if outcome.kept:
                self._revoke_refused(grant.id)
            raise _refusal(outcome)
        if outcome is not None and outcome.superseded:
            self._revoke_refused(outcome.superseded)
        borrowed = prepared.request.derived is not None and prepared.request.derived.authority is not None
        if self.withdrawal is not None and grant.policy_revision != self.policy.current.digest and not borrowed:
            try:  # the policy was reloaded while this was being issued: the new one decides
                self.withdrawal.issued_meanwhile(identity, grant)
            except PolicyDenied as exc:
                self.record_denial(identity, prepared.request, exc, decision=self.policy.current.decide(
                    attestor=identity.attestor, subject=identity.subject, claims=identity.claims,
                    boundary=grant.boundary, scopes=frozenset(grant.scope_list)))  # fmt: skip
                raise
        credential = {**prepared.minted.credential, "expires_at": grant.expires_at}
        return Issued(grant=grant, credential=credential, log_index=outcome.log_index if outcome else None)

    def quick_to_conclude(self, prepared: Prepared, committed: Future) -> bool:
        """True when `conclude` calls no backend (the common case), so it may run on the event loop."""
        if committed.exception() is not None or prepared.grant.policy_revision != self.policy.current.digest:
            return False
        outcome = committed.result()
        if isinstance(outcome, Refused):
            return not outcome.kept  # an abuse limit's: nothing to revoke, only the answer
        return isinstance(outcome, Committed) and outcome.superseded is None

    def _admit(self, identity: Identity, request: GrantRequest) -> tuple[BoundaryConfig, tuple[str, ...], int, Decision]:
        """Every refusal before minting, each recorded as `denied` with its stable code and provenance."""
        decision: Decision | None = None
        try:
            if not TASK.fullmatch(request.task):
                raise BadRequest(BAD_TASK)
            if request.idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(request.idempotency_key):
                raise BadRequest("Idempotency-Key must be one header of 1-255 visible ASCII characters")
            boundary = self._one_boundary(request.boundary)
            scopes = own_scopes(boundary, request.scopes)
            if boundary.require_dpop and not request.cnf_jkt:
                raise InvalidDpop(f"boundary {boundary.name!r} requires a DPoP proof")
            self._check_not_frozen(identity, boundary)
            derived = request.derived
            for other in derived.guard_subjects if derived else ():
                self._check_not_frozen(identity, boundary, subject=other)
            decision = derived.authority if derived and derived.authority else self._decide(identity, boundary, scopes)
            if not decision.allowed:
                raise PolicyDenied(decision.reason)
            cap = min(decision.max_ttl or boundary.max_ttl, request.ttl_ceiling or boundary.max_ttl, boundary.max_ttl)
            if _backend(boundary, derived) not in self.outbox.local_backends:  # else counted at commit alone
                self.limits.check(identity, boundary, self.clock())
            return boundary, scopes, granted_ttl(request.ttl, boundary, cap), decision
        except BrokerError as exc:
            self.record_denial(identity, request, exc, decision=decision)
            raise

    def prepares_without_waiting(self, boundary: Any) -> bool:
        """True when admitting and minting at `boundary` (a name, as requested) reads no database and calls
        no other system: a backend that signs here (its abuse limits are counted at commit). The API then
        prepares on the event loop, and anything that would wait still sends it to a thread (broker/blocking.py)."""
        config = self.boundaries.get(boundary) if isinstance(boundary, str) else None
        return config is not None and config.backend in self.outbox.local_backends

    def _one_boundary(self, requested: str | list[str]) -> BoundaryConfig:
        names = sorted(set(requested)) if isinstance(requested, list) else [requested]
        if not names:
            raise BadRequest("a grant names one boundary")  # not `multi_boundary`: none was named
        if len(names) != 1:
            raise MultiBoundary(f"request names {len(names)} boundaries")
        boundary = self.boundaries.get(names[0])
        if boundary is None:
            raise UnknownBoundary(f"boundary {names[0]!r} is not configured")
        return boundary

    def _check_not_frozen(self, identity: Identity, boundary: BoundaryConfig, subject: str | None = None) -> None:
        """Operator freezes (broker/grants/operations.py) refuse new grants until lifted."""
        subject = subject or identity.subject
        frozen = self.ledger.records.frozen(subject, boundary.name)
        if frozen == "subject":
            raise SubjectFrozen(f"subject {subject!r} is frozen")
        if frozen == "boundary":
            raise BoundaryFrozen(f"boundary {boundary.name!r} is frozen")

    def _decide(self, identity: Identity, boundary: BoundaryConfig, scopes: tuple[str, ...]) -> Decision:
        decision = self.policy.current.decide(
            attestor=identity.attestor,
            subject=identity.subject,
            claims=identity.claims,
            boundary=boundary.name,
            scopes=frozenset(scopes),
        )
        return decision

    def _mint(self, identity: Identity, request: GrantRequest, mint: MintRequest, decision: Decision) -> Minted:
        try:
            return self.backends[_backend(mint.boundary, request.derived)].mint(mint)
        except BrokerError as exc:  # BackendUnavailable, or scopes a backend cannot serve in one credential
            self.record_denial(identity, request, exc, decision=decision)
            raise

    def _grant_row(
        self, identity: Identity, mint: MintRequest, minted: Minted, decision: Decision, derived: Derived | None = None
    ) -> dict[str, Any]:
        """The new grant's row: every column, as the ledger writer inserts it."""
        return {
            **GRANT_DEFAULTS,
            "id": mint.grant_id,
            "subject": identity.subject,
            "attestor": identity.attestor,
            "task": mint.task,
            "boundary": mint.boundary.name,
            "backend": _backend(mint.boundary, derived),
            "scopes": " ".join(mint.scopes),
            "handle": minted.handle,
            "fingerprint": minted.fingerprint,
            "issued_at": mint.issued_at,
            "expires_at": mint.expires_at,
            "cnf_jkt": mint.cnf_jkt,
            "cnf_x5t": mint.cnf_x5t,
            "policy_revision": decision.revision,
            "rule": decision.rule,
            "parent_grant_id": derived.parent_grant_id if derived else None,
            "parent_handle": minted.parent_handle,
        }

    def _idem_claim(self, identity: Identity, request: GrantRequest, boundary: BoundaryConfig) -> IdemClaim | None:
        if request.idempotency_key is None:
            return None
        replayable = bool(getattr(self.backends[boundary.backend], "replayable", False))
        return IdemClaim(_key_hash(identity, request.idempotency_key), _request_fp(request), replayable)

    def _replay_before_mint(self, identity: Identity, request: GrantRequest, claim: IdemClaim | None) -> Issued | None:
        """A retry of a request whose grant is still live: answer it again, or refuse a reused key.

        Concurrent duplicates pass here together; the issuing transaction decides between them.
        """
        bound = self.ledger.idempotent_grant(claim.key_hash) if claim else None
        if claim is None or bound is None:
            return None
        request_fp, grant = bound
        if grant.status != ACTIVE or grant.expires_at <= self.clock():
            return None
        if request_fp != claim.request_fp:
            exc = IdempotencyKeyReused("the Idempotency-Key is bound to a live grant of another request")
            self.record_denial(identity, request, exc)
            raise exc
        if not claim.replayable:
            return None  # minted again; the commit supersedes the earlier grant
        replayed = Event(kind="replayed", subject=grant.subject, boundary=grant.boundary, task=grant.task,
                         grant_id=grant.id, actor=identity.subject,
                         detail={"identity_fp": identity.token_fingerprint, "idempotent": True})  # fmt: skip
        self.ledger.record(replayed)
        return self._replay(grant.id)

    def _replay(self, grant_id: str) -> Issued:
        """The same grant again, its credential signed anew with the same claims (jti, exp, cnf)."""
        grant = self.ledger.get_grant(grant_id)
        if grant is None:
            raise LedgerUnavailable("the replayed grant is missing")
        boundary = self.boundaries[grant.boundary]
        mint = MintRequest(grant_id=grant.id, subject=grant.subject, task=grant.task, boundary=boundary,
                           scopes=tuple(grant.scope_list), ttl=max(1, int(grant.expires_at - grant.issued_at)),
                           issued_at=grant.issued_at, expires_at=grant.expires_at, cnf_jkt=grant.cnf_jkt,
                           cnf_x5t=grant.cnf_x5t)  # fmt: skip
        minted = self.backends[grant.backend].mint(mint)
        credential = {**minted.credential, "expires_at": grant.expires_at}
        return Issued(grant=grant, credential=credential, log_index=self.log_index(grant.id))

    def log_index(self, grant_id: str) -> int | None:
        """The transparency-log leaf of a grant's `issued` event (its receipt's index)."""
        return self.ledger.issued_index(grant_id)

    def _revoke_refused(self, grant_id: str) -> None:
        """A grant the issuing transaction left `revoke_pending` (frozen meanwhile, superseded): revoke it now."""
        grant = self.ledger.get_grant(grant_id)
        if grant is not None and grant.status == REVOKE_PENDING:
            self.outbox.execute(grant)

    def _revoke_unrecorded(self, grant: Grant) -> None:
        boundary = self.boundaries[grant.boundary]
        try:
            self.backends[grant.backend].revoke(boundary, grant.handle)
        except BrokerError:
            # reconcile at start-up finds it by its metadata and revokes it then
            log.error("minted credential for grant %s not recorded and not revoked", grant.id)

    def record_denial(
        self,
        identity: Identity,
        request: GrantRequest,
        exc: BrokerError,
        action: str = "issue",
        decision: Decision | None = None,
    ) -> None:
        """A refused grant request, as `denied` with its stable code and provenance (bounded fields, no token)."""
        boundary = request.boundary if isinstance(request.boundary, str) else ",".join(request.boundary)
        self.ledger.record(
            Event(
                kind="denied",
                subject=identity.subject,
                boundary=boundary[:128],
                task=request.task[:128],
                actor=identity.subject,
                detail={
                    "code": exc.code,
                    "action": action,
                    "reason": exc.detail[:200],
                    "scopes": list(request.scopes)[:32],
                    "identity_fp": identity.token_fingerprint,
                    **self.provenance(decision),
                },
            )
        )

    def provenance(self, decision: Decision | None = None) -> dict[str, str | None]:
        """Which policy revision decided, and which rule (None: no rule allowed it, or it was refused before policy)."""
        if decision is not None:
            return {"policy_revision": decision.revision, "rule": decision.rule}
        return {"policy_revision": self.policy.current.digest, "rule": None}

    # --- read ------------------------------------------------------------------------------

    @recorded_use_case("read")
    def get(self, identity: Identity, grant_id: str) -> Grant:
        """The grant, to its owner or an operator; others learn nothing (404)."""
        grant = self.ledger.get_grant(grant_id)
        if grant is None or not (owns(identity, grant) or "operator" in self.roles(identity)):
            raise NotFound("grant not found")
        return grant

    # --- completion and revocation ---------------------------------------------------------

    @recorded_use_case("complete")
    def complete(self, identity: Identity, grant_id: str, proof_jkt: str | None = None) -> Grant:
        """The owner says done: revoke now. Idempotent."""
        grant = self.ledger.get_grant(grant_id)
        if grant is None or not owns(identity, grant):
            self.record_refusal(identity, "complete", grant_id=grant_id)
            raise NotFound("grant not found")
        self.check_holder(identity, grant, proof_jkt, "complete")
        self.outbox.revoke([grant.id], end_status="completed", actor=identity.subject, reason="completed by owner")
        return self.ledger.get_grant(grant_id) or grant

    def submit_complete(self, identity: Identity, grant_id: str) -> Future:
        """`complete` in the ledger writer's next batch, for the event loop: a future of `Ended`, or of
        `Declined` when the grant needs `complete` itself (broker/ledger/issuing.py says which)."""
        outbox = self.outbox  # it knows where a grant ends in the ledger alone (the same sets as its own revokes)
        end = EndGrant(grant_id, identity.subject, identity.attestor, outbox.boundary_names, outbox.local_backends)
        return self.ledger.submit_end(end)

    @staticmethod
    def completed(outcome: Any) -> Grant | None:
        """The grant `submit_complete` ended; None when the writer declined it (then `complete` decides)."""
        return Grant.of_row(outcome.grant) if isinstance(outcome, Ended) else None

    @recorded_use_case("complete_task")
    def complete_task(self, identity: Identity, task: str, proof_jkt: str | None = None) -> RevokeOutcome:
        """Complete every grant of the caller's task (DPoP-bound ones only with their key's proof)."""
        if not TASK.fullmatch(task):
            self.record_refusal(identity, "complete_task", code=BadRequest.code)
            raise BadRequest(BAD_TASK)
        grants = self.ledger.task_grants(identity.subject, task)
        grants = [g for g in grants if g.attestor == identity.attestor]
        if not grants:
            self.record_refusal(identity, "complete_task", code=TaskNotFound.code, task=task)
            raise TaskNotFound("task not found")
        for grant in grants:
            self.check_holder(identity, grant, proof_jkt, "complete_task")
        outcome = self.outbox.revoke(
            [g.id for g in grants], end_status="completed", actor=identity.subject, reason="task completed"
        )
        return RevokeOutcome(len(grants), outcome.revoked, outcome.pending, [g.id for g in grants])

    def record_invalid_request(self, identity: Identity, action: str, code: str = "validation_error") -> None:
        self.record_refusal(identity, action, code=code)

    def record_refusal(self, identity: Identity | None, action: str, code: str = "not_found", **where: str) -> None:
        subject = identity.subject if identity is not None else None
        detail = {"code": code, "action": action, **({"error": where["error"]} if "error" in where else {})}
        if identity is not None:
            detail["identity_fp"] = identity.token_fingerprint
        detail.update(self.provenance())
        self.ledger.record(
            Event(
                kind="denied",
                subject=subject,
                actor=subject,
                grant_id=where.get("grant_id"),
                task=where.get("task"),
                detail=detail,
            )
        )


REFUSED_AT_COMMIT: dict[str, type[BrokerError]] = {
    "subject_frozen": SubjectFrozen,
    "boundary_frozen": BoundaryFrozen,
    "idempotency_key_reused": IdempotencyKeyReused,
    "parent_grant_ended": InvalidSubjectToken,
}


def _refusal(refused: Refused) -> BrokerError:
    """The error a refusal inside the issuing transaction is answered with."""
    if refused.code in EXCEEDED:
        return EXCEEDED[refused.code](refused.detail, retry_after=refused.retry_after or 1)
    return REFUSED_AT_COMMIT[refused.code](refused.detail)


def _backend(boundary: BoundaryConfig, derived: Derived | None) -> str:
    return derived.backend if derived is not None and derived.backend else boundary.backend


def _issued_event(grant: Grant, minted: Minted, identity: Identity, derived: Derived | None = None) -> Event:
    detail = {
        "scopes": grant.scope_list,
        "expires_at": grant.expires_at,
        "fingerprint": minted.fingerprint,
        "identity_fp": identity.token_fingerprint,
        "attestor": identity.attestor,
        "policy_revision": grant.policy_revision,
        "rule": grant.rule,
    }
    if derived is not None:  # from which grant, for whom, and the delegation chain (current actor first)
        detail.update(parent_grant_id=derived.parent_grant_id, principal=derived.principal, actors=actors(derived.act))
        if derived.txn:
            detail["txn"] = derived.txn["txn"]
    return Event(kind="issued", subject=grant.subject, boundary=grant.boundary, task=grant.task,
                 grant_id=grant.id, actor=grant.subject, detail=detail)  # fmt: skip


def actors(act: Any) -> list[str]:
    """The subjects of an RFC 8693 `act` chain, current actor first."""
    chain: list[str] = []
    while isinstance(act, dict) and len(chain) < 64:
        chain.append(str(act.get("sub")))
        act = act.get("act")
    return chain


def _key_hash(identity: Identity, key: str) -> str:
    """Keys are per caller: the same key from two subjects names two different requests."""
    return hashlib.sha256("\0".join((identity.attestor, identity.subject, key)).encode()).hexdigest()


def _request_fp(request: GrantRequest) -> str:
    boundary = request.boundary if isinstance(request.boundary, str) else sorted(set(request.boundary))
    body = [request.task, boundary, sorted(set(request.scopes)), request.ttl, request.cnf_jkt]
    body += [request.cnf_x5t] if request.cnf_x5t else []  # appended only when set: older hashes still match
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def others_than(holder: str, subjects: Iterable[str]) -> tuple[str, ...]:
    """The other parties a derived grant names, in order, once each: their freezes refuse it too."""
    return tuple(s for s in dict.fromkeys(subjects) if s != holder)


def owns(identity: Identity, grant: Grant) -> bool:
    return grant.subject == identity.subject and grant.attestor == identity.attestor


def own_scopes(boundary: BoundaryConfig, requested: Sequence[str]) -> tuple[str, ...]:
    """Scopes of this boundary only: `other:write` is another boundary (refused, never dropped)."""
    scopes = []
    for scope in requested:
        qualifier, _, name = scope.rpartition(":")
        if qualifier and qualifier != boundary.name:
            raise MultiBoundary(f"scope {scope[:64]!r} belongs to another boundary")
        if name not in boundary.scopes:
            raise UnknownScope(f"scope {name[:64]!r} is not in boundary {boundary.name!r}")
        scopes.append(name)
    return tuple(sorted(set(scopes)))


def granted_ttl(requested: int | str | None, boundary: BoundaryConfig, cap: int) -> int:
    """TTL ≤ policy cap ≤ boundary cap; never shortened silently unless the caller asked for "max"."""
    if requested == "max":
        return cap
    if requested is None:
        return min(boundary.usual_ttl, cap)
    if int(requested) > cap:
        raise TtlExceedsCap(f"ttl {requested}s exceeds the cap of {cap}s")
    return int(requested)
