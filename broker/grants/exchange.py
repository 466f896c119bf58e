"""RFC 8693 token exchange as a grant request: the form's parameters, checked like any other input.

The use case, not the HTTP layer, validates them, so every refusal is recorded (promise 4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from broker.errors import BadRequest, BrokerError, MultiBoundary
from broker.grants.service import BAD_TASK, TASK, GrantRequest, GrantService, Issued
from broker.identity import Identity

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES = frozenset({"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"})
EXCHANGEABLE = frozenset({"jwt", "vault_token"})  # the backends whose credential is one token
TTL = re.compile(r"[0-9]{1,5}")  # ASCII digits only: `str.isdigit` also accepts `²` and `①`
MAX_TTL = 86400

Form = Mapping[str, Sequence[str]]


def exchange(service: GrantService, identity: Identity, form: Form, cnf_jkt: str | None) -> Issued:
    """Validate the exchange, recording a refusal as `denied` like every grant decision, then issue."""
    try:
        request = exchange_request(form, cnf_jkt)
        boundary = service.boundaries.get(str(request.boundary))
        if boundary is not None and boundary.backend not in EXCHANGEABLE:
            raise BadRequest("token exchange issues jwt and vault_token credentials; use POST /v1/grants")
    except BrokerError as exc:
        service.record_denial(identity, _as_asked(form), exc, action="token_exchange")
        raise
    return service.issue(identity, request)


def _as_asked(form: Form) -> GrantRequest:
    """What the refused request named, for its `denied` event (bounded; never the subject token)."""
    boundary = [*form.get("resource", []), *form.get("audience", [])][:8]
    scopes = tuple(" ".join(form.get("scope", [])).split())[:32]
    task = (form.get("task") or ["token-exchange"])[0][:128]
    return GrantRequest(task=task, boundary=[b[:128] for b in boundary], scopes=scopes)


def one(form: Form, name: str, required: bool = True) -> str | None:
    """A parameter given at most once (RFC 6749 §3.1), or None when optional and absent."""
    values = form.get(name, [])
    if len(values) > 1:
        raise BadRequest(f"parameter {name!r} given more than once")
    if required and not values:
        raise BadRequest(f"parameter {name!r} is required")
    return values[0] if values else None


def exchange_request(form: Form, cnf_jkt: str | None) -> GrantRequest:
    """The grant an RFC 8693 request asks for: one boundary (`resource` or `audience`), scopes, TTL, task."""
    if one(form, "grant_type") != TOKEN_EXCHANGE:
        raise BadRequest("grant_type must be token-exchange")
    if one(form, "subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise BadRequest("subject_token_type must be a JWT or id_token type")
    targets = sorted(set(form.get("resource", [])) | set(form.get("audience", [])))
    if len(targets) != 1:
        raise MultiBoundary("name exactly one boundary as resource or audience") if targets else BadRequest(
            "resource or audience is required"
        )
    scopes = tuple((one(form, "scope", required=False) or "").split())
    if not scopes:
        raise BadRequest("scope is required")
    task = one(form, "task", required=False) or "token-exchange"
    if not TASK.fullmatch(task):
        raise BadRequest(BAD_TASK)  # refused, never truncated
    return GrantRequest(task=task, boundary=targets[0], scopes=scopes, ttl=_ttl(form), cnf_jkt=cnf_jkt)


def _ttl(form: Form) -> int | str | None:
    ttl = one(form, "requested_ttl", required=False)
    if ttl is None or ttl == "max":
        return ttl
    if not TTL.fullmatch(ttl) or not 0 < int(ttl) <= MAX_TTL:
        raise BadRequest(f"requested_ttl must be seconds (1-{MAX_TTL}) or max")
    return int(ttl)
