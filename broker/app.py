"""create_app(settings): the one place where concrete objects are built and wired."""

from __future__ import annotations

import faulthandler
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from broker import metrics
from broker.api import errors, grants, health, oauth, openapi, operators, signals, wellknown
from broker.api import log as log_routes
from broker.api.access import AccessLog
from broker.api.limits import BodyLimit
from broker.backends import Backend, JwtBackend, McpBackend, TxnTokenBackend
from broker.backends.vault import VaultClient
from broker.backends.vault_secret import VaultSecretBackend
from broker.backends.vault_token import VaultTokenBackend
from broker.config import Settings, WitnessConfig
from broker.errors import ConfigError
from broker.grants import GrantService
from broker.grants.operations import Operations
from broker.grants.readiness import Readiness, readiness_of
from broker.grants.reconcile import Reconciler
from broker.grants.withdrawal import Withdrawal
from broker.grants.workers import Worker
from broker.identity import Attestors
from broker.identity.dpop import DpopVerifier
from broker.identity.x509 import SvidAttestors
from broker.ledger import LedgerStore, make_engine, migrate
from broker.ledger.deployment import deployment_id
from broker.ledger.keyring import DatabaseKeyRepository, read_kek
from broker.ledger.replay import ReplayStore
from broker.ledger.writer_process import WriterServer
from broker.policy import PolicySource
from broker.signals.transmitter import Transmitter, build_transmitter, signal_outbox
from broker.signing import FileKeyRepository, KeyRepository, KeyStore, SigningKey
from broker.transparency.checkpoint import CosignatureVerifier
from broker.transparency.checkpoints import Checkpointer
from broker.transparency.keys import DatabaseLogKeys, FileLogKeys, LogKeyRepository, load_or_create
from broker.transparency.log import LogReader
from broker.transparency.note import NoteError
from broker.transparency.push import WitnessPusher, WitnessTarget
from broker.transparency.service import TransparencyLog

log = logging.getLogger(__name__)
ISSUING_THREADS = 40
STARTUP_READY_WAIT = 5.0  # seconds serving waits for the ledger and keys checks' first pass


@dataclass
class Components:
    """The concrete objects of one broker process."""

    service: GrantService
    worker: Worker
    operations: Operations
    metrics: metrics.Metrics
    log: TransparencyLog
    readiness: Readiness
    signals: Transmitter | None = None


def open_ledger(settings: Settings, *, writer_process: bool = False) -> LedgerStore:
    """The ledger store for the configured database, schema created if missing. `writer_process`: its
    writes are committed by the ledger writer process `broker serve` runs (see `serve_ledger_writer`)."""
    if settings.database.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.database, sqlite_synchronous=settings.sqlite_synchronous, pool=settings.db_pool)
    migrate.upgrade(engine)  # the same Alembic migrations on SQLite and PostgreSQL
    return LedgerStore(engine, writer_dir=settings.data_dir if writer_process else None)


def serve_ledger_writer(settings: Settings) -> None:
    """The ledger writer process's work (broker/ledger/writer_process.py): the ledger with the same append
    listeners as a worker's (the signals outbox), serving the workers' writes until the process ends."""
    ledger = open_ledger(settings)
    signal_outbox(settings, ledger, time.time)
    server = WriterServer(ledger.apply_writes, settings.data_dir)
    server.listen()
    try:
        server.serve_forever()
    finally:
        server.close()


def open_ledger_read_only(settings: Settings) -> LedgerStore:
    """The ledger for offline readers: it must exist at the schema head; opened read-only, never migrated."""
    engine = make_engine(settings.database, sqlite_synchronous=settings.sqlite_synchronous, pool=settings.db_pool,
                         read_only=True)  # fmt: skip
    try:
        with engine.connect() as connection:
            revision = migrate.current(connection)
    except SQLAlchemyError:
        revision = None  # no such file or database, or not ours
    if revision is None:
        raise ConfigError(f"no broker ledger at {settings.database}: check --data-dir / --database-url")
    return LedgerStore(engine)


def open_policy(settings: Settings) -> PolicySource:
    """The policy of the settings, compiled against their boundaries and attestors (ConfigError when broken)."""
    return PolicySource(
        path=settings.policy_file,
        inline=settings.policy,
        boundaries={b.name: b for b in settings.boundaries},
        attestors={a.name for a in settings.attestors} | {a.name for a in settings.x509_attestors},
    )


def open_keys(settings: Settings, ledger: LedgerStore | None = None) -> KeyStore:
    """Signing keys: a 0600 file per key, or sealed rows in the ledger database shared by replicas."""
    max_ttl = max((b.max_ttl for b in settings.boundaries), default=3600)
    repo: KeyRepository = FileKeyRepository(settings.data_dir / "keys")
    if settings.key_repository == "database":
        kek = read_kek(settings.key_encryption_key, settings.key_encryption_key_file)
        repo = DatabaseKeyRepository((ledger or open_ledger(settings)).engine, kek)
    return KeyStore(repo, algorithm=settings.signing_algorithm, max_token_ttl=max_ttl)


def read_keys(settings: Settings) -> list[SigningKey]:
    """The stored signing keys, read-only: never makes a key, a folder or a database (`broker keys list`)."""
    if settings.key_repository == "database":
        kek = read_kek(settings.key_encryption_key, settings.key_encryption_key_file)
        return DatabaseKeyRepository(open_ledger_read_only(settings).engine, kek).load_all()
    return FileKeyRepository(settings.data_dir / "keys").load_all()


def open_log(settings: Settings, ledger: LedgerStore) -> TransparencyLog:
    """The transparency log over the ledger; its key is stored like the signing keys, made on first start."""
    repo = log_keys(settings, ledger)
    signer = partial(load_or_create, repo, settings.log_name)  # re-read on each signing: another replica may rotate
    signer()
    checkpointer = Checkpointer(ledger.engine, signer, interval=settings.log_checkpoint_interval)
    reader = LogReader(ledger.engine)
    pusher = WitnessPusher(ledger.engine, reader, checkpointer, [_witness(w) for w in settings.log_witnesses])
    return TransparencyLog(settings.log_name, reader, checkpointer, repo, pusher)


def log_keys(settings: Settings, ledger: LedgerStore) -> LogKeyRepository:
    """Where the log key lives: beside the signing keys (a 0600 file, or sealed rows shared by replicas)."""
    if settings.key_repository == "database":
        return DatabaseLogKeys(ledger.engine, read_kek(settings.key_encryption_key, settings.key_encryption_key_file))
    return FileLogKeys(settings.data_dir / "log_key")


def _witness(config: WitnessConfig) -> WitnessTarget:
    try:
        return WitnessTarget(config.url, CosignatureVerifier.parse(config.key))
    except NoteError as exc:
        raise ConfigError(f"log_witnesses: {config.url}: key: {exc}") from None


def build_backends(
    settings: Settings, keys: KeyStore, vault: VaultClient | None = None, deployment: str = ""
) -> dict[str, Backend]:
    backends: dict[str, Backend] = {"jwt": JwtBackend(keys, settings.issuer), "mcp": McpBackend(keys, settings.issuer),
                                    "txn_token": TxnTokenBackend(keys, settings.issuer)}  # fmt: skip
    if vault is not None:  # one Vault client (one login, one token) serves both Vault backends
        backends["vault_token"] = VaultTokenBackend(vault, deployment)
        backends["vault_secret"] = VaultSecretBackend(vault)
    return backends


def preflight(settings: Settings, clock: Callable[[], float] = time.time) -> tuple[PolicySource, Attestors]:
    """Everything a start can refuse without writing anything: the policy, the attestors, the KEK, witnesses.

    Run before the ledger is created or a key is made, so a broken config leaves nothing behind.
    """
    policy = open_policy(settings)
    certificates = SvidAttestors(settings.x509_attestors, clock=clock) if settings.x509_attestors else None
    attestors = Attestors(settings.attestors, broker_issuer=settings.issuer, clock=clock, certificates=certificates)
    try:
        if settings.key_repository == "database":
            read_kek(settings.key_encryption_key, settings.key_encryption_key_file)
        for witness in settings.log_witnesses:
            _witness(witness)
    except ConfigError:
        attestors.close()
        raise
    return policy, attestors


def build(settings: Settings, clock: Callable[[], float] = time.time) -> Components:
    """Build every component from settings; nothing here runs at import time. `clock`: tests inject theirs."""
    policy, attestors = preflight(settings, clock)
    ledger = open_ledger(settings, writer_process=settings.ledger_writer == "process")
    keys = open_keys(settings, ledger)
    transparency = open_log(settings, ledger)
    vault = VaultClient(settings.vault) if settings.vault else None
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
    transmitter = build_transmitter(settings, ledger, keys, clock)
    jobs = {
        "reconcile": Reconciler(
            service.backends, settings.boundaries, ledger,
            grace=settings.reconcile_grace, interval=settings.reconcile_interval,
        ).run,  # first pass before serving
        "revocations": service.outbox.retry_pending,
        "reaper": service.outbox.expire_due,
        "freezes": ledger.records.refresh_freezes,
        "policy": policy.maybe_reload,
        "keys": keys.reload,
        "log_checkpoint": transparency.checkpointer.maybe_sign,
        "log_witnesses": transparency.witnesses.run,
        "signals": transmitter.delivery.run_once,  # retries with backoff; commits also wake it at once
    }
    if vault is not None:
        jobs["vault_login"] = vault.ensure_session  # renew the broker's own token even when idle
    readiness = readiness_of(service.readiness_checks(), settings.boundaries)
    # the outbox age is measured on the ledger's own clock (wall time), not the injected one
    meters = metrics.Metrics(ledger, [b.name for b in settings.boundaries], vault=vault, readiness=readiness,
                             policy=policy)  # fmt: skip
    transparency.witnesses.on_reject = lambda name, status: meters.witness_rejections.labels(name, str(status)).inc()
    operations = Operations(service, on_done=meters.revocation_seconds.observe)
    withdrawal = Withdrawal(operations, settings.on_withdraw)
    service.withdrawal = withdrawal
    policy.listeners.append(withdrawal.on_reload)
    jobs["withdrawal"] = withdrawal.run_due  # a reload the ledger refused is applied on a later pass
    meters.watch_withdrawal(withdrawal)
    transmitter.install_metrics(meters.registry)
    worker = Worker(jobs, settings.worker_interval)
    return Components(service, worker, operations, meters, transparency, readiness, transmitter)


def create_app(settings: Settings, components: Components | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """`freeze_gc`: a serving process (`broker serve`'s workers), not a test building many apps in one."""
    parts = components or build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts.service.policy.install_sighup()
        parts.readiness.start()  # first results while the worker's first pass runs
        parts.worker.run_once()  # resume pending revocations and expire stale grants before serving
        parts.worker.start()
        parts.readiness.wait_for(lambda r: r.ready(), timeout=STARTUP_READY_WAIT)
        if freeze_gc:  # what start-up built lives as long as the process: out of every later collection
            gc.freeze()
        log.info("broker started: workers running, %d boundaries, policy %s",
                 len(settings.boundaries), parts.service.policy.current.digest[:12])  # fmt: skip
        yield
        parts.worker.stop()
        parts.operations.close()  # background revocations commit end events, which wake the SET delivery
        if parts.signals:
            parts.signals.delivery.close()
        parts.readiness.stop()

    # FastAPI's own OpenTelemetry hooks off: the broker's metrics are its own (broker/metrics.py), and
    # asking whether a provider is configured costs every request its share (FastAPI >= 0.160 asks)
    app = FastAPI(title="credential broker", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False})  # fmt: skip
    app.state.service = parts.service
    app.state.components = parts
    app.state.operations = parts.operations
    app.state.readiness = parts.readiness
    app.state.signals = parts.signals
    # POST /v1/grants prepares on these (broker/api/grants.py): as many as Starlette's own pool; never
    # shut down with the lifespan (an app may be served again, as tests do): idle threads end at exit
    app.state.issuing_threads = ThreadPoolExecutor(max_workers=ISSUING_THREADS, thread_name_prefix="broker-issue")
    # first: the two calls every task makes (broker/api/grants.py)
    app.router.routes += [grants.ISSUE_ROUTE, grants.COMPLETE_ROUTE]
    # the routers' routes, not the routers: FastAPI >= 0.160 keeps an included router whole and matches
    # it twice per request (its routes once to find it, again to pick one), which cost the sixth router's
    # routes (/healthz) about 30 µs of CPU a request; the routes carry their routers' prefix, tags and
    # dependencies from the moment they are declared
    for module in (grants, log_routes, operators, oauth, wellknown, health, signals):
        app.router.routes += module.router.routes
    metrics.install(app, parts.metrics)
    openapi.install(app, documented=[grants.ISSUE_DOC, grants.COMPLETE_DOC])
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, observe=parts.metrics.observe_http)  # outermost: ids and lines for every answer
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `broker serve` (BROKER_CONFIG names the file); built at call, not import."""
    from broker.config import load_settings

    dump_stacks_on_sigusr1()
    return create_app(load_settings(), freeze_gc=True)


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` prints every thread's stack to stderr: what a broker that will not stop is waiting on."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
