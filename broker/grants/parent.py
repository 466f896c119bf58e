"""The parent of a derived token: the broker token presented as RFC 8693 `subject_token`.

A delegated token and a transaction token are exchanged from a broker token the broker itself
signed, never from an identity token: its grant is the parent in the ledger, its scope is the
ceiling of what the derived token may carry, and the derived token ends when that grant ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from broker.errors import InvalidSubjectToken
from broker.grants.service import GrantService
from broker.ledger import ACTIVE, Grant
from broker.signing import TOKEN_TYPE, TXN_TOKEN_TYPE

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"


@dataclass(frozen=True)
class Parent:
    """An active grant and the verified claims of the token presented for it."""

    grant: Grant
    claims: dict[str, Any]

    @property
    def is_txn_token(self) -> bool:
        return "txn" in self.claims and "req_wl" in self.claims

    def remaining(self, now: float) -> int:
        """Whole seconds the parent still lives (a derived token never outlives it); refused under one."""
        seconds = int(min(self.grant.expires_at, float(self.claims["exp"])) - now)
        if seconds < 1:
            raise InvalidSubjectToken("the subject token expires now")
        return seconds


def verified(service: GrantService, token: str | None, types: tuple[str, ...]) -> dict[str, Any] | None:
    """The claims of a valid, unexpired broker token of one of `types`; None when it is not one.

    A broker token that has expired (its signature holds: PyJWT checks it before `exp`) is refused.
    """
    if not token:
        return None
    try:
        return service.keys.verify(token, issuer=service.settings.issuer, types=types)
    except jwt.ExpiredSignatureError:
        raise InvalidSubjectToken("the subject token has expired") from None
    except (jwt.InvalidTokenError, ValueError):
        return None


def is_broker_token(service: GrantService, token: str | None) -> bool:
    try:
        return verified(service, token, (TOKEN_TYPE, TXN_TOKEN_TYPE)) is not None
    except InvalidSubjectToken:
        return True


def parent_of(service: GrantService, token: str | None, types: tuple[str, ...] = (TOKEN_TYPE,)) -> Parent:
    """The active grant behind a broker token; InvalidSubjectToken for anything else."""
    claims = verified(service, token, types)
    if claims is None:
        raise InvalidSubjectToken("the subject_token is not a valid broker token")
    grant = service.ledger.get_grant(str(claims["jti"]))
    if grant is None or grant.status != ACTIVE or grant.expires_at <= service.clock():
        raise InvalidSubjectToken("the subject token's grant is not active")
    return Parent(grant, claims)
