"""`broker serve --log-format`: text or json, anything else is a usage error before anything starts."""

from __future__ import annotations

import io
import json
import logging
import logging.config

from typer.testing import CliRunner

from broker.cli import app
from broker.logs import log_config


def test_an_unknown_log_format_is_a_usage_error() -> None:
    run = CliRunner().invoke(app, ["serve", "--log-format", "xml"])
    assert run.exit_code == 2 and "--log-format" in run.output


def _emit(log_format: str, access_log: bool = True) -> list[str]:
    config = log_config(log_format, "info", access_log=access_log)
    stream = io.StringIO()
    config["handlers"]["stderr"] = {"class": "logging.StreamHandler", "formatter": "broker", "stream": stream}
    logging.config.dictConfig(config)
    try:
        logging.getLogger("broker.policy.source").info("policy loaded from %s", "inline policy")
        logging.getLogger("broker.access").info("GET /healthz 200", extra={"route": "/healthz", "status": 200})
    finally:
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                                   "root": {"handlers": [], "level": "WARNING"}})  # fmt: skip
        logging.getLogger("broker.access").setLevel(logging.NOTSET)
    return stream.getvalue().splitlines()


def test_json_lines_and_text_lines_carry_the_broker_info_lines_and_access_lines() -> None:
    records = [json.loads(line) for line in _emit("json")]
    assert [(r["level"], r["logger"]) for r in records] == [("info", "broker.policy.source"), ("info", "broker.access")]
    assert records[1]["route"] == "/healthz" and records[1]["status"] == 200 and records[0]["ts"].endswith("Z")
    text = _emit("text")
    assert "INFO broker.policy.source policy loaded from inline policy" in text[0]
    assert text[1].endswith("GET /healthz 200 route=/healthz status=200")
    assert len(_emit("json", access_log=False)) == 1  # --no-access-log
