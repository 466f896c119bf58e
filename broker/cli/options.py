"""The options the `broker` commands share, and the settings (or a clean exit) they lead to.

Commands that call a running broker are decorated with `remote`: they get `--url`,
`--token-file` and `--token-command` from here, once, and receive a `Remote` as `broker`.
Commands that filter grants or events are decorated with `filters(...)`, naming the filters they
take; they receive the given ones as `where`. Commands that can read a broker's own files instead of
its API are decorated with `offline`: they get `--config`, `--data-dir`, `--database-url` and
receive a `Local` as `local`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from broker.cli.output import params
from broker.cli.remote import Remote
from broker.config import Settings, load_settings
from broker.errors import ConfigError

if TYPE_CHECKING:
    from broker.ledger import LedgerStore

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


# every filter a command may take, by its parameter name (and wire name: the API's query parameter)
FILTERS = {"kind": KindOpt, "subject": SubjectOpt, "subject_glob": GlobOpt, "rule": RuleOpt,
           "policy_revision": RevisionOpt, "boundary": BoundaryOpt, "task": TaskOpt, "since": SinceOpt,
           "until": UntilOpt}  # fmt: skip
Where = dict[str, str]  # the filters given, by wire name; those left out are absent


@dataclass(frozen=True)
class Local:
    """A broker's own config, data directory or database, read without its API."""

    config: Path | None
    data_dir: Path | None
    database_url: str | None

    def settings(self) -> Settings:
        return settings_or_exit(self.config, self.data_dir, self.database_url)

    def ledger(self) -> LedgerStore | None:
        """The ledger, read-only, when any offline option is given; else None (use the API)."""
        return offline_ledger(self.config, self.data_dir, self.database_url)


def _option(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


_REMOTE_OPTIONS = [_option("url", UrlOpt, DEFAULT_URL), _option("token_file", TokenFileOpt),
                   _option("token_command", TokenCmdOpt)]  # fmt: skip
_OFFLINE_OPTIONS = [_option("config", ConfigOpt), _option("data_dir", DataDirOpt), _option("database_url", DbOpt)]


def remote(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` the broker options; it takes a `broker: Remote` parameter instead of them."""

    def connect(url: str, token_file: Path | None, token_command: str | None) -> Remote:
        env_token = os.environ.get("BROKER_IDENTITY_TOKEN", "")  # the one place the CLI reads it
        return Remote(url, token_file, token_command, env_token)

    return _instead_of(command, "broker", _REMOTE_OPTIONS, connect, at_end=True)


def filters(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give `command` the named filter options where its `where: Where` parameter stands."""
    options = [_option(name, FILTERS[name]) for name in names]
    return lambda command: _instead_of(command, "where", options, params)


def offline(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` the offline options where its `local: Local` parameter stands."""
    return _instead_of(command, "local", _OFFLINE_OPTIONS, Local)


def _instead_of(command: Callable[..., Any], name: str, options: list[inspect.Parameter],
                build: Callable[..., Any], at_end: bool = False) -> Callable[..., Any]:  # fmt: skip
    """`command` with `options` in the place of its parameter `name`, which receives `build(**their values)`."""
    signature = inspect.signature(command, eval_str=True)  # typer reads typer.Option from real annotations
    own = list(signature.parameters.values())
    at = len(own) - 1 if at_end else [p.name for p in own].index(name)
    kept = [p for p in own if p.name != name]
    parameters = kept[:at] + options + kept[at:]
    option_names = [o.name for o in options]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        given = {option: kwargs.pop(option) for option in option_names}
        return command(*args, **{name: build(**given)}, **kwargs)

    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run
