"""Broker signing keys and claims."""

from broker.signing.claims import build_claims, build_txn_claims
from broker.signing.keys import (
           TOKEN_TYPE,
           TXN_TOKEN_TYPE,
           FileKeyRepository,
           KeyRepository,
           KeyStore,
           SigningKey,
           SigningKeyError,
)

__all__ = ["TOKEN_TYPE", "TXN_TOKEN_TYPE", "FileKeyRepository", "KeyRepository", "KeyStore", "SigningKey",
           "SigningKeyError", "build_claims", "build_txn_claims"]
