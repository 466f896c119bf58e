"""Delegation chains through `POST /oauth/token` (RFC 8693 `actor_token`): nested `act`, scopes both may
have, a depth cap, impersonation refused, freezes and policy for every party, and the cascade."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.agents.conftest import EXCHANGE, JWT_TYPE, SERVER_A
from tests.agents.delegation import (
    ORCHESTRATOR,
    SUMMARIZER,
    boundaries,
    claims,
    delegation,
    policy,
    subject,
)
from tests.operators.fleet import auth
from tests.support.broker import BrokerClient, broker_settings, open_client
from tests.support.postgres import ledger_database


@pytest.fixture
def agents(tmp_path, issuers) -> Iterator[BrokerClient]:
    settings = broker_settings(tmp_path, issuers, boundaries=boundaries(), policy=policy())
    with open_client(settings) as client:
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def ledgers(request, tmp_path, issuers) -> Iterator[BrokerClient]:
    """The cascade on both ledgers: PostgreSQL takes row locks and the chain head's, SQLite its write lock."""
    with ledger_database(request.param) as extra:
        settings = broker_settings(tmp_path, issuers, boundaries=boundaries(), policy=policy(), **extra)
        with open_client(settings) as client:
            yield client


def identity(issuers, sa: str) -> str:
    return issuers.k8s.k8s_token("agents", sa)


def parent_grant(agents, issuers, scopes=("read", "write", "admin"), task="plan-1", sa="orchestrator") -> dict:
    answer = agents.grant(identity(issuers, sa), "orders", list(scopes), task=task)
    assert answer.status_code == 201, answer.text
    return answer.json()


def delegate(agents, issuers, parent: str, actor_sa: str, caller_sa: str = "orchestrator", **form: str):
    body = delegation(parent, identity(issuers, actor_sa), **form)
    return agents.post("/oauth/token", data=body, headers=auth(identity(issuers, caller_sa)))


def test_a_sub_agent_gets_a_nested_act_token_with_the_scopes_both_may_have(agents, issuers):
    parent = parent_grant(agents, issuers)
    answer = delegate(agents, issuers, parent["credential"]["token"], "summarizer", task="plan-1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["scope"] == "read write"  # admin: the orchestrator holds it, the summarizer may not have it
    token = claims(body["access_token"])
    assert token["sub"] == ORCHESTRATOR and token["client_id"] == SUMMARIZER
    assert token["act"] == {"sub": SUMMARIZER, "act": {"sub": ORCHESTRATOR}}  # RFC 8693 §4.1, current actor outermost
    assert token["exp"] <= claims(parent["credential"]["token"])["exp"]  # never outlives its parent
    derived = agents.service.ledger.get_grant(body["grant_id"])
    assert (derived.subject, derived.parent_grant_id, derived.scope_list) == (
        SUMMARIZER,
        parent["grant_id"],
        ["read", "write"],
    )
    shown = agents.get(f"/v1/grants/{derived.id}", headers=auth(identity(issuers, "summarizer"))).json()
    assert shown["parent_grant_id"] == parent["grant_id"] and shown["subject"] == SUMMARIZER
    [issued] = [e for e in agents.events("issued") if e.grant_id == derived.id]
    assert issued.detail["parent_grant_id"] == parent["grant_id"]
    assert issued.detail["actors"] == [SUMMARIZER, ORCHESTRATOR] and issued.detail["principal"] == ORCHESTRATOR
    seen = agents.post(
        "/oauth/introspect", data={"token": body["access_token"]}, headers=auth(identity(issuers, "summarizer"))
    )
    assert seen.json()["active"] is True and seen.json()["act"] == token["act"]


def test_the_intersection_is_also_within_what_the_parent_holds(agents, issuers):
    parent = parent_grant(agents, issuers, scopes=("read",))
    answer = delegate(agents, issuers, parent["credential"]["token"], "summarizer", scope="read write")
    assert answer.status_code == 200 and answer.json()["scope"] == "read"


@pytest.mark.parametrize(("actor", "scope"), [("summarizer", "admin"), ("outsider", "read")],
                         ids=["nothing-both-may-have", "the-sub-agent-has-no-rule-here"])  # fmt: skip
def test_no_common_scope_is_refused_and_recorded(agents, issuers, actor, scope):
    parent = parent_grant(agents, issuers)
    answer = delegate(agents, issuers, parent["credential"]["token"], actor, scope=scope)
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "policy_denied" and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["error"] == "invalid_target"
    [denied] = [e for e in agents.events("denied") if e.subject == subject(actor)]
    assert denied.detail["code"] == "policy_denied" and denied.detail["action"] == "delegate"
    assert [g.id for g in agents.service.ledger.grants()] == [parent["grant_id"]]


def test_the_chain_nests_to_the_configured_depth_and_no_further(agents, issuers):
    token = parent_grant(agents, issuers)["credential"]["token"]
    chain = ["summarizer", "helper-1", "helper-2"]
    holder = "orchestrator"
    for actor in chain:  # depth 1, 2, 3: the default cap
        answer = delegate(agents, issuers, token, actor, caller_sa=holder)
        assert answer.status_code == 200, answer.text
        token, holder = answer.json()["access_token"], actor
    expected = {"sub": subject("helper-2"), "act": {"sub": subject("helper-1"), "act": {
        "sub": SUMMARIZER, "act": {"sub": ORCHESTRATOR}}}}  # fmt: skip
    assert claims(token)["act"] == expected and claims(token)["sub"] == ORCHESTRATOR
    refused = delegate(agents, issuers, token, "helper-3", caller_sa=holder)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert (body["code"], body["error"]) == ("delegation_depth_exceeded", "invalid_request")
    assert agents.events("denied")[-1].detail["code"] == "delegation_depth_exceeded"


def test_the_depth_cap_is_a_setting(tmp_path, issuers):
    settings = broker_settings(tmp_path, issuers, boundaries=boundaries(), policy=policy(), max_delegation_depth=1)
    with open_client(settings) as agents:
        first = delegate(agents, issuers, parent_grant(agents, issuers)["credential"]["token"], "summarizer")
        assert first.status_code == 200, first.text
        again = delegate(agents, issuers, first.json()["access_token"], "helper-1", caller_sa="summarizer")
        assert again.status_code == 400 and again.json()["code"] == "delegation_depth_exceeded"


IMPERSONATIONS = [
    ("broker-token-as-identity", lambda parent, me: {"subject_token": parent, "subject_token_type": JWT_TYPE}),
    (
        "access-token-type",
        lambda parent, me: {"subject_token": me, "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"},
    ),
]


@pytest.mark.parametrize("shape", [i[1] for i in IMPERSONATIONS], ids=[i[0] for i in IMPERSONATIONS])
def test_impersonation_without_an_actor_token_is_refused(agents, issuers, shape):
    parent = parent_grant(agents, issuers)["credential"]["token"]
    form = {"grant_type": EXCHANGE, "resource": "orders", "scope": "read",
            **shape(parent, identity(issuers, "summarizer"))}  # fmt: skip
    answer = agents.post("/oauth/token", data=form, headers=auth(identity(issuers, "summarizer")))
    assert answer.status_code == 400, answer.text
    assert (answer.json()["code"], answer.json()["error"]) == ("impersonation_refused", "invalid_request")
    assert agents.events("denied")[-1].detail["code"] == "impersonation_refused"
    assert len(agents.service.ledger.grants()) == 1


def test_only_the_holder_of_the_parent_may_delegate_it(agents, issuers):
    parent = parent_grant(agents, issuers)["credential"]["token"]
    answer = delegate(
        agents, issuers, parent, "summarizer", caller_sa="summarizer"
    )  # holds an identity, not the parent
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert answer.json()["code"] == "invalid_subject_token"


@pytest.mark.parametrize("bad", ["identity-token", "tampered", "no-caller"])
def test_a_delegation_needs_a_valid_held_parent_and_an_authenticated_caller(agents, issuers, bad):
    parent = parent_grant(agents, issuers)["credential"]["token"]
    token = {"identity-token": identity(issuers, "orchestrator"), "tampered": parent[:-4] + "AAAA"}.get(bad, parent)
    headers = {} if bad == "no-caller" else auth(identity(issuers, "orchestrator"))
    answer = agents.post("/oauth/token", data=delegation(token, identity(issuers, "summarizer")), headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant"
    assert len(agents.service.ledger.grants()) == 1


@pytest.mark.parametrize("frozen", ["summarizer", "orchestrator"])
def test_a_freeze_of_either_party_refuses_the_derived_grant(agents, issuers, frozen):
    parent = parent_grant(agents, issuers)["credential"]["token"]
    body = {"subject": subject(frozen), "reason": "incident 7"}
    assert agents.post("/v1/freezes", json=body, headers=auth(issuers.operator())).status_code in (200, 201)
    answer = delegate(agents, issuers, parent, "summarizer")
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "subject_frozen"
    assert len(agents.service.ledger.grants()) == 1


def test_a_derived_token_lives_no_longer_than_its_parent(agents, issuers):
    parent = agents.grant(identity(issuers, "orchestrator"), "orders", ["read"], task="short", ttl=30).json()
    longer = delegate(agents, issuers, parent["credential"]["token"], "summarizer", requested_ttl="120")
    assert longer.status_code == 400 and longer.json()["code"] == "ttl_exceeds_cap"
    capped = delegate(agents, issuers, parent["credential"]["token"], "summarizer", requested_ttl="max")
    assert capped.status_code == 200 and capped.json()["expires_in"] <= 30


def test_a_sub_agent_gets_a_call_token_derived_from_the_orchestrators_server_grant(agents, issuers):
    parent = agents.grant(identity(issuers, "orchestrator"), "mcp-a", ["search", "delete"], task="plan-2").json()
    detail = json.dumps([{"type": "mcp_tool_call", "server": SERVER_A, "tool": "search"}])
    answer = delegate(agents, issuers, parent["credential"]["token"], "summarizer", authorization_details=detail)
    assert answer.status_code == 200, answer.text
    token = claims(answer.json()["access_token"])
    assert token["aud"] == SERVER_A and token["exp"] - token["iat"] <= 60 and token["scope"] == "search"
    assert token["authorization_details"][0]["tool"] == "search" and token["act"]["sub"] == SUMMARIZER
    delete = detail.replace("search", "delete")
    refused = delegate(agents, issuers, parent["credential"]["token"], "summarizer", authorization_details=delete)
    assert refused.status_code == 403 and refused.json()["code"] == "policy_denied"


def test_a_delegated_token_is_for_its_parents_boundary_only(agents, issuers):
    parent = parent_grant(agents, issuers)["credential"]["token"]
    answer = delegate(agents, issuers, parent, "summarizer", resource=SERVER_A)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target"


# --- the cascade ------------------------------------------------------------------------------------


def _chain(agents, issuers) -> tuple[dict, str, str]:
    """The orchestrator's grant, a sub-agent's token derived from it, and a helper's derived from that."""
    parent = parent_grant(agents, issuers)
    child = delegate(agents, issuers, parent["credential"]["token"], "summarizer", task="plan-1").json()
    grandchild = delegate(agents, issuers, child["access_token"], "helper-1", caller_sa="summarizer").json()
    return parent, child["grant_id"], grandchild["grant_id"]


def _ended(agents, grant_id: str) -> tuple[str, str]:
    grant = agents.service.ledger.get_grant(grant_id)
    return grant.status, grant.end_reason


def test_completing_the_orchestrators_task_ends_every_derived_grant_in_the_same_operation(ledgers, issuers):
    parent, child, grandchild = _chain(ledgers, issuers)
    done = ledgers.post("/v1/tasks/plan-1/complete", headers=auth(identity(issuers, "orchestrator")))
    assert done.status_code == 200, done.text
    assert ledgers.service.ledger.get_grant(parent["grant_id"]).status == "completed"
    assert _ended(ledgers, child) == ("revoked", f"parent grant {parent['grant_id']} ended: task completed")
    assert _ended(ledgers, grandchild)[0] == "revoked" and child in _ended(ledgers, grandchild)[1]
    ends = {e.grant_id: e for e in ledgers.events("revoked")}
    assert ends[child].detail["parent_grant_id"] == parent["grant_id"]
    assert ends[grandchild].detail["parent_grant_id"] == child
    assert ledgers.get("/v1/audit/verify", headers=auth(issuers.operator())).json()["ok"] is True


def test_completing_the_orchestrators_grant_ends_its_derived_grants_too(ledgers, issuers):
    """The ledger writer ends a grant alone only when nothing derives from it: here the full path cascades."""
    parent, child, grandchild = _chain(ledgers, issuers)
    done = ledgers.post(f"/v1/grants/{parent['grant_id']}/complete", headers=auth(identity(issuers, "orchestrator")))
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    assert _ended(ledgers, child) == ("revoked", f"parent grant {parent['grant_id']} ended: completed by owner")
    assert _ended(ledgers, grandchild)[0] == "revoked"
    assert ledgers.get("/v1/audit/verify", headers=auth(issuers.operator())).json()["ok"] is True


def test_an_operator_revoking_the_orchestrators_task_ends_the_sub_agents_grants(ledgers, issuers):
    parent, child, grandchild = _chain(ledgers, issuers)
    body = {"task": "plan-1", "reason": "orchestrator compromised"}
    answer = ledgers.post("/v1/revocations", json=body, headers=auth(issuers.operator()))
    assert answer.status_code == 200, answer.text
    assert answer.json()["revoked"] == 3 and answer.json()["pending"] == 0  # the task's grant and its two descendants
    for grant_id in (parent["grant_id"], child, grandchild):
        assert ledgers.service.ledger.get_grant(grant_id).status == "revoked"
    assert "orchestrator compromised" in _ended(ledgers, grandchild)[1]


def test_a_derived_token_of_an_ended_parent_is_refused(agents, issuers):
    parent = parent_grant(agents, issuers)
    agents.post(f"/v1/grants/{parent['grant_id']}/complete", headers=auth(identity(issuers, "orchestrator")))
    answer = delegate(agents, issuers, parent["credential"]["token"], "summarizer")
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_subject_token"


def test_the_issuing_transaction_refuses_a_child_whose_parent_ended_meanwhile(ledgers, issuers):
    """The race the cascade leaves open: the parent ends between the child's checks and its commit.
    Driven through the use case's own steps (prepare, then commit), the parent completed in between."""
    from broker.grants.delegation import _derived_request, _held_parent

    service = ledgers.service
    parent = parent_grant(ledgers, issuers)
    caller = service.authenticate(identity(issuers, "orchestrator"), action="test")
    actor = service.authenticate(identity(issuers, "summarizer"), action="test")
    form = {k: [v] for k, v in delegation(parent["credential"]["token"], identity(issuers, "summarizer")).items()}
    request = _derived_request(service, _held_parent(service, caller, form), actor, form, None)
    prepared = service.prepare(actor, request)
    service.complete(caller, parent["grant_id"])  # the parent ends now, before the child commits
    with pytest.raises(Exception) as refused:
        service.conclude(prepared, service.commit(prepared))
    assert getattr(refused.value, "code", None) == "invalid_subject_token"
    child = service.ledger.get_grant(prepared.grant.id)
    assert child.status == "revoked" and "parent_grant_ended" in child.end_reason
    assert ledgers.events("denied")[-1].detail["code"] == "parent_grant_ended"


def test_delegations_racing_the_orchestrators_completion_leave_no_live_orphan(ledgers, issuers):
    """Sub-agents keep asking while the orchestrator completes its task: every derived grant that
    committed is ended by the cascade, every later one is refused; none stays active."""
    parent = parent_grant(ledgers, issuers)["credential"]["token"]
    tokens = [identity(issuers, f"helper-{i}") for i in range(6)]
    orchestrator = identity(issuers, "orchestrator")
    barrier = threading.Barrier(len(tokens) + 1)

    def keep_delegating(actor: str) -> list[int]:
        barrier.wait()
        form = delegation(parent, actor)
        return [ledgers.post("/oauth/token", data=form, headers=auth(orchestrator)).status_code for _ in range(4)]

    def complete() -> int:
        barrier.wait()
        return ledgers.post("/v1/tasks/plan-1/complete", headers=auth(orchestrator)).status_code

    with ThreadPoolExecutor(len(tokens) + 1) as pool:
        asked = [pool.submit(keep_delegating, token) for token in tokens]
        done = pool.submit(complete)
        statuses = [status for future in asked for status in future.result(60)]
    assert done.result(60) == 200 and set(statuses) <= {200, 400}, statuses
    derived = [g for g in ledgers.service.ledger.grants() if g.parent_grant_id]
    assert len(derived) >= statuses.count(200)
    assert {g.status for g in derived} <= {"revoked"}, [(g.id, g.status, g.end_reason) for g in derived]
