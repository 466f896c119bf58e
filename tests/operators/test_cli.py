"""The operator CLI as a user runs it, against a broker serving HTTP on loopback."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from broker.cli import app
from tests.operators.fleet import auth, issue_fleet, subject_of
from tests.sdk.live import LiveBroker

WORKER = subject_of("worker")


class Http(httpx.Client):
    """An HTTP client of the live broker with the grant call `issue_fleet` uses."""

    def grant(self, token: str, boundary: str = "orders", scopes: list[str] | None = None, **body):  # noqa: ANN003, ANN201
        payload = {"task": body.pop("task", "t-1"), "boundary": boundary, "scopes": scopes or ["read"], **body}
        return self.post("/v1/grants", json=payload, headers=auth(token))


@pytest.fixture
def live(tmp_path, issuers) -> Iterator[LiveBroker]:
    broker = LiveBroker.start(tmp_path, issuers)
    yield broker
    broker.stop()


@pytest.fixture
def cli(live, issuers):  # noqa: ANN201
    env = {"BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": issuers.oidc.token(sub="ops-alice", lifetime=600)}

    def run(*args: str, input: str | None = None, **extra_env: str):  # noqa: A002, ANN202
        return CliRunner().invoke(app, list(args), env={**env, **extra_env}, input=input)

    return run


@pytest.fixture
def held(live, issuers):  # noqa: ANN201
    with Http(base_url=live.url) as http:
        return issue_fleet(http, issuers, 36)


def statuses(live: LiveBroker) -> dict[str, str]:
    return {g.id: g.status for g in live.ledger.grants()}


def test_grants_ls_table_json_and_pages(cli, held):
    table = cli("grants", "ls", "--subject", WORKER, "--limit", "5")
    assert table.exit_code == 0, table.output
    assert "5 grants" in table.output and "more: --cursor" in table.output
    everything = json.loads(cli("grants", "ls", "--all", "--limit", "7", "--json").output)
    assert sorted(g["grant_id"] for g in everything["items"]) == sorted(h.grant_id for h in held)
    assert everything["next_cursor"] is None


FILTERS = {  # option, value, which held grants it keeps (the options are declared once, in broker/cli/options.py)
    "subject": ("--subject", WORKER, lambda h: h.subject == WORKER),
    "subject-glob": ("--subject-glob", "system:serviceaccount:payments:w*", lambda h: h.subject == WORKER),
    "boundary": ("--boundary", "payments", lambda h: h.boundary == "payments"),
    "task": ("--task", "job-batch-3", lambda h: h.task == "job-batch-3"),
}


@pytest.mark.parametrize(("option", "value", "keep"), FILTERS.values(), ids=FILTERS.keys())
def test_each_filter_narrows_grants_ls_and_audit_export_online_and_offline(cli, live, held, option, value, keep):
    wanted = sorted(h.grant_id for h in held if keep(h))
    assert 0 < len(wanted) < len(held)
    listed = json.loads(cli("grants", "ls", option, value, "--all", "--json").output)["items"]
    assert sorted(g["grant_id"] for g in listed) == wanted
    offline = ("--data-dir", str(live.settings.data_dir))
    for where in ((), offline):
        run = cli("audit", "export", "--kind", "issued", option, value, *where)
        assert run.exit_code == 0, run.output
        assert sorted(json.loads(line)["grant_id"] for line in run.stdout.splitlines()) == wanted


def test_grants_table_never_wraps_or_cuts_ids(cli, held):
    """On a terminal narrower than the table (CliRunner's 80 columns), ids stay whole on one line."""
    table = cli("grants", "ls", "--subject", WORKER, "--limit", "5", COLUMNS="60")
    assert table.exit_code == 0, table.output
    rows = [line for line in table.output.splitlines() if WORKER in line]
    assert len(rows) == 5  # the subject is whole on each row, never folded onto a second line
    shown = json.loads(cli("grants", "ls", "--subject", WORKER, "--limit", "5", "-o", "json").output)["items"]
    for grant in shown:
        assert any(grant["grant_id"] in line and grant["task"] in line for line in rows), grant["grant_id"]
    assert "…" not in table.output


def test_audit_verify_and_tail_print_json_or_a_table(cli, held):
    assert json.loads(cli("audit", "verify").output)["ok"] is True  # JSON stays the default: scripts read it
    assert json.loads(cli("audit", "verify", "-o", "json").output)["ok"] is True
    verified = cli("audit", "verify", "-o", "table")
    assert verified.exit_code == 0 and "ledger verified" in verified.output
    rows = [line.split("│")[1:3] for line in verified.output.splitlines() if line.count("│") == 3]
    cells = {(name.strip(), value.strip()) for name, value in rows}
    assert ("ok", "True") in cells
    assert any(name == "checked" and int(value) >= len(held) for name, value in cells)
    lines = cli("audit", "tail", "-n", "3", "--kind", "issued").output.splitlines()
    events = [json.loads(line) for line in lines]  # JSON Lines by default, as before
    tail = cli("audit", "tail", "-n", "3", "--kind", "issued", "-o", "table")
    assert tail.exit_code == 0, tail.output
    rows = [line for line in tail.output.splitlines() if "issued" in line]
    assert len(rows) == 3 and "…" not in tail.output
    for event, row in zip(events, rows, strict=True):
        assert event["grant_id"] in row and event["subject"] in row and str(event["seq"]) in row
    bogus = cli("audit", "tail", "-o", "yaml")
    assert bogus.exit_code == 2 and "yaml" in bogus.output


def test_revoke_asks_first_and_a_no_changes_nothing(cli, live, held):
    before = statuses(live)
    refused = cli("revoke", "--subject", WORKER, "--reason", "leak", input="n\n")
    assert refused.exit_code == 1
    assert "Revoke 12 active grants (subject=system:serviceaccount:payments:worker)?" in refused.output
    assert statuses(live) == before
    nothing = cli("revoke", "--task", "no-such-task", "--reason", "leak")
    assert nothing.exit_code == 0 and "nothing to revoke" in nothing.output
    assert not [e for e in live.ledger.events(limit=100_000) if e.kind == "revocation_requested"]


@pytest.mark.parametrize("confirm", [("--yes",), ("-y",), ()], ids=["yes", "y", "prompt"])
def test_revoke_by_subject_through_the_cli(cli, live, held, confirm):
    done = cli("revoke", "--subject", WORKER, "--reason", "leaked token", *confirm, input="y\n")
    assert done.exit_code == 0, done.output
    assert "done" in done.output
    after = statuses(live)
    assert all(after[h.grant_id] == ("revoked" if h.subject == WORKER else "active") for h in held)


def test_revoke_json_reports_counts(cli, held):
    done = cli("revoke", "--boundary", "payments", "--reason", "rotate", "--yes", "--json")
    body = json.loads(done.output)
    assert (body["matched"], body["revoked"], body["pending"], body["status"]) == (18, 18, 0, "done")


def test_freeze_and_unfreeze(cli, live, issuers):
    assert cli("freeze", "--subject", WORKER, "--reason", "suspected").exit_code == 0
    listed = json.loads(cli("freezes", "--json").output)
    assert [(f["kind"], f["value"]) for f in listed] == [("subject", WORKER)]
    with Http(base_url=live.url) as http:
        assert http.grant(issuers.worker("worker")).json()["code"] == "subject_frozen"
        assert "unfrozen" in cli("unfreeze", "--subject", WORKER, "--reason", "clear").output
        assert http.grant(issuers.worker("worker")).status_code == 201


def test_audit_export_verify_and_tamper(cli, live, held, tmp_path):
    cli("revoke", "--task", held[0].task, "--reason", "drill", "--yes")
    export = tmp_path / "audit.jsonl"
    assert cli("audit", "export", "-o", str(export)).exit_code == 0
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(rows) == len(live.ledger.events(limit=100_000)) > len(held)
    verified = cli("audit", "verify", "--file", str(export))
    assert verified.exit_code == 0 and json.loads(verified.output)["gaps"] == 0

    offline = tmp_path / "offline.jsonl"
    assert cli("audit", "export", "-o", str(offline), "--data-dir", str(live.settings.data_dir)).exit_code == 0
    assert offline.read_text().splitlines()[: len(rows)] == export.read_text().splitlines()

    rows[3]["actor"] = "someone-else"
    export.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tampered = cli("audit", "verify", "--file", str(export))
    assert tampered.exit_code == 5 and f"first bad row seq={rows[3]['seq']}" in tampered.output
    assert json.loads(cli("audit", "verify").output)["ok"] is True  # through the API


def test_audit_tail_follows_new_events(cli, live, issuers, held):
    last = cli("audit", "tail", "-n", "3", "--kind", "issued")
    assert [json.loads(line)["grant_id"] for line in last.output.splitlines()] == [h.grant_id for h in held[-3:]]

    def later() -> None:
        time.sleep(0.5)
        with Http(base_url=live.url) as http:
            http.grant(issuers.worker("cron"), "payments", task="late")

    threading.Thread(target=later).start()
    followed = cli("audit", "tail", "-f", "-n", "0", "--kind", "issued", "--interval", "0.1", "--for", "6")
    assert [json.loads(line)["task"] for line in followed.output.splitlines()] == ["late"]


def test_blast_radius_online_and_offline_agree(cli, live, held):
    cli("revoke", "--task", "job-worker-0", "--reason", "drill", "--yes")
    online = json.loads(cli("report", "blast-radius", "--subject", WORKER, "--since", "1h", "--json").output)
    offline_run = cli(
        "report", "blast-radius", "--subject", WORKER, "--since", "1h", "--json", "--data-dir", str(live.settings.data_dir)
    )
    offline = json.loads(offline_run.output)
    moments = ("since", "until", "generated_at")  # each run reads its own clock
    online_rest, offline_rest = ({k: v for k, v in r.items() if k not in moments} for r in (online, offline))
    assert online_rest == offline_rest
    assert online["totals"]["grants"] == 12 and online["totals"]["revoked"] == 2
    table = cli("report", "blast-radius", "--subject", WORKER, "--since", "1h")
    assert "12 grants" in table.output and "orders" in table.output and "payments" in table.output


def test_token_from_file_or_command_and_refusals(cli, live, issuers, tmp_path):
    token_file = tmp_path / "op.jwt"
    token_file.write_text(issuers.oidc.token(sub="ops-bob"))
    assert cli("grants", "ls", "--token-file", str(token_file), BROKER_IDENTITY_TOKEN="").exit_code == 0
    command = f"{sys.executable} -c \"print(open('{token_file}').read())\""
    assert cli("freezes", "--token-command", command, BROKER_IDENTITY_TOKEN="").exit_code == 0
    missing = cli("grants", "ls", BROKER_IDENTITY_TOKEN="")
    assert missing.exit_code == 2 and "no identity token" in missing.output
    worker = cli("revoke", "--all", "--reason", "x", "--yes", BROKER_IDENTITY_TOKEN=issuers.worker("worker"))
    assert worker.exit_code == 4 and "403 forbidden" in worker.output
