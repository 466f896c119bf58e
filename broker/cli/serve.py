"""`broker serve` (production), `broker dev` and `broker dev-token` (development only)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from broker.cli.ledger_writer import LedgerWriterProcess
from broker.cli.listening import OwnSockets, bind, reuse_port_available
from broker.cli.options import ConfigOpt, settings_or_exit
from broker.cli.x509 import serve_options
from broker.config import Settings, refuse_embedded_ledger
from broker.errors import BrokerError, ConfigError

# uvicorn's C HTTP parser (its httptools protocol, with a cap on request heads: broker/serving.py) and
# event loop (both installed with `uvicorn[standard]`), named rather than left to "auto", so a missing
# one is an error at start-up instead of a quietly slower broker.
SERVER_SPEED = {"loop": "uvloop", "http": "broker.serving:CappedHeadProtocol"}
APP = "broker.app:app_from_env"  # a uvicorn factory: each worker builds its own app


def default_workers() -> int:
    """One worker process per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    workers: Annotated[
        Optional[int], typer.Option(help="Worker processes (default: one per core).", show_default=False)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    keep_alive: Annotated[int, typer.Option(help="Seconds an idle HTTP connection stays open.")] = 75,
    log_format: Annotated[str, typer.Option(help="Log lines: text, or json (one object a line).")] = "text",
    access_log: Annotated[bool, typer.Option(help="One log line per request (route, status, duration).")] = True,
) -> None:
    """Run the broker with a config file (production)."""
    from broker.logs import FORMATS, log_config

    if log_format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--log-format")

    settings = settings_or_exit(config)  # validate before forking workers: errors name file and field
    _preflight(settings)
    if settings.config:
        os.environ["BROKER_CONFIG"] = str(settings.config)
    workers = workers or default_workers()
    _prepare_shared_state(settings)
    tls = serve_options(settings)  # HTTPS when the config has `tls:` (its own protocol class)
    writer = _ledger_writer(settings, workers)
    try:
        _run(
            host=host, port=port, workers=workers,
            log_level=log_level, access_log=False, proxy_headers=False,  # the broker's access line replaces uvicorn's
            log_config=log_config(log_format, log_level, access_log=access_log), **{**SERVER_SPEED, **tls},
            # longer than clients' and load balancers' idle timeouts (httpx: 5 s), so a client never
            # reuses a connection the server is closing at that instant ("server disconnected")
            timeout_keep_alive=keep_alive,
        )
    finally:
        survived = writer.stop() if writer is not None else True
    if not survived:
        typer.echo("error: the ledger writer process ended while serving; the broker stopped", err=True)
        raise typer.Exit(1)


def _run(**options: Any) -> None:
    """uvicorn serving the broker; several workers each on their own SO_REUSEPORT socket (listening.py)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if options["workers"] == 1 or not reuse_port_available():
        uvicorn.run(APP, factory=True, **options)
        return
    config = uvicorn.Config(APP, factory=True, **options)
    try:
        reserved = bind(config.host, config.port, listen=False)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {config.host}:{config.port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    try:
        Multiprocess(config, sockets=OwnSockets(config.host, config.port)).run()
    finally:
        reserved.close()


def _ledger_writer(settings: Settings, workers: int) -> LedgerWriterProcess | None:
    """Start the ledger writer process when the config asks for it (`auto`: more than one worker), and
    tell the workers which writer to use (they read the setting from the environment)."""
    mode = settings.ledger_writer
    if mode == "auto":
        mode = "process" if workers > 1 else "thread"
    os.environ["BROKER_LEDGER_WRITER"] = mode
    if mode == "thread":
        return None
    try:
        return LedgerWriterProcess.start(settings.data_dir)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _preflight(settings: Settings) -> None:
    """Refuse a config that cannot serve before anything is written (exit 2, naming file and field)."""
    from broker.app import preflight

    try:
        refuse_embedded_ledger(settings)
        preflight(settings)[1].close()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _prepare_shared_state(settings: Settings) -> None:
    """Schema and first signing key, once, before the workers fork: otherwise each would race to make them
    (two first keys, each worker signing with one the others have not loaded). A failure removes what it made."""
    from broker.app import open_keys, open_ledger

    try:
        with _undone_on_failure(settings.data_dir):
            ledger = open_ledger(settings)
            open_keys(settings, ledger)
            ledger.engine.dispose()
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # the data dir: not writable, a file where a folder should be, a full disk
        typer.echo(f"error: {exc.filename or settings.data_dir}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


@contextmanager
def _undone_on_failure(data_dir: Path) -> Iterator[None]:
    """On an exception, remove what appeared in `data_dir` meanwhile (all of it, if this made the folder)."""
    existed = data_dir.exists()
    before = set(data_dir.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif data_dir.exists():
            for path in set(data_dir.iterdir()) - before:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def dev(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where dev keys and the ledger live.")] = Path(".broker"),
    postgres_url: Annotated[str, typer.Option("--postgres-url", help="PostgreSQL of the demo-db boundary.")] = (
        "postgresql://postgres@127.0.0.1:5432/test"
    ),
    vault: Annotated[bool, typer.Option("--vault/--no-vault", help="Start OpenBao (demo-kv, demo-db).")] = True,
    tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS; accept dev.local X.509-SVIDs (dev-svid).")] = False,
) -> None:
    """Run the broker on 127.0.0.1 with a demo config, a dev identity issuer and an OpenBao dev server."""
    import uvicorn

    from broker.app import create_app, dump_stacks_on_sigusr1
    from broker.dev import dev_token

    server = None
    dump_stacks_on_sigusr1()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # uvicorn re-raises SIGTERM; unwind to stop OpenBao
    try:
        server, settings = _dev_vault_settings(data_dir, port, postgres_url if vault else None, vault, tls)
        dev_app = create_app(settings)
        log_key = dev_app.state.components.log.verifier().key_string()
        typer.echo(_dev_banner(settings, dev_token(settings.data_dir, "dev:demo-workload"), log_key))
        uvicorn.run(dev_app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=75,
                    **{**SERVER_SPEED, **serve_options(settings)})  # fmt: skip
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if server:
            server.stop()


def _dev_vault_settings(data_dir: Path, port: int, postgres_url: str | None, vault: bool, tls: bool = False):  # noqa: ANN202
    """Start OpenBao (when wanted), build the dev settings, apply the Vault plan; (server or None, settings)."""
    from broker.dev import ROOT_TOKEN_FILE, dev_settings, prepare_dev_vault, start_dev_vault

    if not vault:
        return None, dev_settings(data_dir, port, tls)
    server, parts = start_dev_vault(data_dir.resolve(), postgres_url)
    try:
        settings = dev_settings(data_dir, port, tls, **parts)
        prepare_dev_vault(settings, postgres_url)
    except BrokerError:
        server.stop()
        raise
    names = ", ".join(b["name"] for b in parts["extra_boundaries"])
    token_file = data_dir.resolve() / ROOT_TOKEN_FILE
    typer.echo(f"  openbao:  {server.addr}  root token in {token_file} (0600, dev only)  boundaries: {names}")
    return server, settings


def _dev_banner(settings: Settings, token: str, log_key: str) -> str:
    url = settings.issuer
    return f"""
  DEV MODE: local development identity issuer, demo config. Never use in production.
  broker:   {url}     data: {settings.data_dir}
  log key:  {log_key}
  Try it (another terminal):
    export ID_TOKEN=$(broker dev-token --subject dev:demo-workload --data-dir {settings.data_dir})
    curl -s -X POST {url}/v1/grants -H "Authorization: Bearer $ID_TOKEN" \\
         -H 'Content-Type: application/json' -d '{{"task":"hello","boundary":"demo","scopes":["read"],"ttl":300}}'
"""


def dev_token_cmd(
    subject: Annotated[str, typer.Option(help="Subject, e.g. dev:demo-workload or dev:operator.")],
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path(".broker"),
    lifetime: Annotated[int, typer.Option(help="Seconds.")] = 3600,
) -> None:
    """Print an identity token from the dev issuer (dev mode only)."""
    from broker.config import production_by_env
    from broker.dev import dev_token

    if production_by_env():
        typer.echo("error: dev tokens are refused when BROKER_ENV=production", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(dev_token(data_dir.resolve(), subject, lifetime))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(dev)
    app.command("dev-token")(dev_token_cmd)
