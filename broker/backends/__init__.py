"""Backends mint and revoke the credential of one boundary kind."""

from broker.backends.base import Backend, MintRequest, Minted, fingerprint
from broker.backends.jwt import JwtBackend

__all__ = ["Backend", "JwtBackend", "MintRequest", "Minted", "fingerprint"]
