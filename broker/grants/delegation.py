"""Delegation chains (RFC 8693 §1.1, §4.1): an orchestrating agent gets a token for a sub-agent.

The request names three parties: the caller (`Authorization`: the orchestrator's identity), the
parent (`subject_token`: a broker token the caller holds) and the sub-agent (`actor_token`: its
identity token). The token minted is for the parent's principal (`sub`), held by the sub-agent
(`client_id`, and the ledger's subject of the derived grant), with the chain in `act`, the current
actor outermost: `act: {sub: sub-agent, act: {sub: orchestrator}}`; a sub-agent delegating again
nests one level more. `max_delegation_depth` caps the nesting.

Its scopes are the intersection of what both may have: the requested scopes (default: the
parent's) within the parent's scopes, within what the rule that allowed the parent still opens for
the orchestrator, within what one policy rule allows the sub-agent. The answer's `scope` says what
was granted. Freezes of the sub-agent, the orchestrator or anyone in the chain refuse it, its
lifetime ends no later than its parent's, and ending the parent ends it (the ledger's cascade).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from broker.config import BoundaryConfig
from broker.errors import BrokerError, DelegationTooDeep, InvalidSubjectToken, InvalidTarget, PolicyDenied
from broker.grants.exchange import SUBJECT_TOKEN_TYPES, TOKEN_EXCHANGE, Form, as_asked, one, request_for, target
from broker.grants.parent import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, Parent, parent_of
from broker.grants.service import Derived, GrantRequest, GrantService, Issued, actors, others_than, own_scopes, owns
from broker.identity import Identity

PARENT_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE})


def delegate(service: GrantService, caller: Identity, actor: Identity, form: Form, cnf_jkt: str | None) -> Issued:
    """Issue the sub-agent's derived grant, or record the refusal (under the sub-agent) and raise."""
    parent = _recorded(service, actor, form, lambda: _held_parent(service, caller, form))
    service.check_holder(caller, parent.grant, cnf_jkt, "delegate")  # a DPoP- or certificate-bound parent
    request = _recorded(service, actor, form, lambda: _derived_request(service, parent, actor, form, cnf_jkt))
    return service.issue(actor, request)


def _recorded(service: GrantService, actor: Identity, form: Form, step: Any) -> Any:
    try:
        return step()
    except BrokerError as exc:
        service.record_denial(actor, as_asked(form), exc, action="delegate")
        raise


def _held_parent(service: GrantService, caller: Identity, form: Form) -> Parent:
    if one(form, "grant_type") != TOKEN_EXCHANGE:
        raise InvalidSubjectToken("delegation is a token exchange (RFC 8693)")
    if one(form, "subject_token_type") not in PARENT_TOKEN_TYPES:
        raise InvalidSubjectToken("the subject_token of a delegation is a broker access token")
    if one(form, "actor_token_type") not in SUBJECT_TOKEN_TYPES:
        raise InvalidSubjectToken("actor_token_type must be a JWT or id_token type")
    parent = parent_of(service, one(form, "subject_token"))  # a transaction token is no access token: refused
    if not owns(caller, parent.grant):
        raise InvalidSubjectToken("the caller does not hold the subject token")
    return parent


def _derived_request(
    service: GrantService, parent: Parent, actor: Identity, form: Form, cnf_jkt: str | None
) -> GrantRequest:
    boundary = service.boundaries[parent.grant.boundary]
    named = target(form, service.settings)
    if named is not None and named.name != boundary.name:
        raise InvalidTarget("a delegated token is for its parent's boundary")
    act = {"sub": actor.subject, "act": parent.claims.get("act") or {"sub": parent.claims["sub"]}}
    if depth(act) > service.settings.max_delegation_depth:
        raise DelegationTooDeep(f"the chain would be {depth(act)} delegations deep "
                                f"(max_delegation_depth is {service.settings.max_delegation_depth})")  # fmt: skip
    remaining = parent.remaining(service.clock())
    request = request_for(form, boundary, cnf_jkt)
    scopes = _intersection(service, parent, actor, boundary, request.scopes or tuple(parent.grant.scope_list))
    chain = [*actors(act), parent.grant.subject]
    derived = Derived(parent_grant_id=parent.grant.id, principal=str(parent.claims["sub"]), act=act,
                      guard_subjects=others_than(actor.subject, chain))  # fmt: skip
    ceiling = min(request.ttl_ceiling or remaining, remaining)
    return replace(request, scopes=scopes, ttl_ceiling=ceiling, derived=derived)


def _intersection(
    service: GrantService, parent: Parent, actor: Identity, boundary: BoundaryConfig, requested: tuple[str, ...]
) -> tuple[str, ...]:
    """What both may have: see the module doc. Empty is a refusal, recorded as `policy_denied`."""
    policy = service.policy.current
    rule = policy.rule(parent.grant.rule) if parent.grant.rule else None
    holder = rule is not None and rule.matches_subject(parent.grant.attestor, parent.grant.subject)
    orchestrator = rule.allows[boundary.name].scopes if holder and boundary.name in rule.allows else frozenset()
    within = frozenset(own_scopes(boundary, requested)) & frozenset(parent.grant.scope_list) & orchestrator
    granted = policy.best_scopes(attestor=actor.attestor, subject=actor.subject, claims=actor.claims,
                                 boundary=boundary.name, within=within)  # fmt: skip
    if not granted:
        raise PolicyDenied("no requested scope is one both the orchestrator and the sub-agent may have")
    return tuple(sorted(granted))


def depth(act: dict[str, Any]) -> int:
    """Delegations in a chain: its `act` levels below the orchestrator's own."""
    return len(actors(act)) - 1
