"""Request ids, access lines and Prometheus metrics, through HTTP."""

from __future__ import annotations

import logging
import re
import time

import pytest

from broker.context import REQUEST_ID


def _value(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found, f"{series} not in /metrics"
    return float(found[1])


def test_a_well_formed_request_id_is_echoed_and_written_into_every_ledger_event(broker, issuers) -> None:
    token = issuers.worker()
    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "deploy-42.step:1"}
    issued = broker.post("/v1/grants", json={"task": "rid", "boundary": "orders", "scopes": ["read"]}, headers=headers)
    denied = broker.post("/v1/grants", json={"task": "rid", "boundary": "orders", "scopes": ["admin"]},
                         headers={**headers, "X-Request-Id": "deploy-42.step:2"})  # fmt: skip
    completed = broker.post(f"/v1/grants/{issued.json()['grant_id']}/complete",
                            headers={**headers, "X-Request-Id": "deploy-42.step:3"})  # fmt: skip
    assert [a.headers["x-request-id"] for a in (issued, denied, completed)] == [
        "deploy-42.step:1", "deploy-42.step:2", "deploy-42.step:3"]  # fmt: skip
    by_kind = {e.kind: e.detail.get("request_id") for e in broker.events()}
    assert by_kind == {"issued": "deploy-42.step:1", "denied": "deploy-42.step:2", "completed": "deploy-42.step:3"}
    assert broker.service.ledger.verify().ok  # the id is part of the chained event


@pytest.mark.parametrize("offered", ["", "has space", "x" * 129, "quote\"d", "-leading-dash", "é"],
                         ids=["empty", "space", "too-long", "quote", "leading-dash", "non-ascii"])
def test_a_malformed_request_id_is_replaced(broker, offered) -> None:
    answer = broker.get("/healthz", headers={"X-Request-Id": offered.encode("utf-8")})
    echoed = answer.headers["x-request-id"]
    assert echoed != offered and echoed.startswith("r_") and REQUEST_ID.fullmatch(echoed)


def test_two_request_ids_get_a_fresh_one(broker) -> None:
    answer = broker.get("/healthz", headers=[("X-Request-Id", "a"), ("X-Request-Id", "b")])
    assert answer.headers["x-request-id"].startswith("r_")


def test_the_access_line_names_the_route_template_and_the_subject_fingerprint(broker, issuers, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="broker.access"):
        grant = broker.grant(issuers.worker())
        broker.get(f"/v1/grants/{grant.json()['grant_id']}", headers={"Authorization": f"Bearer {issuers.worker()}"})
    lines = [r for r in caplog.records if r.name == "broker.access"]
    assert [(r.method, r.route, r.status) for r in lines] == [("POST", "/v1/grants", 201),
                                                              ("GET", "/v1/grants/{grant_id}", 200)]  # fmt: skip
    assert all(r.subject_fp.startswith("sha256:") and r.duration_ms >= 0 for r in lines)
    assert grant.json()["grant_id"] not in "".join(r.getMessage() for r in lines)


def test_metrics_build_info_red_ledger_outbox_and_no_created_series(broker, issuers) -> None:
    token = issuers.worker()
    ok = broker.grant(token)
    broker.grant(token, boundary="orders", scopes=["admin"])  # policy denies: a grant decision
    broker.grant(token, boundary="attacker-chosen-name")  # unknown boundary: counted under "-"
    broker.get("/v1/grants/g_nope", headers={"Authorization": f"Bearer {token}"})  # a read refusal: not a grant decision
    broker.get("/no/such/path")
    text = broker.get("/metrics").text
    assert re.search(r'^broker_build_info\{python="[0-9.]+",version="[^"]+"\} 1\.0$', text, re.M)
    assert _value(text, 'broker_http_requests_total{method="POST",route="/v1/grants",status="201"}') == 1
    assert _value(text, 'broker_http_requests_total{method="GET",route="/v1/grants/{grant_id}",status="404"}') == 1
    assert _value(text, 'broker_http_requests_total{method="GET",route="unmatched",status="404"}') == 1
    assert _value(text, 'broker_http_request_duration_seconds_count{method="POST",route="/v1/grants"}') == 3
    assert "g_nope" not in text and "/no/such/path" not in text and "attacker-chosen-name" not in text
    assert _value(text, "broker_ledger_write_seconds_count") >= 1
    assert _value(text, "broker_revocations_pending") == 0
    assert _value(text, "broker_revocations_oldest_pending_age_seconds") == 0
    assert _value(text, 'broker_grants_denied_total{boundary="orders",code="policy_denied"}') == 1
    assert _value(text, 'broker_grants_denied_total{boundary="-",code="unknown_boundary"}') == 1
    assert "not_found" not in "".join(line for line in text.splitlines() if line.startswith("broker_grants_denied"))
    assert "_created" not in text
    assert ok.status_code == 201
    assert _value(text, "broker_ready") == 1 and _value(text, "broker_policy_reload_ok") == 1


def test_the_outbox_age_grows_while_a_revocation_waits(broker, issuers) -> None:
    grant = broker.grant(issuers.worker()).json()
    ledger = broker.service.ledger
    asked = time.time()
    moved = ledger.begin_revoke([grant["grant_id"]], end_status="revoked", actor="test", reason="stuck")
    assert len(moved) == 1  # intent written, not executed: it waits in the outbox
    text = broker.get("/metrics").text
    waited = time.time() - asked
    assert _value(text, "broker_revocations_pending") == 1
    assert 0 < _value(text, "broker_revocations_oldest_pending_age_seconds") <= waited
