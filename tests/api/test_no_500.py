"""No input produces a 500, every refusal is recorded, and a defect is recorded and answered cleanly."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.operators.fleet import auth
from tests.sdk.live import LiveBroker

EXCHANGE = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "resource": "orders",
    "scope": "read",
}
OAUTH_REFUSALS = [
    ("two-boundaries", {"audience": "payments"}, "multi_boundary"),
    ("no-scope", {"scope": ""}, "invalid_request"),
    ("superscript-ttl", {"requested_ttl": "²"}, "invalid_request"),
    ("circled-ttl", {"requested_ttl": "①"}, "invalid_request"),
    ("fullwidth-ttl", {"requested_ttl": "９０"}, "invalid_request"),
    ("ttl-too-long", {"requested_ttl": "1" * 40}, "invalid_request"),
    ("wrong-grant-type", {"grant_type": "password"}, "invalid_request"),
    ("wrong-token-type", {"subject_token_type": "urn:x"}, "invalid_request"),
    ("unknown-boundary", {"resource": "nope"}, "invalid_target"),  # RFC 8707 §2
    ("no-resource", {"resource": ""}, "invalid_target"),
    ("control-chars-task", {"task": "\x1b[2J"}, "invalid_request"),
    ("newline-task", {"task": "a\nb"}, "invalid_request"),
    ("bracket-task", {"task": "[/x]"}, "invalid_request"),
    ("long-task", {"task": "a" * 200}, "invalid_request"),
]


@pytest.mark.parametrize(("extra", "code"), [r[1:] for r in OAUTH_REFUSALS], ids=[r[0] for r in OAUTH_REFUSALS])
def test_token_exchange_refusals_are_answered_and_recorded(broker, issuers, extra, code):
    response = broker.post("/oauth/token", data={**EXCHANGE, "subject_token": issuers.worker(), **extra})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code and response.json()["error"]
    denied = broker.events("denied")
    assert [e.detail["code"] for e in denied] == [code] and denied[0].subject.endswith(":worker")
    assert broker.service.ledger.grants() == []


@pytest.mark.parametrize(
    "params",
    [{"since": "999999999d"}, {"until": "99999999999999"}, {"since": "9" * 400}, {"until": "-1"},
     {"since": "0001-01-01T00:00:00"}],
    ids=["since-before-epoch", "until-past-9999", "huge-number", "negative", "year-one"],
)
def test_out_of_range_times_are_bad_requests(broker, issuers, params):
    query = {"subject": "x", **params}
    for path in ("/v1/reports/blast-radius", "/v1/grants", "/v1/audit"):
        response = broker.get(path, params=query, headers=auth(issuers.operator()))
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", (path, response.text)


def _two_requests_on_one_connection(url: str, token: str) -> tuple[int, dict, int]:
    """POST a grant, then GET /healthz on the same socket: a dropped keep-alive fails the second."""
    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
    body = json.dumps({"task": "t", "boundary": "orders", "scopes": ["read"]})
    connection.request("POST", "/v1/grants", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    first = connection.getresponse()
    problem, sock = json.loads(first.read()), connection.sock
    connection.request("GET", "/healthz")
    second = connection.getresponse()
    second.read()
    assert connection.sock is sock, "the broker closed the connection after the 500"
    connection.close()
    return first.status, problem, second.status


@pytest.mark.parametrize("where", ["use-case", "route"])
def test_a_defect_is_answered_cleanly_recorded_and_keeps_the_connection(tmp_path, issuers, where):
    live = LiveBroker.start(tmp_path, issuers)
    service = live.components.service
    try:
        if where == "use-case":
            service._decide = lambda *a: 1 / 0  # a bug on the issuing path
        else:
            service.commit = lambda *a: 1 / 0  # a bug between the use case's steps, in the route
        status, problem, after = _two_requests_on_one_connection(live.url, issuers.worker())
        assert (status, problem["code"], after) == (500, "internal_error", 200)
        assert "ZeroDivision" not in json.dumps(problem)
        denied = [e.detail for e in service.ledger.events() if e.kind == "denied"]
        if where == "use-case":
            assert [(d["code"], d["error"]) for d in denied] == [("internal_error", "ZeroDivisionError")]
    finally:
        live.stop()
