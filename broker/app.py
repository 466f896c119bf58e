"""create_app(settings): the one place where concrete objects are built and wired."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from broker import metrics
from broker.api import errors, grants, health, oauth, operators, wellknown
from broker.api.limits import BodyLimit
from broker.backends import Backend, JwtBackend, McpBackend
from broker.backends.vault import VaultClient
from broker.backends.vault_secret import VaultSecretBackend
from broker.backends.vault_token import VaultTokenBackend
from broker.config import Settings
from broker.grants import GrantService
from broker.grants.operations import Operations
from broker.grants.reconcile import Reconciler
from broker.grants.workers import Worker
from broker.identity import Attestors
from broker.identity.dpop import DpopVerifier
from broker.ledger import LedgerStore, make_engine, migrate
from broker.ledger.deployment import deployment_id
from broker.ledger.keyring import DatabaseKeyRepository, read_kek
from broker.ledger.replay import ReplayStore
from broker.policy import PolicySource
from broker.signing import FileKeyRepository, KeyRepository, KeyStore

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The concrete objects of one broker process."""

    service: GrantService
    worker: Worker
    operations: Operations
    metrics: metrics.Metrics


def open_ledger(settings: Settings) -> LedgerStore:
    """The ledger store for the configured database, schema created if missing."""
    if settings.database.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.database, sqlite_synchronous=settings.sqlite_synchronous, pool=settings.db_pool)
    migrate.upgrade(engine)  # the same Alembic migrations on SQLite and PostgreSQL
    return LedgerStore(engine)


def open_keys(settings: Settings, ledger: LedgerStore | None = None) -> KeyStore:
    """Signing keys: a 0600 file per key, or sealed rows in the ledger database shared by replicas."""
    max_ttl = max((b.max_ttl for b in settings.boundaries), default=3600)
    repo: KeyRepository = FileKeyRepository(settings.data_dir / "keys")
    if settings.key_repository == "database":
        kek = read_kek(settings.key_encryption_key, settings.key_encryption_key_file)
        repo = DatabaseKeyRepository((ledger or open_ledger(settings)).engine, kek)
    return KeyStore(repo, algorithm=settings.signing_algorithm, max_token_ttl=max_ttl)


def build_backends(
    settings: Settings, keys: KeyStore, vault: VaultClient | None = None, deployment: str = ""
) -> dict[str, Backend]:
    backends: dict[str, Backend] = {"jwt": JwtBackend(keys, settings.issuer), "mcp": McpBackend(keys, settings.issuer)}
    if vault is not None:  # one Vault client (one login, one token) serves both Vault backends
        backends["vault_token"] = VaultTokenBackend(vault, deployment)
        backends["vault_secret"] = VaultSecretBackend(vault)
    return backends


def build(settings: Settings, clock: Callable[[], float] = time.time) -> Components:
    """Build every component from settings; nothing here runs at import time. `clock`: tests inject theirs."""
    ledger = open_ledger(settings)
    keys = open_keys(settings, ledger)
    vault = VaultClient(settings.vault) if settings.vault else None
    policy = PolicySource(
        path=settings.policy_file,
        inline=settings.policy,
        boundaries={b.name: b for b in settings.boundaries},
        attestors={a.name for a in settings.attestors},
    )
    attestors = Attestors(settings.attestors, broker_issuer=settings.issuer, clock=clock)
    service = GrantService(
        settings=settings,
        attestors=attestors,
        policy=policy,
        backends=build_backends(settings, keys, vault, deployment_id(ledger.engine, settings.deployment_id)),
        ledger=ledger,
        keys=keys,
        # one replay check for every worker and replica: the ledger database (a proof is used once)
        dpop=DpopVerifier(clock=clock, seen=ReplayStore(ledger.engine, settings.dpop_replay_capacity).seen),
        clock=clock,
    )
    jobs = {
        "reconcile": Reconciler(
            service.backends, settings.boundaries, ledger,
            grace=settings.reconcile_grace, interval=settings.reconcile_interval,
        ).run,  # first pass before serving
        "revocations": service.retry_pending,
        "reaper": service.expire_due,
        "freezes": ledger.refresh_freezes,
        "policy": policy.maybe_reload,
        "keys": keys.reload,
    }
    if vault is not None:
        jobs["vault_login"] = vault.ensure_session  # renew the broker's own token even when idle
    meters = metrics.Metrics(ledger, [b.name for b in settings.boundaries], vault=vault)
    operations = Operations(service, on_done=meters.revocation_seconds.observe)
    return Components(service, Worker(jobs, settings.worker_interval), operations, meters)


def create_app(settings: Settings, components: Components | None = None) -> FastAPI:
    parts = components or build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts.service.policy.install_sighup()
        parts.worker.run_once()  # resume pending revocations and expire stale grants before serving
        parts.worker.start()
        yield
        parts.worker.stop()
        parts.operations.close()

    app = FastAPI(title="credential broker", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = parts.service
    app.state.components = parts
    app.state.operations = parts.operations
    for module in (grants, operators, oauth, wellknown, health):
        app.include_router(module.router)
    metrics.install(app, parts.metrics)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `broker serve` (BROKER_CONFIG names the file); built at call, not import."""
    from broker.config import load_settings

    return create_app(load_settings())
