"""The log over HTTP: public checkpoint, auditor proofs and entries, receipts the SDK verifies offline."""

from __future__ import annotations

import base64
import copy

import pytest

from broker.transparency import checkpoint as cp
from broker.transparency import tree
from broker_client import ReceiptInvalid, verify_receipt
from tests.transparency.test_tree import reference_consistency_ok, reference_inclusion_ok


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _issue(broker, issuers, n: int = 3) -> list[dict]:
    answers = [broker.grant(issuers.worker(), task=f"t{i}", ttl=60) for i in range(n)]
    assert all(a.status_code == 201 for a in answers)
    return [a.json() for a in answers]


def test_checkpoint_is_public_and_signed_by_the_log_key(broker, issuers) -> None:
    assert broker.get("/v1/log/checkpoint").status_code == 404
    _issue(broker, issuers)
    broker.components.log.checkpointer.maybe_sign(force=True)
    answer = broker.get("/v1/log/checkpoint")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    checkpoint, _ = cp.open_checkpoint(answer.text, broker.components.log.verifier())
    assert checkpoint.size == len(broker.events()) and checkpoint.origin == "broker.test/log"


def test_issuance_carries_its_log_index(broker, issuers) -> None:
    issued = _issue(broker, issuers)
    for answer in issued:
        (event,) = [e for e in broker.events("issued") if e.grant_id == answer["grant_id"]]
        assert answer["log_index"] == event.seq - 1


def test_proofs_and_entries_verify_independently(broker, issuers) -> None:
    _issue(broker, issuers, 4)
    broker.grant("bogus")
    ops = _auth(issuers.operator())
    size = len(broker.events())
    entries = broker.get(f"/v1/log/entries?start=0&end={size}", headers=ops).json()["entries"]
    leaves = [base64.b64decode(e) for e in entries]
    root = tree.MemoryTree()
    root.add(leaves)
    for index in (0, size - 1):
        body = broker.get(f"/v1/log/proof/inclusion?index={index}&size={size}", headers=ops).json()
        proof = [base64.b64decode(h) for h in body["hashes"]]
        assert body["index"] == index and reference_inclusion_ok(index, size, tree.leaf_hash(leaves[index]), proof, root.root())
    body = broker.get(f"/v1/log/proof/consistency?from=3&to={size}", headers=ops).json()
    proof = [base64.b64decode(h) for h in body["hashes"]]
    assert (body["from"], body["to"]) == (3, size)
    assert reference_consistency_ok(3, size, root.root(3), root.root(), proof)


@pytest.mark.parametrize("path", ["/v1/log/proof/inclusion?index=0&size=1", "/v1/log/proof/consistency?from=0&to=1",
                                  "/v1/log/entries?start=0&end=1"])
def test_proofs_and_entries_need_the_auditor_role(broker, issuers, path) -> None:
    _issue(broker, issuers, 1)
    assert broker.get(path).status_code == 401
    answer = broker.get(path, headers=_auth(issuers.worker()))
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"


@pytest.mark.parametrize("query", ["proof/inclusion?index=5&size=5", "proof/inclusion?index=0&size=999",
                                   "proof/consistency?from=4&to=2", "entries?start=2&end=2", "entries?start=0&end=5000",
                                   "proof/inclusion?index=-1&size=2", "proof/inclusion?index=0&size=99999999999999999999"])
def test_bad_ranges_are_problems_not_500s(broker, issuers, query) -> None:
    _issue(broker, issuers, 2)
    answer = broker.get(f"/v1/log/{query}", headers=_auth(issuers.operator()))
    assert answer.status_code in (400, 422) and answer.headers["content-type"] == "application/problem+json"


def _grow(note: str) -> str:
    origin, size, rest = note.split("\n", 2)
    return f"{origin}\n{int(size) + 1}\n{rest}"


def test_receipt_verifies_offline_and_tampering_is_caught(broker, issuers) -> None:
    (issued,) = _issue(broker, issuers, 1)
    path = f"/v1/grants/{issued['grant_id']}/receipt"
    token = issuers.worker()
    broker.components.log.checkpointer.maybe_sign(force=True)
    receipt = broker.get(path, headers=_auth(token)).json()
    log_key = broker.components.log.verifier().key_string()
    verified = verify_receipt(receipt, log_key, grant_id=issued["grant_id"])
    assert verified.log_index == issued["log_index"] and verified.event["kind"] == "issued"
    assert broker.get(path, headers=_auth(issuers.worker("other"))).status_code == 404  # not the owner
    tampered = [("leaf", base64.b64encode(base64.b64decode(receipt["leaf"]).replace(b"issued", b"denied")).decode()),
                ("log_index", receipt["log_index"] + 1), ("checkpoint", _grow(receipt["checkpoint"]))]
    for field, value in tampered:
        bad = {**copy.deepcopy(receipt), field: value}
        with pytest.raises(ReceiptInvalid):
            verify_receipt(bad, log_key, grant_id=issued["grant_id"])
    with pytest.raises(ReceiptInvalid, match="witness"):
        verify_receipt(receipt, log_key, require_witnesses=1)
