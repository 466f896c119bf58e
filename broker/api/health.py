"""Liveness and readiness for the platform: both answer from memory, on the event loop.

`/healthz` touches nothing (no database, no thread pool): a process that can run its event loop is
alive. `/readyz` reads the snapshot the readiness checks keep in the background
(broker/grants/readiness.py), so it answers at once even while Vault or the database hangs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from broker.api.deps import Log

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, log: Log) -> JSONResponse:
    readiness = request.app.state.readiness
    service = request.app.state.service
    body = {**readiness.snapshot(), "policy": _policy(service.policy)}
    if service.withdrawal is not None:  # informational: grants the current policy withdrew or only reported
        body["policy"].update(service.withdrawal.status())
    if log.witnesses.witnesses:  # a refusing witness is an alarm to see, not a reason to stop issuing
        body["log_witnesses"] = log.witnesses.status()
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


def _policy(source: Any) -> dict[str, Any]:
    """The policy in force; a refused edit shows here (its reason is in the log, not on this open endpoint)."""
    state = {"digest": source.current.digest[:12], "reload": "failed" if source.reload_error else "ok"}
    if source.reload_error:
        state["reload_failures"] = source.reload_failures
    return state
