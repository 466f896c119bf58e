"""Backends mint and revoke the credential of one boundary kind."""

from broker.backends.base import Backend, BatchRevoker, Minted, MintRequest, revoke_each, revoke_many
from broker.backends.jwt import JwtBackend
from broker.backends.mcp import McpBackend
from broker.backends.txn_token import TxnTokenBackend

__all__ = ["Backend", "BatchRevoker", "JwtBackend", "McpBackend", "MintRequest", "Minted", "TxnTokenBackend", "revoke_each",
           "revoke_many"]
