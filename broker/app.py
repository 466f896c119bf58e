"""create_app(settings): the one place where concrete objects are built and wired."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from broker.api import errors, grants, health, oauth, wellknown
from broker.api.limits import BodyLimit
from broker.backends import Backend, JwtBackend
from broker.config import Settings
from broker.grants import GrantService
from broker.grants.workers import Worker
from broker.identity import Attestors
from broker.ledger import LedgerStore, make_engine
from broker.policy import PolicySource
from broker.signing import FileKeyRepository, KeyStore

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The concrete objects of one broker process."""

    service: GrantService
    worker: Worker


def open_ledger(settings: Settings) -> LedgerStore:
    """The ledger store for the configured database, schema created if missing."""
    if settings.database.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ledger = LedgerStore(make_engine(settings.database, sqlite_synchronous=settings.sqlite_synchronous))
    ledger.create_schema()
    return ledger


def open_keys(settings: Settings) -> KeyStore:
    max_ttl = max((b.max_ttl for b in settings.boundaries), default=3600)
    repo = FileKeyRepository(settings.data_dir / "keys")
    return KeyStore(repo, algorithm=settings.signing_algorithm, max_token_ttl=max_ttl)


def build_backends(settings: Settings, keys: KeyStore) -> dict[str, Backend]:
    backends: dict[str, Backend] = {"jwt": JwtBackend(keys, settings.issuer)}
    return backends


def build(settings: Settings) -> Components:
    """Build every component from settings; nothing here runs at import time."""
    keys = open_keys(settings)
    ledger = open_ledger(settings)
    policy = PolicySource(
        path=settings.policy_file,
        inline=settings.policy,
        boundaries={b.name: b for b in settings.boundaries},
        attestors={a.name for a in settings.attestors},
    )
    attestors = Attestors(settings.attestors, broker_issuer=settings.issuer)
    service = GrantService(
        settings=settings,
        attestors=attestors,
        policy=policy,
        backends=build_backends(settings, keys),
        ledger=ledger,
        keys=keys,
    )
    jobs = {
        "revocations": service.retry_pending,
        "reaper": service.expire_due,
        "policy": policy.maybe_reload,
        "keys": keys.reload,
    }
    return Components(service=service, worker=Worker(jobs, settings.worker_interval))


def create_app(settings: Settings, components: Components | None = None) -> FastAPI:
    parts = components or build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts.service.policy.install_sighup()
        parts.worker.run_once()  # resume pending revocations and expire stale grants before serving
        parts.worker.start()
        yield
        parts.worker.stop()

    app = FastAPI(title="credential broker", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = parts.service
    app.state.components = parts
    for module in (grants, oauth, wellknown, health):
        app.include_router(module.router)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `broker serve` (BROKER_CONFIG names the file); built at call, not import."""
    from broker.config import load_settings

    return create_app(load_settings())
