"""Security Event Tokens (RFC 8417) the broker transmits: a pure function of an ended grant and the clock.

One event per SET, no `exp` (SSF 1.0 §4.1.8, RFC 8417 §2.2), `txn` names the ledger event so a receiver
de-duplicates the same end reported twice; `jti` is unique per SET.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

SET_TYPE = "secevent+jwt"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
EVENTS_SUPPORTED = (SESSION_REVOKED, CREDENTIAL_CHANGE, VERIFICATION)
PUSH, POLL = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"
# who ended the grant, in CAEP's words: the workload itself, an operator, the broker, or a policy change
INITIATOR = {"completed": "user", "revoked": "admin", "expired": "system", "superseded": "policy"}
CREDENTIAL_TYPE = {"vault_token": "vault-token", "vault_secret": "vault-lease"}


@dataclass(frozen=True)
class EndedGrant:
    """What a SET says about an ended grant: never the credential, its handle or the operator's reason."""

    grant_id: str
    subject: str
    task: str
    boundary: str
    backend: str
    status: str  # completed, revoked, expired, superseded
    actor: str | None
    ended_at: float
    expires_at: float
    txn: str  # the ledger event's id


def end_claims(grant: EndedGrant, *, issuer: str, audience: str, now: float) -> dict[str, Any]:
    """`session-revoked` for a broker JWT, `credential-change` (revoke) for a Vault token or lease."""
    initiator = "system" if grant.status == "revoked" and (grant.actor or "").startswith("broker:") else INITIATOR.get(
        grant.status, "system")  # fmt: skip
    event: dict[str, Any] = {
        "event_timestamp": int(grant.ended_at),
        "initiating_entity": initiator,
        "reason_admin": {"en": f"grant {grant.status}"},  # fixed text: the operator's reason stays in the ledger
    }
    if grant.backend == "jwt":
        session = {"format": "jwt_id", "iss": issuer, "jti": grant.grant_id}
        event["credential_exp"] = int(grant.expires_at)  # extension: how long a receiver must remember the jti
        kind = SESSION_REVOKED
    else:
        session = {"format": "opaque", "id": grant.grant_id}
        event |= {"change_type": "revoke", "credential_type": CREDENTIAL_TYPE.get(grant.backend, grant.backend),
                  "friendly_name": f"{grant.boundary} grant {grant.grant_id}"}  # fmt: skip
        kind = CREDENTIAL_CHANGE
    subject = {
        "format": "complex",
        "session": session,  # the credential itself
        "user": {"format": "opaque", "id": grant.subject},  # the workload that held it
        "group": {"format": "opaque", "id": grant.task},  # the task: the unit of work its grants belong to
    }
    return _envelope(issuer, audience, now, grant.txn, subject, kind, event)


def freeze_claims(
    *, target: str, value: str, token_audience: str | None, issuer: str, audience: str, frozen_at: float, now: float,
    txn: str,
) -> dict[str, Any]:
    """A freeze, even one that ends no grant: `session-revoked` of every token of the subject (or boundary) so far.

    CAEP 1.0 §3.1 with no `session` member: all sessions of the subject named are revoked. A receiver
    refuses the broker JWTs of that subject (`sub`) or boundary (`aud`, the `audience` member) issued at
    or before `event_timestamp`; those issued after the freeze is lifted are not affected.
    """
    event: dict[str, Any] = {
        "event_timestamp": int(frozen_at),
        "initiating_entity": "admin",
        "reason_admin": {"en": f"{target} frozen"},  # fixed text: the operator's reason stays in the ledger
    }
    if target == "subject":
        subject = {"format": "complex", "user": {"format": "opaque", "id": value}}
    else:  # a boundary: the downstream system whose tokens are all revoked
        subject = {"format": "complex", "application": {"format": "opaque", "id": value}}
        if token_audience is not None:
            event["audience"] = token_audience  # extension: the `aud` of this boundary's broker JWTs
    return _envelope(issuer, audience, now, txn, subject, SESSION_REVOKED, event)


def verification_claims(*, issuer: str, audience: str, stream_id: str, state: str | None, now: float, txn: str) -> dict[str, Any]:
    """SSF 1.0 §8.1.4: the verification event a receiver asked for, echoing its `state`."""
    subject = {"format": "opaque", "id": stream_id}
    return _envelope(issuer, audience, now, txn, subject, VERIFICATION, {"state": state} if state else {})


def _envelope(issuer: str, audience: str, now: float, txn: str, subject: dict, kind: str, event: dict) -> dict[str, Any]:
    return {
        "iss": issuer,
        "jti": uuid.uuid4().hex,
        "iat": int(now),
        "aud": audience,
        "txn": txn,
        "sub_id": subject,
        "events": {kind: event},
    }


def sign_set(keys: Any, claims: dict[str, Any]) -> str:
    """Signed with the broker's signing keys (the JWKS receivers already trust), `typ: secevent+jwt`."""
    return keys.sign(claims, typ=SET_TYPE)
