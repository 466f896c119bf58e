"""Transaction tokens (draft-ietf-oauth-transaction-tokens): broker-signed, `typ: txntoken+jwt`.

Not a boundary kind: a transaction token is derived from a grant's access token (its parent) and is
recorded as a grant of its own with this backend, so it is issued, listed and ended like every grant.
Revocation is the ledger's deny list, as for `jwt`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jwt

from broker.backends.base import Minted, MintRequest
from broker.config import BoundaryConfig
from broker.errors import BackendUnavailable
from broker.fingerprint import fingerprint
from broker.signing import TXN_TOKEN_TYPE, KeyStore, build_txn_claims


class TxnTokenBackend:
    """Signs a transaction token, then verifies what it signed before handing it out."""

    kind = "txn_token"
    calls_out = False  # minting signs here: no network call

    def __init__(self, keys: KeyStore, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    def mint(self, request: MintRequest) -> Minted:
        if request.txn is None:
            raise BackendUnavailable("a transaction token needs its txn claims")
        claims = build_txn_claims(issuer=self._issuer, jti=request.grant_id, scopes=request.scopes,
                                  issued_at=request.issued_at, expires_at=request.expires_at, txn=request.txn)  # fmt: skip
        token = self._keys.sign(claims, typ=TXN_TOKEN_TYPE)
        try:
            self._keys.check_signed(token, claims, typ=TXN_TOKEN_TYPE)
        except jwt.InvalidTokenError as exc:
            raise BackendUnavailable(f"minted transaction token failed its self-check: {exc}") from None
        credential = {"type": "txn_token", "token": token, "token_type": "N_A"}
        return Minted(credential=credential, handle=request.grant_id, fingerprint=fingerprint(token))

    def revoke(self, boundary: BoundaryConfig, handle: str) -> None:
        """Nothing to call: the grant's status is the deny list that introspection answers from."""

    def revoke_many(
        self, boundary: BoundaryConfig, handles: Sequence[str], *, whole_boundary: bool = False
    ) -> dict[str, str]:
        return {}
