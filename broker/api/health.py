"""Liveness and readiness for the platform."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker.api.deps import Log, Service
from broker.errors import BrokerError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(svc: Service, log: Log) -> JSONResponse:
    checks = {}
    for name, check in svc.readiness_checks().items():
        try:
            check()
            checks[name] = "ok"
        except (BrokerError, Exception) as exc:  # readiness reports, it never raises
            checks[name] = getattr(exc, "code", "failed")
    ready = all(v == "ok" for v in checks.values())
    body: dict = {"status": "ready" if ready else "not_ready", "checks": checks}
    if svc.withdrawal is not None:  # informational: grants the current policy withdrew or only reported
        body["policy"] = {"revision": svc.policy.current.digest, **svc.withdrawal.status()}
    if log.witnesses.witnesses:  # a refusing witness is an alarm to see, not a reason to stop issuing
        body["log_witnesses"] = log.witnesses.status()
    return JSONResponse(body, status_code=200 if ready else 503)
