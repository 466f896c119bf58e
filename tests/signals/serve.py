"""Serve an ASGI app under uvicorn on a loopback port in a thread (a real HTTP server for push and JWKS),
and the resource server the receiver tests and the signals bench put behind the SDK's middleware."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from broker_client import SignalMiddleware, SignalReceiver, Verifier
from fastapi import FastAPI, Request

from tests.support.wait import wait_started


@contextmanager
def serving(app, port: int) -> Iterator[str]:  # noqa: ANN001
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_started(server, thread)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def resource_server(receiver: SignalReceiver, verifier: Verifier) -> FastAPI:
    """`GET /orders` behind `SignalMiddleware`: answers the verified token's `sub`."""
    app = FastAPI()

    @app.get("/orders")
    def orders(request: Request) -> dict:
        return {"sub": request.scope["broker_claims"]["sub"]}

    app.add_middleware(SignalMiddleware, receiver=receiver, verifier=verifier)
    return app
