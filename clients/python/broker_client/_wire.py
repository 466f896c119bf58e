"""What the sync and async clients share: the HTTP contract, retry policy, headers, answers."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx

from broker_client.credential import Credential, Grant, TaskCompleted
from broker_client.dpop import DpopKey
from broker_client.errors import BrokerClientError, from_problem

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
RETRY_STATUSES = frozenset({503})
USER_AGENT = "broker-client/0.1"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter; only idempotent calls, only on 503 or connection errors."""

    attempts: int = 4
    base: float = 0.1
    cap: float = 2.0

    def allows(self, idempotent: bool, attempt: int) -> bool:
        return idempotent and attempt + 1 < self.attempts

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


NO_RETRY = Retry(attempts=1)


def base_url(url: str | None) -> str:
    """The broker's address: the argument, else BROKER_URL."""
    found = url or os.environ.get("BROKER_URL")
    if not found:
        raise BrokerClientError("no broker address: pass url= or set BROKER_URL")
    return found.rstrip("/")


def scope_names(scopes: Sequence[str] | str) -> list[str]:
    """One scope given as a string, or several."""
    return [scopes] if isinstance(scopes, str) else list(scopes)


def seconds(ttl: int | str | timedelta | None) -> int | str | None:
    """A TTL as the broker takes it: seconds, from 300, "10m", a timedelta, or "max"."""
    if ttl is None or ttl == "max":
        return ttl
    if isinstance(ttl, timedelta):
        return int(ttl.total_seconds())
    if isinstance(ttl, int):
        return ttl
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(ttl))
    if not match:
        raise ValueError(f"{ttl!r} is not a TTL (seconds, or 30s, 10m, 1h)")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def segment(value: str) -> str:
    """One path segment, percent-encoded whole: `deploy/prod` stays one task, `..` or `?` change no route."""
    return quote(value, safe="")


def unique_task(name: str) -> str:
    """A task id of its own, so two runs of one job never complete each other's grants."""
    return f"{name[:118]}.{secrets.token_hex(4)}"


def idempotency_key() -> str:
    return "bc-" + uuid.uuid4().hex


def headers(method: str, url: str, auth_token: str | None, key: DpopKey | None, proof_token: str | None) -> dict:
    """Authorization with the identity token, and a fresh DPoP proof (a new `jti` per attempt)."""
    found = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
    if auth_token:
        found["Authorization"] = f"Bearer {auth_token}"
    if key is not None:
        found["DPoP"] = key.proof(method, url, proof_token or auth_token)
    return found


def answer(response: httpx.Response) -> Any:
    """The JSON body of a success; the mapped BrokerError of a problem."""
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    if response.status_code >= 400:
        raise from_problem(response.status_code, body)
    return body


def grant_body(task: str, boundary: str, scopes: list[str] | tuple[str, ...] | str, ttl: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task, "boundary": boundary, "scopes": scope_names(scopes)}
    if ttl is not None:
        body["ttl"] = seconds(ttl)
    return body


TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def args_sha256(arguments: dict[str, Any]) -> str:
    """The digest a call token binds its tool arguments to: SHA-256 of the sorted, compact JSON."""
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tool_call(server: str | None, tool: str | None, arguments: dict[str, Any] | None) -> dict[str, str] | None:
    """One RFC 9396 `mcp_tool_call` binding (with the arguments' digest when given), or None without a tool."""
    if tool is None:
        return None
    if server is None:
        raise ValueError("a tool call names its MCP server (its canonical URI)")
    detail = {"type": "mcp_tool_call", "server": server, "tool": tool}
    if arguments is not None:
        detail["args_sha256"] = args_sha256(arguments)
    return detail


def tool_call_form(identity_token: str, task: str, server: str, tool: str, arguments: dict[str, Any] | None) -> dict:
    """RFC 8693 exchange for a call token: RFC 8707 `resource` and one RFC 9396 `mcp_tool_call` binding."""
    detail = tool_call(server, tool, arguments)
    return {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": identity_token,
            "resource": server, "task": task, "authorization_details": json.dumps([detail])}  # fmt: skip


ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def delegation_form(parent_token: str, actor_token: str, task: str, scopes: list[str] | tuple[str, ...] | str,
                    ttl: Any, tool_call: dict[str, str] | None) -> dict:  # fmt: skip
    """RFC 8693 delegation: the held parent token as `subject_token`, the sub-agent's identity as `actor_token`."""
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE, "subject_token": parent_token,
            "actor_token_type": JWT_TYPE, "actor_token": actor_token, "task": task}  # fmt: skip
    if names := scope_names(scopes):
        form["scope"] = " ".join(names)
    if ttl is not None:
        form["requested_ttl"] = str(seconds(ttl))
    if tool_call is not None:
        form["authorization_details"] = json.dumps([tool_call])
    return form


TXN_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:txn_token"


def txn_token_form(subject_token: str, audience: str, scopes: list[str] | tuple[str, ...] | str, *, replace: bool,
                   details: dict[str, Any] | None, context: dict[str, Any] | None) -> dict:  # fmt: skip
    """A transaction token request (draft-ietf-oauth-transaction-tokens): the held access token, or the
    transaction token to replace, as `subject_token`; `request_details` / `request_context` as JSON."""
    form = {"grant_type": TOKEN_EXCHANGE, "requested_token_type": TXN_TOKEN_TYPE, "audience": audience,
            "subject_token": subject_token, "subject_token_type": TXN_TOKEN_TYPE if replace else ACCESS_TOKEN_TYPE}  # fmt: skip
    if names := scope_names(scopes):
        form["scope"] = " ".join(names)
    if details is not None:
        form["request_details"] = json.dumps(details)
    if context is not None:
        form["request_context"] = json.dumps(context)
    return form


def exchanged(body: dict[str, Any], task: str, boundary: str, backend: str = "jwt") -> Credential:
    """A token endpoint answer as a Credential of `task` (its repr shows a fingerprint only)."""
    now = time.time()
    grant = Grant(grant_id=str(body.get("grant_id", "")), task=task, boundary=boundary,
                  scopes=str(body.get("scope", "")).split(), subject="", status="active", backend=backend,
                  issued_at=datetime.fromtimestamp(now, timezone.utc),
                  expires_at=datetime.fromtimestamp(now + int(body.get("expires_in", 0)), timezone.utc),
                  dpop_bound=body.get("token_type") == "DPoP")  # fmt: skip
    secret = {"type": "jwt", "token": body["access_token"], "token_type": body.get("token_type", "Bearer")}
    return Credential(grant, secret)


def call_token(body: dict[str, Any], task: str, server: str, tool: str) -> Credential:
    """The token endpoint's answer for a call token as a Credential (its repr shows a fingerprint only)."""
    return exchanged({**body, "scope": tool}, task, server, backend="mcp")


def credential(body: dict[str, Any]) -> Credential:
    return Credential(Grant.of(body), body.get("credential") or {})


def task_completed(body: dict[str, Any]) -> TaskCompleted:
    names = TaskCompleted.__dataclass_fields__
    return TaskCompleted(**{k: v for k, v in body.items() if k in names})
