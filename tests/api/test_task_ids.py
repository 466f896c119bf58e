"""Task ids round-trip: one grammar on every endpoint that takes a task, `/` included, junk refused and recorded."""

from __future__ import annotations

from urllib.parse import quote

import pytest


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


EXCHANGE = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "resource": "orders",
    "scope": "read",
}
GOOD = ["deploy/prod", "ci/build.1a2b3c4d", "repo:acme/api@main", "a", "x" * 128]
BAD = {
    "escape-sequence": "\x1b[2J",
    "newline": "job\nforged: line",
    "trailing-newline": "job\n",
    "markup": "[/x]",
    "space": "two words",
    "percent": "a%2Fb",
    "too-long": "x" * 129,
    "leading-dot": ".hidden",
    "non-ascii": "tâche",
}
# in a path, a newline matches no route (404, nothing changes); the test client decodes `%25` twice
IN_PATH = {name: task for name, task in BAD.items() if name not in ("newline", "trailing-newline", "percent")}


@pytest.mark.parametrize("task", GOOD)
def test_a_valid_task_is_issued_and_completed_by_its_path(broker, issuers, task):
    issued = broker.grant(issuers.worker(), task=task)
    assert issued.status_code == 201, issued.text
    done = broker.post(f"/v1/tasks/{task}/complete", headers=auth(issuers.worker()))
    assert done.status_code == 200, done.text
    assert done.json()["task"] == task and done.json()["revoked"] == 1
    assert broker.service.ledger.get_grant(issued.json()["grant_id"]).status == "completed"


def test_a_percent_encoded_slash_names_the_same_task(broker, issuers):
    grant_id = broker.grant(issuers.worker(), task="deploy/prod").json()["grant_id"]
    done = broker.post(f"/v1/tasks/{quote('deploy/prod', safe='')}/complete", headers=auth(issuers.worker()))
    assert done.status_code == 200 and done.json()["grant_ids"] == [grant_id]


def test_an_unknown_task_has_its_own_stable_code(broker, issuers):
    missing = broker.post("/v1/tasks/never-issued/complete", headers=auth(issuers.worker()))
    assert missing.status_code == 404 and missing.json()["code"] == "task_not_found"
    denied = broker.events("denied")[-1]
    assert denied.task == "never-issued" and denied.detail["code"] == "task_not_found"
    other = broker.post("/v1/grants/no-such-grant/complete", headers=auth(issuers.worker()))
    assert other.json()["code"] == "not_found"


def _expect_refused(broker, response, status: int, code: str, action: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert broker.service.ledger.grants() == []
    denied = broker.events("denied")
    assert denied and denied[-1].detail == {**denied[-1].detail, "code": code, "action": action}


@pytest.mark.parametrize("task", BAD.values(), ids=BAD.keys())
def test_grant_body_refuses_a_bad_task(broker, issuers, task):
    _expect_refused(broker, broker.grant(issuers.worker(), task=task), 422, "validation_error", "issue")


@pytest.mark.parametrize("task", IN_PATH.values(), ids=IN_PATH.keys())
def test_task_completion_path_refuses_a_bad_task(broker, issuers, task):
    response = broker.post(f"/v1/tasks/{quote(task, safe='')}/complete", headers=auth(issuers.worker()))
    _expect_refused(broker, response, 400, "invalid_request", "complete_task")


@pytest.mark.parametrize("task", BAD.values(), ids=BAD.keys())
def test_token_exchange_refuses_a_bad_task_instead_of_truncating(broker, issuers, task):
    response = broker.post("/oauth/token", data={**EXCHANGE, "subject_token": issuers.worker(), "task": task})
    _expect_refused(broker, response, 400, "invalid_request", "token_exchange")
    assert response.json()["error"] == "invalid_request"


def test_token_exchange_keeps_a_valid_task(broker, issuers):
    response = broker.post("/oauth/token", data={**EXCHANGE, "subject_token": issuers.worker(), "task": "ci/build"})
    assert response.status_code == 200, response.text
    assert broker.service.ledger.get_grant(response.json()["grant_id"]).task == "ci/build"


@pytest.mark.parametrize("task", BAD.values(), ids=BAD.keys())
def test_operator_endpoints_refuse_a_bad_task(broker, issuers, task):
    operator = auth(issuers.operator())
    for path in ("/v1/grants", "/v1/audit"):
        answer = broker.get(path, params={"task": task}, headers=operator)
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error", (path, answer.text)
    body = {"task": task, "reason": "incident"}
    answer = broker.post("/v1/revocations", json=body, headers=operator)
    assert answer.status_code == 422 and answer.json()["code"] == "validation_error"
    assert not [e for e in broker.events() if e.kind == "revocation_requested"]


def test_operator_filters_accept_a_task_with_a_slash(broker, issuers):
    grant_id = broker.grant(issuers.worker(), task="deploy/prod").json()["grant_id"]
    operator = auth(issuers.operator())
    items = broker.get("/v1/grants", params={"task": "deploy/prod"}, headers=operator).json()["items"]
    assert [g["grant_id"] for g in items] == [grant_id]
    revoked = broker.post("/v1/revocations", json={"task": "deploy/prod", "reason": "incident"}, headers=operator)
    assert revoked.status_code == 200 and revoked.json()["revoked"] == 1
