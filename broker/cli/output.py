"""How the `broker` commands print: inert text, tables, JSON, and the error line that ends a command."""

from __future__ import annotations

import json
import unicodedata
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# exit codes of every `broker` command (listed in `broker --help` and docs/operator-guide.md)
OK, FAILED, USAGE, UNREACHABLE, NOT_AUTHORISED, TAMPERED = 0, 1, 2, 3, 4, 5
EXIT_CODES = ("Exit codes: 0 ok, 1 failed, 2 usage (bad option or value, config error), 3 broker unreachable, "
              "4 not authorised, 5 tampered (audit verify).")  # fmt: skip
console = Console()
errors = Console(stderr=True)
# control, format (bidi overrides, zero-width) and line/paragraph separators: shown as escapes
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def inert(value: object) -> Text:
    """A string from the ledger or the broker as literal text: never rich markup, control characters escaped.

    Subjects, tasks, reasons and actors are chosen by workloads and operators; printed raw, `[/x]`
    breaks the markup parser and an ESC byte drives the operator's terminal.
    """
    return Text("".join(_escaped(ch) for ch in str(value)))


def _escaped(ch: str) -> str:
    if unicodedata.category(ch) not in _UNPRINTABLE:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def say(*parts: object, console_: Console | None = None) -> None:
    """One line of fixed text and inert values (str parts are ours; others go through `inert`)."""
    line = Text.assemble(*(part if isinstance(part, str | Text) else inert(part) for part in parts))
    (console_ or console).print(line, highlight=False, soft_wrap=True)  # an id or path is never broken


def table(title: str, *columns: str, ids: tuple[str, ...] = ()) -> Table:
    """A table whose `ids` columns are never wrapped nor cut (`print_table` widens it); the others fold."""
    shown = Table(title=title, title_justify="left")
    for column in columns:
        shown.add_column(column, no_wrap=column in ids, overflow="ignore" if column in ids else "fold")
    return shown


def print_table(shown: Table) -> None:
    """Print at least as wide as the unbreakable cells need: an id stays whole and copyable on a narrow terminal."""
    needed = Measurement.get(console, console.options.update_width(10_000), shown).minimum
    wide = console if needed <= console.width else Console(width=needed)
    wide.print(shown)


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value))


def fail(message: str, code: int = USAGE) -> NoReturn:
    errors.print(Text("error: ", style="red") + inert(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def params(**values: Any) -> dict[str, Any]:
    """The given values only: an option left out is not sent."""
    return {key: value for key, value in values.items() if value is not None}
