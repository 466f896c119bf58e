"""For MCP servers built with FastMCP: accept broker call tokens for this server only, one tool call each.

    from fastmcp import FastMCP
    from broker_client import Client
    from broker_client.mcp import BrokerTokenVerifier

    auth = BrokerTokenVerifier(issuer="https://broker.example", resource="https://mcp.example/mcp",
                               tools=["search"], introspection=Client(identity=resource_server_identity))
    # or receiver=SignalReceiver(...) (registered and receiving): pushed revocations, no introspection
    mcp = FastMCP("search", auth=auth)

`verify_token` checks every request's token offline (JWKS, `iss`, `aud` is exactly this server's
canonical URI, `exp`) and then that it is still active: with a `receiver`
(broker_client.SignalReceiver, the broker's pushed revocations) a token whose grant ended is refused
as soon as its SET arrives, with no call to the broker; with `introspection` the broker is asked
(RFC 7662, cached for `cache_ttl` seconds: the longest a completed or revoked task keeps working
here); with both, both checks apply; with neither, every token is refused (fail closed). A `tools/call`
then also needs the token's RFC 9396 `mcp_tool_call` binding to name this server and that tool
(and, when bound, the arguments' digest), a DPoP proof when the token is DPoP-bound, and a `jti`
never used for a call before; otherwise 403 `insufficient_scope` (401 `invalid_token` for a replay)
with `resource_metadata=` pointing at this server's RFC 9728 document (MCP authorization, "Scope
challenge handling"). Used `jti`s are kept in this process: run one verifier per server process, or
give every replica its own audience.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx2
from fastmcp.server.auth import AccessToken, TokenVerifier
from mcp.server.auth.routes import build_resource_metadata_url
from pydantic import AnyHttpUrl
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker_client._wire import args_sha256
from broker_client.client import Client
from broker_client.credential import Credential
from broker_client.errors import BrokerClientError, InvalidToken
from broker_client.receiver import SignalReceiver
from broker_client.verify import Verifier

TOOL_CALL = "mcp_tool_call"
MAX_BODY = 1_048_576  # a tools/call larger than this is refused (413) rather than passed on unchecked
MAX_USED = 200_000  # used jtis kept; each lives ≤ 60 s (+ leeway), so this is thousands of calls per second


class BrokerTokenVerifier(TokenVerifier):
    """A FastMCP token verifier for broker JWTs whose `aud` is this MCP server's canonical URI."""

    def __init__(
        self, *, issuer: str, resource: str, tools: Sequence[str] = (), introspection: Client | None = None,
        receiver: SignalReceiver | None = None, cache_ttl: float = 1.0, jwks_url: str | None = None, leeway: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        super().__init__(required_scopes=[])
        self.issuer, self.resource, self.tools = issuer, resource, sorted(tools)
        self.verifier = Verifier(issuer, resource, jwks_url=jwks_url, leeway=leeway)
        self.introspection, self.receiver, self.cache_ttl, self.clock = introspection, receiver, cache_ttl, clock
        self._active: OrderedDict[str, float] = OrderedDict()  # jti -> when the broker last said active
        self._used: OrderedDict[str, float] = OrderedDict()  # jti -> its exp (wall clock)
        self._lock = threading.Lock()

    # --- every request ----------------------------------------------------------------------

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's access, or None (FastMCP answers 401): never for another server, never once inactive."""
        try:
            claims = await anyio.to_thread.run_sync(self.verifier.claims, token)
            if self.receiver is not None:
                self.receiver.check(claims)  # a pushed revocation: refused at once, no broker call
            if self.introspection is not None or self.receiver is None:
                await self._check_active(token, str(claims["jti"]))
        except InvalidToken:
            return None
        scopes = str(claims.get("scope", "")).split()
        return AccessToken(token=token, client_id=str(claims["sub"]), scopes=scopes, expires_at=int(claims["exp"]),
                           resource=self.resource, claims=claims)  # fmt: skip

    async def _check_active(self, token: str, jti: str) -> None:
        """Revocation: the broker's introspection answer, trusted for `cache_ttl` seconds (fail closed)."""
        now = self.clock()
        with self._lock:
            checked = self._active.get(jti)
        if checked is not None and now - checked < self.cache_ttl:
            return
        if self.introspection is None:
            raise InvalidToken("no introspection client: revocation cannot be checked")
        try:
            answer = await anyio.to_thread.run_sync(self.introspection.introspect, token)
        except BrokerClientError as exc:
            raise InvalidToken(f"introspection failed: {type(exc).__name__}") from None
        if answer.get("active") is not True:
            raise InvalidToken("the broker reports the token inactive")
        with self._lock:
            self._active[jti] = now
            self._active.move_to_end(jti)
            while len(self._active) > MAX_USED:
                self._active.popitem(last=False)

    # --- tools/call ---------------------------------------------------------------------------

    def check_call(self, claims: dict[str, Any], tool: str, arguments: Any) -> str | None:
        """Why this token may not call `tool` with `arguments` here, or None."""
        details = claims.get("authorization_details")
        bound = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
        match = [d for d in bound if d.get("type") == TOOL_CALL and d.get("server") == self.resource
                 and d.get("tool") == tool]  # fmt: skip
        if len(match) != 1:
            return "the token is not a call token for this tool on this server"
        digest = match[0].get("args_sha256")
        if digest is not None and (not isinstance(arguments, dict) or args_sha256(arguments) != digest):
            return "the token is bound to other arguments"
        return None

    def first_use(self, jti: str, exp: float) -> bool:
        """True once per `jti`: a call token is good for one call."""
        now = time.time()
        with self._lock:
            while self._used and next(iter(self._used.values())) < now - self.verifier.leeway:
                self._used.popitem(last=False)
            if jti in self._used or len(self._used) >= MAX_USED:
                return False  # full: refuse (fail closed) until tokens expire
            self._used[jti] = exp
            return True

    # --- FastMCP wiring -------------------------------------------------------------------------

    def _get_resource_url(self, path: str | None = None) -> AnyHttpUrl | None:
        return AnyHttpUrl(self.resource)  # the canonical URI the broker puts in `aud`, wherever this is mounted

    @property
    def metadata_url(self) -> str:
        return str(build_resource_metadata_url(AnyHttpUrl(self.resource)))

    @property
    def metadata(self) -> dict[str, Any]:
        """This server's RFC 9728 document (`broker mcp metadata <boundary>` prints the broker's view of it)."""
        found = {"resource": self.resource, "authorization_servers": [self.issuer],
                 "bearer_methods_supported": ["header"], "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
                 "authorization_details_types_supported": [TOOL_CALL]}  # fmt: skip
        return {**found, "scopes_supported": self.tools} if self.tools else found

    def get_routes(self, mcp_path: str | None = None) -> list:
        """RFC 9728 §3.1: the document at /.well-known/oauth-protected-resource<path>, the issuer spelt exactly."""
        document = self.metadata

        async def serve(request: Request) -> JSONResponse:
            return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

        return [Route(urlsplit(self.metadata_url).path, serve, methods=["GET"])]

    def get_middleware(self) -> list:
        return [*super().get_middleware(), Middleware(ToolCallGuard, verifier=self)]


class ToolCallGuard:
    """ASGI middleware after authentication: a `tools/call` needs its own call token, used once."""

    def __init__(self, app: ASGIApp, verifier: BrokerTokenVerifier) -> None:
        self.app, self.verifier = app, verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access = getattr(scope.get("user"), "access_token", None) if scope["type"] == "http" else None
        if access is not None and not self._holder(scope, access):  # every request of a DPoP-bound token
            challenge = f'DPoP error="invalid_token", resource_metadata="{self.verifier.metadata_url}"'
            await _refuse(send, 401, challenge, "the DPoP proof is missing or invalid")
            return
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            await _refuse(send, 413, 'Bearer error="invalid_request"', "request body too large")
            return
        calls = _tool_calls(body)
        if calls and access is not None:  # no token: FastMCP's RequireAuthMiddleware answers 401
            refusal = self._refusal(scope, access, calls)
            if refusal is not None:
                status, error, reason = refusal
                challenge = f'Bearer error="{error}", scope="{" ".join(c[0] for c in calls)}", ' + (
                    f'resource_metadata="{self.verifier.metadata_url}"')
                await _refuse(send, status, challenge, reason)
                return
        await self.app(scope, _replay(body, receive), send)

    def _refusal(self, scope: Scope, access: Any, calls: list[tuple[str, Any]]) -> tuple[int, str, str] | None:
        claims = getattr(access, "claims", None) or {}
        if len(calls) != 1:
            return 403, "insufficient_scope", "one tools/call per request and per call token"
        tool, arguments = calls[0]
        reason = self.verifier.check_call(claims, tool, arguments)
        if reason is not None:
            return 403, "insufficient_scope", reason
        if not self.verifier.first_use(str(claims.get("jti")), float(claims.get("exp", 0))):
            return 401, "invalid_token", "the call token was used already"
        return None


    def _holder(self, scope: Scope, access: Any) -> bool:
        """True unless the token is DPoP-bound and this request lacks its holder's proof (RFC 9449 §7)."""
        claims = getattr(access, "claims", None) or {}
        if not (claims.get("cnf") or {}).get("jkt"):
            return True
        try:
            self.verifier.verifier.verify(access.token, dpop_proof=_header(scope, b"dpop"), method=scope["method"],
                                          url=_url(scope))  # fmt: skip
        except InvalidToken:
            return False
        return True


class CallTokenAuth(httpx2.Auth):
    """For FastMCP's client: every `tools/call` goes out with a fresh call token for that tool and arguments.

        with Client() as broker, broker.task("triage") as task:
            async with fastmcp.Client(server, auth=CallTokenAuth(task, server, session_tool="search")) as mcp: ...

    Other requests of the session (initialize, tools/list) carry the latest call token, first one for
    `session_tool`; they use no call, so its single use is left for a `tools/call` of that tool.
    """

    requires_request_body = True

    def __init__(self, task: Any, server: str, *, session_tool: str, bind_arguments: bool = True) -> None:
        self.task, self.server, self.session_tool, self.bind_arguments = task, server, session_tool, bind_arguments
        self._last: Credential | None = None

    def sync_auth_flow(self, request: httpx2.Request):  # noqa: ANN201
        request.read()
        request.headers["Authorization"] = f"Bearer {self._pick(request, self.task.tool_token)}"
        yield request

    async def async_auth_flow(self, request: httpx2.Request):  # noqa: ANN201
        await request.aread()
        if inspect.iscoroutinefunction(self.task.tool_token):
            calls = _tool_calls(request.content)
            wanted = self._wanted(calls)
            if wanted is not None:
                self._last = await self.task.tool_token(self.server, wanted[0], arguments=wanted[1])
            token = self._last.token if self._last else ""
        else:
            token = await anyio.to_thread.run_sync(self._pick, request, self.task.tool_token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _pick(self, request: httpx2.Request, fetch: Callable[..., Credential]) -> str:
        wanted = self._wanted(_tool_calls(request.content))
        if wanted is not None:
            self._last = fetch(self.server, wanted[0], arguments=wanted[1])
        return self._last.token if self._last else ""

    def _wanted(self, calls: list[tuple[str, Any]]) -> tuple[str, dict | None] | None:
        """The (tool, arguments) a new token is needed for, or None to send the latest one again."""
        if len(calls) == 1:
            tool, arguments = calls[0]
            return tool, arguments if self.bind_arguments and isinstance(arguments, dict) else None
        fresh = self._last is not None and self._last.expires_at.timestamp() - time.time() > 5
        return None if fresh else (self.session_tool, None)


def _tool_calls(body: bytes) -> list[tuple[str, Any]]:
    """The (tool, arguments) of every JSON-RPC `tools/call` in the body (one message or a batch)."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return []  # not JSON: the MCP transport refuses it
    messages = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for message in messages:
        if isinstance(message, dict) and message.get("method") == "tools/call":
            params = message.get("params") if isinstance(message.get("params"), dict) else {}
            calls.append((str(params.get("name")), params.get("arguments") or {}))
    return calls


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: http.disconnect, as the server would have seen it

    return replayed


def _header(scope: Scope, name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", []) if k.lower() == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


def _url(scope: Scope) -> str:
    host = _header(scope, b"host") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('path', '')}"


async def _refuse(send: Send, status: int, challenge: str, reason: str) -> None:
    body = json.dumps({"error": challenge.split('"')[1], "error_description": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"www-authenticate", challenge.encode())]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
