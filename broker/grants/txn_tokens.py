"""Transaction tokens (draft-ietf-oauth-transaction-tokens): the broker as its trust domain's TTS.

A Txn-Token Request is an RFC 8693 exchange with `requested_token_type` = the txn_token type,
`audience` = the trust domain (`txn_token_trust_domain`), a `scope`, and as `subject_token` a
broker token (an access token, or a transaction token to replace). The requesting workload
authenticates itself (`Authorization`: its identity token, or its client certificate) and must
hold the subject token or have the policy role `resource_server` (a gateway that received it).

The token: header `typ: txntoken+jwt`; claims `iat`, `exp` (at most 5 minutes, never past the
subject token), `aud` (the trust domain), `txn` (new, or the replaced token's), `sub` (the subject
token's principal), `scope` (within the subject token's, refused otherwise: a token whose scope the
broker cannot know, such as an identity token, is refused), `req_wl` (the requesting workload),
`tctx` (from `request_details`, immutable along the chain) and `rctx` (from `request_context`, with
the chain of earlier requesters as `req_chain`). A replacement keeps `txn`, `sub`, `aud` and `tctx`.
It is a grant derived from the subject token's: recorded, listed and ended like every grant, and
ended with its parent. No refresh token is issued.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from broker.errors import (
    BadRequest,
    BrokerError,
    Forbidden,
    InvalidSubjectToken,
    InvalidTarget,
    ScopeExceedsSubject,
    TtlExceedsCap,
)
from broker.grants.exchange import BAD_TASK, TASK, TOKEN_EXCHANGE, Form, as_asked, one, requested_ttl
from broker.grants.parent import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TXN_TOKEN, Parent, parent_of, verified
from broker.grants.service import Derived, GrantRequest, GrantService, Issued, others_than, owns
from broker.identity import Identity
from broker.policy import Decision
from broker.signing import TOKEN_TYPE, TXN_TOKEN_TYPE

MAX_LIFETIME = 300  # seconds: "short-lived (on the order of minutes or less)"
SUBJECT_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TXN_TOKEN})  # never a refresh token
MAX_CONTEXT = 4096  # bytes of `request_context` / `request_details` JSON


def issue_txn_token(service: GrantService, caller: Identity, form: Form, cnf_jkt: str | None) -> Issued:
    """Issue a transaction token to `caller`, or record the refusal and raise."""
    try:
        parent = _subject(service, form)
        if owns(caller, parent.grant):
            service.check_holder(caller, parent.grant, cnf_jkt, "txn_token")
        elif "resource_server" not in service.roles(caller):
            raise Forbidden("the requester neither holds the subject token nor has the resource_server role")
        request = _request(service, caller, parent, form)
    except BrokerError as exc:
        service.record_denial(caller, as_asked(form), exc, action="txn_token")
        raise
    return service.issue(caller, request)


def _subject(service: GrantService, form: Form) -> Parent:
    domain = service.settings.txn_token_trust_domain
    if domain is None:
        raise BadRequest("transaction tokens are not enabled (txn_token_trust_domain)")
    if one(form, "grant_type") != TOKEN_EXCHANGE:
        raise BadRequest("a Txn-Token Request is a token exchange")
    if "actor_token" in form or "resource" in form:
        raise BadRequest("a Txn-Token Request takes no actor_token and no resource")
    if one(form, "audience") != domain:
        raise InvalidTarget("audience must be this broker's trust domain")
    if one(form, "subject_token_type") not in SUBJECT_TYPES:
        raise BadRequest("subject_token_type must be an access_token, jwt or txn_token type")
    token = one(form, "subject_token")
    if verified(service, token, (TOKEN_TYPE, TXN_TOKEN_TYPE)) is None:
        # an identity token, another issuer's or an unsigned token: its scope cannot be known (never "any")
        raise ScopeExceedsSubject("the subject token's scope is unknown to the broker")
    parent = parent_of(service, token, types=(TOKEN_TYPE, TXN_TOKEN_TYPE))
    if parent.is_txn_token and parent.claims.get("aud") != domain:
        raise InvalidSubjectToken("the transaction token is for another trust domain")
    return parent


def _request(service: GrantService, caller: Identity, parent: Parent, form: Form) -> GrantRequest:
    scopes = tuple((one(form, "scope") or "").split())
    held = frozenset(parent.grant.scope_list)
    if not scopes:
        raise BadRequest("scope is required")
    if not held or not frozenset(scopes) <= held:
        raise ScopeExceedsSubject("the requested scope is wider than the subject token's")
    remaining = min(MAX_LIFETIME, parent.remaining(service.clock()))
    ttl = requested_ttl(form)
    if isinstance(ttl, int) and ttl > MAX_LIFETIME:
        raise TtlExceedsCap(f"a transaction token lives at most {MAX_LIFETIME}s")
    task = one(form, "task", required=False) or (parent.grant.task if owns(caller, parent.grant) else "txn-token")
    if not TASK.fullmatch(task):
        raise BadRequest(BAD_TASK)
    claims = _txn_claims(service, caller, parent, form)
    authority = Decision(allowed=True, rule=parent.grant.rule, max_ttl=None, reason="within the subject token",
                         revision=parent.grant.policy_revision or service.policy.current.digest)  # fmt: skip
    others = others_than(caller.subject, (claims["sub"], parent.grant.subject))
    derived = Derived(parent_grant_id=parent.grant.id, principal=claims["sub"], guard_subjects=others,
                      txn=claims, backend="txn_token", authority=authority)  # fmt: skip
    return GrantRequest(task=task, boundary=parent.grant.boundary, scopes=scopes, ttl=ttl,
                        ttl_ceiling=remaining, derived=derived)  # fmt: skip


def _txn_claims(service: GrantService, caller: Identity, parent: Parent, form: Form) -> dict[str, Any]:
    """`aud`, `txn`, `sub`, `req_wl`, `tctx`, `rctx`: a replacement keeps the first three and `tctx`."""
    details = _json_object(form, "request_details")
    context = _json_object(form, "request_context")
    old = parent.claims
    if not parent.is_txn_token:
        return {"aud": service.settings.txn_token_trust_domain, "txn": str(uuid.uuid4()), "sub": str(old["sub"]),
                "req_wl": caller.subject, "tctx": details, "rctx": context}  # fmt: skip
    if details is not None and details != old.get("tctx"):
        raise BadRequest("tctx is immutable along the call chain: a replacement takes no other request_details")
    before = old.get("rctx") if isinstance(old.get("rctx"), dict) else {}
    chain = [*before.get("req_chain", []), old["req_wl"]][-16:]
    rctx = {**(context if context is not None else {k: v for k, v in before.items() if k != "req_chain"}),
            "req_chain": chain}  # fmt: skip
    return {"aud": old["aud"], "txn": old["txn"], "sub": old["sub"], "req_wl": caller.subject,
            "tctx": old.get("tctx"), "rctx": rctx}  # fmt: skip


def _json_object(form: Form, name: str) -> dict[str, Any] | None:
    raw = one(form, name, required=False)
    if raw is None:
        return None
    try:
        value = json.loads(raw) if len(raw.encode()) <= MAX_CONTEXT else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be a JSON object of at most {MAX_CONTEXT} bytes")
    return value
