"""C2SP tlog-checkpoint bodies signed as notes, and C2SP tlog-cosignature/v1 (Ed25519) witness cosignatures.

Body: the origin line, the tree size in decimal, the base64 root hash, optional extension lines.
A cosignature signs `cosignature/v1\\ntime <t>\\n` ‖ body with key type 0x04; its signature bytes
are the 8-byte big-endian timestamp followed by the Ed25519 signature.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from broker.transparency.note import NoteError, Signature, Signer, Verifier, check_name, check_text, open_note, parse

COSIGNATURE_V1 = 0x04


@dataclass(frozen=True)
class Checkpoint:
    """A log's size and root hash under its origin (the log's name)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        lines = check_text(body).split("\n")[:-1]
        if len(lines) < 3 or not lines[0]:
            raise NoteError("checkpoint: expected origin, size and root hash lines")
        origin, size_text, root_text, *extensions = lines
        if not size_text.isdigit() or not size_text.isascii() or (size_text != "0" and size_text.startswith("0")):
            raise NoteError("checkpoint: the size is not a decimal without leading zeros")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (ValueError, binascii.Error):
            root = b""
        if len(root) != 32:
            raise NoteError("checkpoint: the root hash is not base64 of 32 bytes")
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    if checkpoint.origin != signer.name:
        raise NoteError("the log key's name must be the checkpoint origin")
    return checkpoint.body() + "\n" + signer.sign(checkpoint.body()).line()


def open_checkpoint(
    note: str, log_key: Verifier, witnesses: Sequence[CosignatureVerifier] = ()
) -> tuple[Checkpoint, list[str]]:
    """Verify the log's signature; return the checkpoint and the names of the witnesses whose cosignature verifies."""
    text, _ = open_note(note, [log_key])
    checkpoint = Checkpoint.parse(text)
    if checkpoint.origin != log_key.name:
        raise NoteError("checkpoint origin is not the log key's name")
    _, signatures = parse(note)
    return checkpoint, [w.name for w in witnesses if any(w.verify(text, s) for s in signatures)]


class CosignatureVerifier:
    """A witness's public key, `name+hex(key id)+base64(0x04 ‖ public key)`."""

    def __init__(self, name: str, public: bytes) -> None:
        self._inner = _CosignatureKey(name, public)
        self.name, self.key_id, self.public = self._inner.name, self._inner.key_id, public

    @classmethod
    def parse(cls, text: str) -> CosignatureVerifier:
        inner = _CosignatureKey.parse(text)
        return cls(inner.name, inner.public)

    def key_string(self) -> str:
        return self._inner.key_string()

    def verify(self, body: str, signature: Signature) -> bool:
        if (signature.name, signature.key_id) != (self.name, self.key_id) or len(signature.signature) != 72:
            return False
        (timestamp,) = struct.unpack(">Q", signature.signature[:8])
        return timestamp < 2**63 and self._inner.verify(cosigned_message(body, timestamp), signature.signature[8:])


class Cosigner:
    """A witness's private key: cosigns checkpoint bodies with a timestamp."""

    def __init__(self, name: str, seed: bytes) -> None:
        self._signer = Signer(check_name(name), seed)
        self.verifier = CosignatureVerifier(name, self._signer.verifier.public)
        self.name = name

    def cosign(self, body: str, timestamp: int) -> Signature:
        raw = self._signer.sign_bytes(cosigned_message(body, timestamp))
        return Signature(self.name, self.verifier.key_id, struct.pack(">Q", timestamp) + raw)


def cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{check_text(body)}".encode()


class _CosignatureKey(Verifier):
    key_type = COSIGNATURE_V1
