"""The single translation of broker errors to RFC 9457 problem+json, with fixed public messages."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.errors import BackendUnavailable, BrokerError, InvalidDpop, InvalidIdentity, LedgerUnavailable, LimitExceeded

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"

STATUS = {
    "invalid_identity": 401,
    "invalid_dpop": 401,
    "dpop_replay_full": 503,
    "policy_denied": 403,
    "forbidden": 403,
    "subject_frozen": 403,
    "boundary_frozen": 403,
    "invalid_request": 400,
    "multi_boundary": 400,
    "unknown_boundary": 400,
    "invalid_target": 400,
    "invalid_authorization_details": 400,
    "unknown_scope": 400,
    "invalid_subject_token": 400,
    "impersonation_refused": 400,
    "delegation_depth_exceeded": 400,
    "scope_exceeds_subject": 400,
    "ttl_exceeds_cap": 400,
    "not_found": 404,
    "idempotency_key_reused": 422,
    "internal_error": 500,
    "task_not_found": 404,
    "rate_limited": 429,
    "too_many_active_grants": 429,
    "backend_unavailable": 503,
    "ledger_unavailable": 503,
}
# details of these stay in debug logs: they would tell an attacker which check failed
HIDDEN_DETAIL = (InvalidIdentity, InvalidDpop)
# RFC 6749 §5.2 / RFC 8693 §2.2.2 `error` of the /oauth/* answers (the problem+json members stay too)
OAUTH_ERROR = {
    "invalid_identity": "invalid_token",  # the caller's bearer token (introspect, revoke): RFC 6750 §3.1
    "invalid_request": "invalid_request",
    "unknown_boundary": "invalid_target",
    "multi_boundary": "invalid_target",
    "policy_denied": "invalid_target",  # unwilling to issue for that target (RFC 8693 §2.2.2)
    "unknown_scope": "invalid_scope",
    "invalid_target": "invalid_target",  # RFC 8707 §2
    "invalid_authorization_details": "invalid_authorization_details",  # RFC 9396 §5
    "invalid_subject_token": "invalid_grant",  # RFC 8693 §2.2.2: the subject_token is invalid or unacceptable
    "impersonation_refused": "invalid_request",
    "delegation_depth_exceeded": "invalid_request",
    "scope_exceeds_subject": "invalid_scope",
    "forbidden": "unauthorized_client",  # a workload that may not request transaction tokens
}
TOKEN_PATH = "/oauth/token"


def problem(request: Request, status: int, code: str, title: str, detail: str | None = None, **extra) -> JSONResponse:
    path = request.url.path
    if path == TOKEN_PATH and code == "invalid_identity":
        status = 400  # a bad subject_token is a bad grant (RFC 6749 §5.2), not a failed client authentication
    body = {"type": f"urn:broker:problem:{code}", "title": title, "status": status, "code": code, **extra}
    if detail:
        body["detail"] = detail
    if path.startswith("/oauth/"):
        error = "invalid_grant" if path == TOKEN_PATH and code == "invalid_identity" else OAUTH_ERROR.get(code)
        body["error"] = error or ("invalid_request" if status < 500 else "server_error")
        body["error_description"] = title  # the fixed public message: never the input
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _route(request: Request) -> str:
    """The route template for a log line: a path may carry what the caller typed."""
    return getattr(request.scope.get("route"), "path", "unmatched")


def _broker_error(request: Request, exc: BrokerError) -> JSONResponse:
    status = STATUS.get(exc.code, 500)
    log.debug("refused %s %s: %s %s", request.method, _route(request), exc.code, exc.detail)
    if status >= 500:  # the ledger's and backends' details are log-safe by construction (the ledger's `why_failed`)
        why = f" ({exc.detail})" if isinstance(exc, (LedgerUnavailable, BackendUnavailable)) else ""
        log.warning("%s %s failed: %s%s", request.method, _route(request), exc.code, why)
    detail = None if isinstance(exc, HIDDEN_DETAIL) or status >= 500 else exc.detail
    if not isinstance(exc, LimitExceeded):
        return problem(request, status, exc.code, exc.public_message, detail)
    # the header for HTTP clients (RFC 9110 §10.2.3), the member for SDKs that read only the problem body
    response = problem(request, status, exc.code, exc.public_message, detail, retry_after=exc.retry_after)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # never echo the input back: it may hold a token
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()[:20]]
    return problem(request, 422, "validation_error", "The request body or parameters are invalid.", errors=errors)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
    code = codes.get(exc.status_code, "http_error")
    title = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else "Not found."
    return problem(request, exc.status_code, code, title)


class CatchAll:
    """Last resort for a defect outside the use cases: a problem+json 500 instead of Starlette's
    re-raise, which would also drop the client's keep-alive connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            answer = problem(Request(scope), 500, "internal_error", "The broker could not complete the request.")
            await answer(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(BrokerError, _broker_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(CatchAll)
