"""The audit hash chain: canonical form of an event, link hashing, and verification (pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
CHAINED_FIELDS = ("seq", "id", "ts", "kind", "subject", "boundary", "task", "grant_id", "actor", "detail")


def canonical(event: dict[str, Any]) -> bytes:
    """Stable bytes for the chained fields: sorted keys, no spaces, UTF-8."""
    body = {name: event[name] for name in CHAINED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def link(prev_hash: str, event: dict[str, Any]) -> str:
    return link_entry(prev_hash, canonical(event))


def link_entry(prev_hash: str, entry: bytes) -> str:
    """`link` of an event whose canonical bytes are at hand (the append hashes them into the log too)."""
    return hashlib.sha256(prev_hash.encode() + entry).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of walking the chain; `first_bad_seq` names the first row that does not fit."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_seq: int = 0
    head_hash: str = GENESIS


def verify_chain(events: Iterable[dict[str, Any]], head: tuple[int, str] | None) -> VerifyResult:
    """Walk events in seq order; catches edited, deleted, inserted and reordered rows."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    for event in events:
        bad = _check(event, prev_hash, expected_seq)
        if bad:
            return VerifyResult(False, checked, event["seq"], bad, expected_seq - 1, prev_hash)
        prev_hash, expected_seq, checked = event["hash"], expected_seq + 1, checked + 1
    head_seq, head_hash = head or (0, GENESIS)
    if (head_seq, head_hash) != (expected_seq - 1, prev_hash):
        problem = f"chain ends at seq {expected_seq - 1} but the head records seq {head_seq}: rows deleted at the end"
        return VerifyResult(False, checked, expected_seq, problem, head_seq, head_hash)
    return VerifyResult(True, checked, head_seq=head_seq, head_hash=head_hash)


def _check(event: dict[str, Any], prev_hash: str, expected_seq: int) -> str | None:
    if event["seq"] != expected_seq:
        return f"expected seq {expected_seq}, found {event['seq']}: a row was deleted or reordered"
    if event["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous row's hash: rows deleted or reordered"
    if link(prev_hash, event) != event["hash"]:
        return "hash does not match the row's content: the row was edited"
    return None


def verify_export(events: Iterable[dict[str, Any]]) -> tuple[VerifyResult, int]:
    """Check an exported slice offline: each row's own hash, seq order, and the link between adjacent rows.

    Returns the result and the number of gaps (a filtered export skips rows; a full one has none).
    """
    prev: dict[str, Any] | None = None
    checked = gaps = 0
    for event in events:
        bad = _check_exported(event, prev)
        if bad:
            return VerifyResult(False, checked, event.get("seq"), bad), gaps
        gaps += 1 if prev is not None and event["seq"] != prev["seq"] + 1 else 0
        prev, checked = event, checked + 1
    last = prev or {"seq": 0, "hash": GENESIS}
    return VerifyResult(True, checked, head_seq=last["seq"], head_hash=last["hash"]), gaps


def _check_exported(event: dict[str, Any], prev: dict[str, Any] | None) -> str | None:
    if link(event["prev_hash"], event) != event["hash"]:
        return "hash does not match the row's content: the row was edited"
    if prev is None:
        return "the first row does not start at genesis" if event["seq"] == 1 and event["prev_hash"] != GENESIS else None
    if event["seq"] <= prev["seq"]:
        return f"seq {event['seq']} follows seq {prev['seq']}: rows reordered or repeated"
    if event["seq"] == prev["seq"] + 1 and event["prev_hash"] != prev["hash"]:
        return "prev_hash does not match the previous row's hash: a row was replaced"
    return None
