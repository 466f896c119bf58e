"""RFC 8693 token exchange as a grant request: the form's parameters, checked like any other input.

The use case, not the HTTP layer, validates them, so every refusal is recorded (promise 4). Three
kinds of exchange share the endpoint (`mode`): an identity token for a grant's token (here), a held
broker token plus an `actor_token` for a sub-agent's token (broker/grants/delegation.py), and a held
broker token for a transaction token (broker/grants/txn_tokens.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from broker.config import BoundaryConfig, Settings
from broker.errors import (
    BadRequest,
    BrokerError,
    ImpersonationRefused,
    InvalidAuthorizationDetails,
    InvalidTarget,
    MultiBoundary,
    TtlExceedsCap,
)
from broker.grants.parent import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TXN_TOKEN, is_broker_token
from broker.grants.service import BAD_TASK, TASK, GrantRequest, GrantService, Issued
from broker.identity import Identity

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1: the assertion is the identity token
GRANT_TYPES = (TOKEN_EXCHANGE, JWT_BEARER)
SUBJECT_TOKEN_TYPES = frozenset({"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"})
EXCHANGEABLE = frozenset({"jwt", "mcp", "vault_token"})  # the backends whose credential is one token
TTL = re.compile(r"[0-9]{1,5}")  # ASCII digits only: `str.isdigit` also accepts `²` and `①`
MAX_TTL = 86400
CALL_TOKEN_TTL = 60  # an MCP call token lives at most this long
TOOL_CALL = "mcp_tool_call"
TOOL_CALL_KEYS = frozenset({"type", "server", "tool", "args_sha256"})
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ISSUED_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE})  # what a `requested_token_type` may ask besides txn

Form = Mapping[str, Sequence[str]]


def mode(form: Form) -> str:
    """`txn_token`, `delegation` (an `actor_token` is present) or `exchange` (an identity token for a grant)."""
    if form.get("requested_token_type") == [TXN_TOKEN]:
        return "txn_token"
    return "delegation" if "actor_token" in form else "exchange"


def refuse_impersonation(service: GrantService, form: Form) -> None:
    """A broker token presented as the identity, without an `actor_token`, asks to act as its subject: refused."""
    given = (form.get("subject_token_type") or [None])[0]
    if given == ACCESS_TOKEN_TYPE or is_broker_token(service, identity_token(form)):
        service.record_refusal(None, "token_exchange", code=ImpersonationRefused.code)
        raise ImpersonationRefused("a broker token is exchanged only for another actor, named by actor_token")


def exchange(service: GrantService, identity: Identity, form: Form, cnf_jkt: str | None) -> Issued:
    """Validate the exchange, recording a refusal as `denied` like every grant decision, then issue."""
    try:
        request = exchange_request(form, cnf_jkt, service.settings)
        boundary = service.boundaries.get(str(request.boundary))
        if boundary is not None and boundary.backend not in EXCHANGEABLE:
            raise BadRequest("token exchange issues jwt and vault_token credentials; use POST /v1/grants")
    except BrokerError as exc:
        service.record_denial(identity, as_asked(form), exc, action="token_exchange")
        raise
    return service.issue(identity, request)


def as_asked(form: Form) -> GrantRequest:
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


def identity_token(form: Form) -> str | None:
    """The identity token presented: RFC 7523's `assertion`, or RFC 8693's `subject_token` (exactly one)."""
    grant_type = (form.get("grant_type") or [None])[0]
    tokens = form.get("assertion" if grant_type == JWT_BEARER else "subject_token", [])
    return tokens[0] if len(tokens) == 1 else None  # two tokens are no identity: refused and recorded as such


def exchange_request(form: Form, cnf_jkt: str | None, settings: Settings) -> GrantRequest:
    """The grant a token request asks for: one boundary (`resource` or `audience`), scopes, TTL, task."""
    grant_type = one(form, "grant_type")
    if grant_type not in GRANT_TYPES:
        raise BadRequest("grant_type must be token-exchange or jwt-bearer")
    if grant_type == TOKEN_EXCHANGE and one(form, "subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise BadRequest("subject_token_type must be a JWT or id_token type")
    request = request_for(form, _target(form, settings), cnf_jkt)
    if not request.scopes:
        raise BadRequest("scope is required")
    return request


def requested_type(form: Form) -> None:
    if one(form, "requested_token_type", required=False) not in (None, *ISSUED_TYPES):
        raise BadRequest("requested_token_type must be an access_token, jwt or txn_token type")


def request_for(form: Form, boundary: BoundaryConfig, cnf_jkt: str | None) -> GrantRequest:
    """Scopes (or one tool call), task and TTL of a token request for `boundary`; scopes may be empty."""
    requested_type(form)
    scopes = tuple((one(form, "scope", required=False) or "").split())
    details = _tool_call(form, boundary)
    if details:
        if scopes and scopes != (details[0]["tool"],):
            raise InvalidAuthorizationDetails("scope, when given with a tool call, is that one tool")
        scopes = (details[0]["tool"],)
    task = one(form, "task", required=False) or "token-exchange"
    if not TASK.fullmatch(task):
        raise BadRequest(BAD_TASK)  # refused, never truncated
    ttl = requested_ttl(form)
    if details and isinstance(ttl, int) and ttl > CALL_TOKEN_TTL:
        raise TtlExceedsCap(f"a call token lives at most {CALL_TOKEN_TTL}s")
    return GrantRequest(task=task, boundary=boundary.name, scopes=scopes, ttl=ttl, cnf_jkt=cnf_jkt,
                        authorization_details=details, ttl_ceiling=CALL_TOKEN_TTL if details else None)  # fmt: skip


def target(form: Form, settings: Settings) -> BoundaryConfig | None:
    """The boundary named by `resource` or `audience`, or None when neither is given."""
    return _target(form, settings) if form.get("resource") or form.get("audience") else None


def _target(form: Form, settings: Settings) -> BoundaryConfig:
    """The one boundary named: an MCP server by its canonical URI only, any other by its name (RFC 8707)."""
    targets = sorted(set(form.get("resource", [])) | set(form.get("audience", [])))
    if len(targets) > 1:
        raise MultiBoundary("name exactly one boundary as resource or audience")
    if not targets:
        raise InvalidTarget("resource or audience is required")
    boundary = settings.mcp_boundary(targets[0])
    if boundary is None:
        boundary = settings.boundary(targets[0])
        boundary = None if boundary is not None and boundary.backend == "mcp" else boundary
    if boundary is None:
        raise InvalidTarget(f"resource {targets[0][:128]!r} is not served by this broker")
    return boundary


def _tool_call(form: Form, boundary: BoundaryConfig) -> tuple[dict[str, str], ...]:
    """The RFC 9396 binding of a call token: exactly one `mcp_tool_call` for this server and one of its tools."""
    raw = one(form, "authorization_details", required=False)
    if raw is None:
        return ()
    try:
        details = json.loads(raw) if len(raw) <= 4096 else None
    except ValueError:
        details = None
    if not (isinstance(details, list) and len(details) == 1 and isinstance(details[0], dict)):
        raise InvalidAuthorizationDetails("authorization_details must be a JSON list of one mcp_tool_call")
    detail = details[0]
    if detail.get("type") != TOOL_CALL or not set(detail) <= TOOL_CALL_KEYS:
        raise InvalidAuthorizationDetails("the one detail is {type: mcp_tool_call, server, tool[, args_sha256]}")
    if not all(isinstance(value, str) for value in detail.values()):
        raise InvalidAuthorizationDetails("authorization_details values are strings")
    if boundary.backend != "mcp" or detail.get("server") != boundary.resource_uri:
        raise InvalidAuthorizationDetails("server must be the canonical URI named as resource")
    if detail.get("tool") not in boundary.scopes:
        raise InvalidAuthorizationDetails("tool is not a tool of this server")
    if "args_sha256" in detail and not SHA256_HEX.fullmatch(detail["args_sha256"]):
        raise InvalidAuthorizationDetails("args_sha256 is 64 lowercase hex digits")
    return ({key: detail[key] for key in sorted(detail)},)


def requested_ttl(form: Form) -> int | str | None:
    ttl = one(form, "requested_ttl", required=False)
    if ttl is None or ttl == "max":
        return ttl
    if not TTL.fullmatch(ttl) or not 0 < int(ttl) <= MAX_TTL:
        raise BadRequest(f"requested_ttl must be seconds (1-{MAX_TTL}) or max")
    return int(ttl)
