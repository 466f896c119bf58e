"""Operator output is inert: ledger strings print literally, never as rich markup, control characters escaped."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from broker.cli import app
from tests.sdk.live import LiveBroker, sdk_policy

# a workload chooses its subject at a generic OIDC issuer (attestation refuses control characters, not markup)
SUBJECT = "agent-[bold]x[/bold][/x]"
SUBJECT_SHOWN = SUBJECT
TASK = "[/x]\x1b[2J\u202e"  # a task id from before the task grammar (the ledger keeps it)
TASK_SHOWN = "[/x]\\x1b[2J\\u202e"
REASON = "leak \x1b]0;owned\x07 [red]x[/red]"  # an operator's reason: free text
REASON_SHOWN = "leak \\x1b]0;owned\\x07 [red]x[/red]"


@pytest.fixture
def live(tmp_path, issuers) -> Iterator[LiveBroker]:
    policy = copy.deepcopy(sdk_policy())
    policy["rules"].append({"name": "agents", "match": {"attestor": "oidc", "subject": "agent-**"},
                            "allow": [{"boundary": "orders", "scopes": ["read"], "max_ttl": "5m"}]})  # fmt: skip
    broker = LiveBroker.start(tmp_path, issuers, policy=policy)
    yield broker
    broker.stop()


@pytest.fixture
def grant_id(live, issuers) -> str:
    token = issuers.oidc.token(sub=SUBJECT)
    body = {"task": "legacy", "boundary": "orders", "scopes": ["read"], "ttl": 300}
    answer = httpx.post(f"{live.url}/v1/grants", json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text
    with live.ledger.engine.begin() as conn:  # as a row written before the grammar refused such ids
        conn.execute(text("UPDATE grants SET task = :t WHERE id = :id"), {"t": TASK, "id": answer.json()["grant_id"]})
    return answer.json()["grant_id"]


@pytest.fixture
def cli(live, issuers):  # noqa: ANN201
    env = {"BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": issuers.oidc.token(sub="ops-alice", lifetime=600),
           "COLUMNS": "400", "TERM": "xterm-256color"}  # fmt: skip

    def run(*args: str):  # noqa: ANN202
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == 0, (result.output, result.exception)
        assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
        return result.output

    return run


def test_grants_ls_prints_markup_and_escapes_literally(cli, grant_id):
    shown = cli("grants", "ls")
    assert grant_id in shown and TASK_SHOWN in shown and SUBJECT_SHOWN in shown


def test_revoke_freeze_and_report_print_literally(cli, grant_id):
    revoked = cli("revoke", "--grant-id", grant_id, "--reason", REASON, "--yes")
    assert REASON_SHOWN in revoked and f"grant_id={grant_id}" in revoked
    frozen = cli("freeze", "--boundary", "orders", "--reason", REASON)
    assert "frozen: boundary orders" in frozen
    listed = cli("freezes")
    assert REASON_SHOWN in listed and "ops-alice" in listed
    report = cli("report", "blast-radius", "--subject", SUBJECT)
    assert report.startswith(SUBJECT_SHOWN + " from ")
    nothing = cli("revoke", "--task", "legacy", "--reason", "again")
    assert "nothing to revoke" in nothing


def test_audit_tail_escapes_what_json_leaves_raw(cli, grant_id):
    cli("revoke", "--grant-id", grant_id, "--reason", REASON, "--yes")
    events = [json.loads(line) for line in cli("audit", "tail", "-n", "50").splitlines()]
    assert SUBJECT in {e["subject"] for e in events}  # the values survive, escaped only in the line
    assert REASON in {(e["detail"] or {}).get("reason") for e in events}


def test_an_error_detail_from_the_broker_prints_literally(live, issuers):
    env = {"BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": issuers.oidc.token(sub="ops-alice"), "COLUMNS": "400"}
    result = CliRunner().invoke(app, ["grants", "ls", "--since", "[/x]\x1b[2J"], env=env)  # the detail quotes it
    assert result.exit_code == 2, (result.output, result.exception)
    assert "400 invalid_request: '[/x]\\x1b[2J' is not a time" in result.output
