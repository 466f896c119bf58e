"""The transparency log: the ledger seen as an RFC 9162 Merkle tree, signed checkpoints, proofs, witnesses.

Below grants/, beside ledger/: it reads the ledger's tables; the ledger calls it through one hook.
"""
