"""The transparency log as the api layer sees it: checkpoints, proofs, entries and receipts."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from broker.transparency.checkpoints import Checkpointer, Signed
from broker.transparency.keys import LogKeyRepository, load_or_create
from broker.transparency.log import LogReader
from broker.transparency.note import Verifier
from broker.transparency.push import WitnessPusher


@dataclass
class TransparencyLog:
    """One broker's view of the shared log."""

    origin: str
    reader: LogReader
    checkpointer: Checkpointer
    keys: LogKeyRepository
    witnesses: WitnessPusher

    def verifier(self) -> Verifier:
        return load_or_create(self.keys, self.origin).verifier

    def checkpoint(self) -> Signed | None:
        return self.checkpointer.latest()

    def receipt(self, index: int) -> dict[str, Any] | None:
        """Leaf `index`, a checkpoint that covers it and the inclusion proof; None until one covers it."""
        signed = self.checkpointer.at_least(index + 1)
        if signed is None:
            return None
        (_, leaf), = self.reader.entries(index, index + 1)
        proof = self.reader.inclusion(index, signed.size)
        return {
            "log_index": index,
            "leaf": base64.b64encode(leaf).decode(),
            "checkpoint": signed.cosigned_note(),
            "inclusion_proof": {"index": index, "size": signed.size, "hashes": [base64.b64encode(h).decode() for h in proof]},
        }
