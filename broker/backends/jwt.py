"""The `jwt` backend: credentials are broker-signed JWTs; revocation is the ledger's deny list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jwt

from broker.backends.base import Minted, MintRequest
from broker.config import BoundaryConfig
from broker.errors import BackendUnavailable
from broker.fingerprint import fingerprint
from broker.signing import KeyStore, build_claims


class JwtBackend:
    """Signs a JWT per grant, then verifies what it signed before handing it out."""

    kind = "jwt"
    calls_out = False  # minting signs here: no network call
    replayable = True  # the same claims signed again are the same credential (an Idempotency-Key replay)

    def __init__(self, keys: KeyStore, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    def mint(self, request: MintRequest) -> Minted:
        claims = build_claims(
            issuer=self._issuer,
            subject=request.subject,
            audience=request.boundary.jwt_audience,
            scopes=request.scopes,
            task=request.task,
            jti=request.grant_id,
            issued_at=request.issued_at,
            expires_at=request.expires_at,
            cnf_jkt=request.cnf_jkt,
            cnf_x5t=request.cnf_x5t,
            authorization_details=request.authorization_details,
            principal=request.principal,
            act=request.act,
        )
        token = self._keys.sign(claims)
        try:
            self._keys.check_signed(token, claims)  # never hand out what its own public key does not verify
        except jwt.InvalidTokenError as exc:
            raise BackendUnavailable(f"minted JWT failed its self-check: {exc}") from None
        credential = {"type": "jwt", "token": token, "token_type": "DPoP" if request.cnf_jkt else "Bearer"}
        return Minted(credential=credential, handle=request.grant_id, fingerprint=fingerprint(token))

    def revoke(self, boundary: BoundaryConfig, handle: str) -> None:
        """Nothing to call: the grant's status is the deny list that introspection answers from."""

    def revoke_many(
        self, boundary: BoundaryConfig, handles: Sequence[str], *, whole_boundary: bool = False,
        parents: Mapping[str, str] | None = None,
    ) -> dict[str, str]:  # fmt: skip
        """Nothing to call for any of them (see `revoke`): no thread pool for ten thousand no-ops."""
        return {}
