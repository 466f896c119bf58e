"""C2SP signed-note: Ed25519 signer and verifier keys, signing and opening notes.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
`— <name> base64(key id ‖ signature)`. The key id is the first four bytes of
SHA-256(name ‖ 0x0A ‖ type ‖ public key); type 0x01 is Ed25519 (c2sp.org/signed-note).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
MAX_SIGNATURES = 100


class NoteError(ValueError):
    """A key string or note is malformed, or no trusted signature on it verifies."""


def key_id(name: str, key_type: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public).digest()[:4]


def check_name(name: str) -> str:
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise NoteError(f"bad key name {name!r}: non-empty, no spaces, no '+'")
    return name


@dataclass(frozen=True)
class Signature:
    """One signature line: the signer's name, the 4-byte key id and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


class Verifier:
    """An Ed25519 verifier key, `name+hex(key id)+base64(0x01 ‖ public key)`."""

    key_type = ED25519

    def __init__(self, name: str, public: bytes) -> None:
        self.name, self.public = check_name(name), public
        self.key_id = key_id(name, self.key_type, public)
        self._key = Ed25519PublicKey.from_public_bytes(public)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        name, hex_id, raw = _split_key(text.strip(), 3)
        if len(raw) != 33 or raw[0] != cls.key_type:
            raise NoteError("verifier key: not an Ed25519 key of this kind")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise NoteError("verifier key: key id does not match the name and key")
        return verifier

    def key_string(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([self.key_type]) + self.public).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 signer key, `PRIVATE+KEY+name+hex(key id)+base64(0x01 ‖ seed)`."""

    def __init__(self, name: str, seed: bytes) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = Verifier(name, public)
        self.name, self.key_id = self.verifier.name, self.verifier.key_id
        self._seed = seed

    @classmethod
    def generate(cls, name: str) -> Signer:
        from os import urandom

        return cls(name, urandom(32))

    @classmethod
    def parse(cls, text: str) -> Signer:
        if not text.startswith("PRIVATE+KEY+"):
            raise NoteError("signer key: must start with PRIVATE+KEY+")
        name, hex_id, raw = _split_key(text.strip()[len("PRIVATE+KEY+"):], 3)
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("signer key: not an Ed25519 key")
        signer = cls(name, raw[1:])
        if signer.key_id.hex() != hex_id:
            raise NoteError("signer key: key id does not match the name and key")
        return signer

    def key_string(self) -> str:
        """The secret form; store it sealed, never log it."""
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([ED25519]) + self._seed).decode()}"

    def sign(self, text: str) -> Signature:
        return Signature(self.name, self.key_id, self.sign_bytes(check_text(text).encode()))

    def sign_bytes(self, message: bytes) -> bytes:
        return self._private.sign(message)


def _split_key(text: str, parts: int) -> tuple[str, str, bytes]:
    fields = text.split("+", parts - 1)  # base64 may hold "+"; the name may not
    if len(fields) != parts or len(fields[1]) != 8 or fields[1] != fields[1].lower():
        raise NoteError("key string: expected name+keyid+key")
    try:
        bytes.fromhex(fields[1])
        raw = base64.b64decode(fields[2], validate=True)
    except (ValueError, binascii.Error):
        raise NoteError("key string: bad key id or base64") from None
    return check_name(fields[0]), fields[1], raw


def check_text(text: str) -> str:
    if not text.endswith("\n") or "\n\n" in text:  # a blank line would end the text early
        raise NoteError("note text must end with a newline and have no blank line")
    if any(c != "\n" and not c.isprintable() for c in text):
        raise NoteError("note text has control characters")
    return text


def sign(text: str, *signers: Signer) -> str:
    """The note: text, a blank line, one signature line per signer."""
    return check_text(text) + "\n" + "".join(s.sign(text).line() for s in signers)


def parse(note: str) -> tuple[str, list[Signature]]:
    """Split a note into its text and signature lines (nothing verified yet)."""
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("malformed note")
    text, block = note[: cut + 1], note[cut + 2 :]
    check_text(text)
    lines = block.split("\n")[:-1]
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed note: no or too many signatures")
    return text, [_parse_line(line) for line in lines]


def _parse_line(line: str) -> Signature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError("malformed note: a signature line must start with an em dash")
    name, _, encoded = line[len(SIGNATURE_PREFIX):].partition(" ")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError("malformed note: signature is not base64") from None
    if len(raw) < 5:
        raise NoteError("malformed note: signature too short")
    return Signature(check_name(name), raw[:4], raw[4:])


def open_note(note: str, verifiers: list[Verifier]) -> tuple[str, list[Signature]]:
    """The note's text and the signatures that verify; signatures from unknown keys are ignored.

    Fails if a known key's signature does not verify, or if none verifies.
    """
    text, signatures = parse(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified = []
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(text.encode(), sig.signature):
            raise NoteError(f"invalid signature for key {sig.name}+{sig.key_id.hex()}")
        verified.append(sig)
    if not verified:
        raise NoteError("note has no verifiable signatures")
    return text, verified
