"""Bad input gets a clear problem+json error with a stable code, no stack trace, and changes nothing."""

from __future__ import annotations

import pytest

CASES = [
    ("malformed-json", b'{"task": "t", "boundary": ', "application/json", 422, "validation_error"),
    ("json-array", b"[1, 2, 3]", "application/json", 422, "validation_error"),
    ("wrong-content-type", b"task=t&boundary=orders", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("text-plain", b'{"task":"t","boundary":"orders","scopes":["read"]}', "text/plain", 415, "unsupported_media_type"),
    ("huge-body", b'{"task": "' + b"a" * 70_000 + b'"}', "application/json", 413, "payload_too_large"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_bodies_are_refused_cleanly(broker, issuers, body, ctype, status, code):
    token = issuers.worker()
    response = broker.post(
        "/v1/grants", content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": ctype}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert "Traceback" not in response.text and token not in response.text
    assert broker.service.ledger.grants() == []


def test_chunked_huge_body_is_refused(broker, issuers):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    headers = {"Authorization": f"Bearer {issuers.worker()}", "Content-Type": "application/json"}
    response = broker.post("/v1/grants", content=chunks(), headers=headers)
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_unknown_route_and_method(broker):
    assert broker.get("/v1/nope").json()["code"] == "not_found"
    assert broker.delete("/v1/grants").json()["code"] == "method_not_allowed"


def test_validation_errors_never_echo_the_input(broker, issuers):
    secret = "s3cr3t-value-that-must-not-come-back"
    headers = {"Authorization": f"Bearer {issuers.worker()}"}
    response = broker.post("/v1/grants", json={"task": secret, "boundary": "orders", "scopes": [secret * 10]}, headers=headers)
    assert response.status_code == 422 and secret not in response.text
