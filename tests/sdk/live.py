"""A real broker for SDK tests: uvicorn on a free loopback port in a thread (uvloop and the broker's
httptools protocol, as `broker serve`), the test issuers trusted."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from broker.app import Components, build, create_app
from broker.cli.serve import SERVER_SPEED
from broker.config import Settings
from broker.dev_openbao import free_port
from broker.serving import uvicorn_tls
from tests.support.broker import BOUNDARIES, POLICY, RECEIVERS, Issuers, broker_settings
from tests.support.wait import wait_started

# `secure` refuses a grant without a DPoP proof; payments workers may use it
SDK_BOUNDARIES = [*BOUNDARIES, {"name": "secure", "backend": "jwt", "scopes": ["read"], "max_ttl": "10m", "require_dpop": True}]


def sdk_policy() -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    workers = next(rule for rule in policy["rules"] if rule["name"] == "payments-workers")
    workers["allow"].append({"boundary": "secure", "scopes": ["read"], "max_ttl": "10m"})
    policy["rules"].append(RECEIVERS)  # signal receivers (the guide's resource server)
    return policy


@dataclass
class LiveBroker:
    """A broker serving HTTP on loopback; `components` gives tests the ledger to check."""

    url: str
    settings: Settings
    components: Components
    server: uvicorn.Server
    thread: threading.Thread

    @classmethod
    def start(cls, data_dir: Path, issuers: Issuers, clock: Any = None, **overrides: Any) -> LiveBroker:
        port = free_port()
        url = f"{'https' if overrides.get('tls') else 'http'}://127.0.0.1:{port}"
        values = {"issuer": url, "boundaries": SDK_BOUNDARIES, "policy": sdk_policy(), **overrides}
        settings = broker_settings(data_dir, issuers, **values)
        components = build(settings, clock) if clock is not None else build(settings)
        config = uvicorn.Config(create_app(settings, components), host="127.0.0.1", port=port, log_level="warning",
                                **{**SERVER_SPEED, **uvicorn_tls(settings)})  # as `broker serve` serves  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="live-broker", daemon=True)
        thread.start()
        wait_started(server, thread)
        return cls(url, settings, components, server, thread)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def ledger(self):  # noqa: ANN201
        return self.components.service.ledger

    def grant(self, grant_id: str):  # noqa: ANN201
        return self.ledger.get_grant(grant_id)

    def task_grants(self, subject: str, task: str) -> list:
        return self.ledger.task_grants(subject, task)

    def events(self, **match: Any) -> list:
        rows = self.ledger.events(limit=100_000)
        return [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]
