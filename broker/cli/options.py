"""The options the `broker` commands share, and the settings (or a clean exit) they lead to.

Commands that call a running broker are decorated with `remote`: they get `--url`,
`--token-file` and `--token-command` from here, once, and receive a `Remote` as `broker`.
"""

from __future__ import annotations

import functools
import inspect
import os
from enum import Enum
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from broker.cli.remote import Remote
from broker.config import Settings, load_settings
from broker.errors import ConfigError

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (or BROKER_CONFIG).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Data directory (keys, SQLite ledger).")]
DbOpt = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL of the ledger.")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="BROKER_URL", help="Broker base URL.")]
TokenFileOpt = Annotated[Optional[Path], typer.Option("--token-file", help="File holding the operator identity token.")]
TokenCmdOpt = Annotated[Optional[str], typer.Option("--token-command", help="Command printing the identity token.")]
class Output(str, Enum):
    json = "json"
    table = "table"


OutputOpt = Annotated[Optional[Output], typer.Option("--output", "-o", help="json or table.")]
JsonOpt = Annotated[bool, typer.Option("--json", hidden=True, help="Same as --output json.")]
SubjectOpt = Annotated[Optional[str], typer.Option("--subject", help="Exact subject (taken literally).")]
RuleOpt = Annotated[Optional[str], typer.Option("--rule", help="Policy rule id that decided (provenance).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--policy-revision", help="Policy revision (content hash).")]
GlobOpt = Annotated[Optional[str], typer.Option("--subject-glob", help="Subject pattern like 'repo:acme/*' (policy glob).")]
BoundaryOpt = Annotated[Optional[str], typer.Option("--boundary", help="Boundary name.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task id.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: recorded in the ledger.")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="ISO 8601, epoch seconds, or ago: 15m, 24h.")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="ISO 8601, epoch seconds, or ago.")]
KindOpt = Annotated[Optional[str], typer.Option("--kind", help="Event kind: issued, denied, revoked, ...")]
DEFAULT_URL = "http://127.0.0.1:8080"


def settings_or_exit(config: Path | None, data_dir: Path | None = None, database_url: str | None = None) -> Settings:
    """The settings, or the config errors (each naming file and field) and exit 2."""
    overrides = {k: v for k, v in {"data_dir": data_dir, "database_url": database_url}.items() if v is not None}
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def offline_ledger(config: Path | None, data_dir: Path | None, database_url: str | None):  # noqa: ANN201
    """The ledger of a local broker, read-only, when any offline option is given; else None (use the API)."""
    if config is None and data_dir is None and database_url is None:
        return None
    from broker.app import open_ledger_read_only

    try:
        return open_ledger_read_only(settings_or_exit(config, data_dir, database_url))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def as_json(output: Output | None, json_flag: bool, default: Output = Output.table) -> bool:
    """--output wins; the older --json flag still means JSON."""
    return (output or (Output.json if json_flag else default)) is Output.json


_REMOTE_OPTIONS = [
    inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_URL, annotation=UrlOpt),
    inspect.Parameter("token_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenFileOpt),
    inspect.Parameter("token_command", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenCmdOpt),
]


def remote(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` the broker options; it takes a `broker: Remote` parameter instead of them."""
    signature = inspect.signature(command, eval_str=True)  # typer reads typer.Option from real annotations
    own = [p for name, p in signature.parameters.items() if name != "broker"]

    @functools.wraps(command)
    def run(*args: Any, url: str, token_file: Path | None, token_command: str | None, **kwargs: Any) -> Any:
        env_token = os.environ.get("BROKER_IDENTITY_TOKEN", "")  # the one place the CLI reads it
        return command(*args, broker=Remote(url, token_file, token_command, env_token), **kwargs)

    run.__signature__ = signature.replace(parameters=own + _REMOTE_OPTIONS)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in own + _REMOTE_OPTIONS}
    return run
