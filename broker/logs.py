"""Log lines: one JSON object (or one text line) per event, each with the request id when there is one.

The standard library's logging with a small JSON formatter, not structlog: every library in the
process (uvicorn, SQLAlchemy, hvac) already logs through stdlib logging, so one formatter on the root
handler covers them all, and the broker needs no further dependency for it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from broker import context

FORMATS = ("text", "json")
# the fields a record carries for the access line (broker/api/access.py), rendered as their own keys
ACCESS_FIELDS = ("method", "route", "status", "duration_ms", "subject_fp")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def _timestamp(record: logging.LogRecord) -> str:
    utc = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", utc) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "request_id"?, extra fields…, "exc"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or context.request_id()
        if request_id:
            line["request_id"] = request_id
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k != "request_id"})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger> [<request id>] <message> key=value…` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or context.request_id()
        extra = " ".join(f"{k}={vars(record)[k]}" for k in ACCESS_FIELDS if k in vars(record))
        parts = [_timestamp(record), record.levelname, record.name]
        parts += [f"[{request_id}]"] if request_id else []
        parts += [record.getMessage()] + ([extra] if extra else [])
        text = " ".join(parts)
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def log_config(log_format: str = "text", level: str = "info", *, access_log: bool = True) -> dict[str, Any]:
    """A `logging.config.dictConfig` (uvicorn's `log_config`): every logger to stderr in one format.

    The broker's own INFO lines (policy loaded, keys rotated, workers started) go out at `info`;
    the access lines are the `broker.access` logger's, off with `access_log=False`.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    formatter = {"()": f"broker.logs.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"}
    handler = {"class": "logging.StreamHandler", "formatter": "broker", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"broker": formatter},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {  # uvicorn's own handlers replaced by ours, so its lines share the format
            **{name: {"handlers": [], "propagate": True, "level": level.upper()}
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
            "broker.access": {"level": level.upper() if access_log else "WARNING"},
        },
    }
