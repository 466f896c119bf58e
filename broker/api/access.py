"""Every request: its id (X-Request-Id in, echoed out), one access log line, and its RED metrics.

Pure ASGI (no per-request task or body copy), outermost, so the id is set before any route or
error handler runs and the line is written even for a refused request. The route is the
template (`/v1/grants/{grant_id}`), never the path: a label or log field per grant id would grow
without bound and would carry what callers chose to send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import context

log = logging.getLogger("broker.access")
Observe = Callable[[str, str, int, float], None]  # method, route template, status, seconds


def route_template(scope: Scope) -> str:
    """The matched route's template, or a fixed word for requests no route matched."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class AccessLog:
    """Sets the request context, echoes the request id, logs the access line, feeds the metrics."""

    def __init__(self, app: ASGIApp, observe: Observe) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        offered = [v for k, v in scope.get("headers", []) if k == b"x-request-id"]
        ctx, token = context.begin(offered[0].decode("latin-1") if len(offered) == 1 else None)
        started, status = time.perf_counter(), 500

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", ctx.request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            self.observe(scope["method"], route, status, elapsed)
            # INFO on `broker.access`: shown by `broker serve` (broker/logs.py), silenced with --no-access-log
            log.info("%s %s %d", scope["method"], route, status, extra={
                "method": scope["method"], "route": route, "status": status,
                "duration_ms": round(elapsed * 1000, 2), "subject_fp": ctx.subject_fp or "-",
            })  # fmt: skip
            context.end(token)
