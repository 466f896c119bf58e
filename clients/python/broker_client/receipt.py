"""Offline check of a grant receipt: the log's signed checkpoint (C2SP signed-note, tlog-checkpoint),
witness cosignatures (C2SP tlog-cosignature/v1) and the RFC 9162 inclusion proof of the grant's event.

Shares only the wire format with the broker: nothing here imports it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker_client.errors import ReceiptInvalid

_DASH = "\u2014 "


@dataclass(frozen=True)
class Receipt:
    """A verified receipt: the event at `log_index` is in the log of `size` leaves with root `root`."""

    log_index: int
    size: int
    root: bytes
    event: dict[str, Any]
    witnesses: tuple[str, ...]


def verify_receipt(receipt: dict[str, Any], log_key: str, witness_keys: Sequence[str] = (), *,
                   require_witnesses: int = 0, grant_id: str | None = None) -> Receipt:  # fmt: skip
    """Verify a `GET /v1/grants/{id}/receipt` answer against the log's verifier key; raises ReceiptInvalid."""
    try:
        name, public = _key(log_key, 0x01)
        text, sigs = _split_note(receipt["checkpoint"])
        if not any(s[0] == name and s[1] == _key_id(name, 0x01, public) and _ok(public, s[2], text.encode()) for s in sigs):
            raise ReceiptInvalid("the checkpoint is not signed by the log key")
        origin, size, root = _checkpoint(text)
        if origin != name:
            raise ReceiptInvalid("the checkpoint is for another log")
        witnesses = tuple(w for w in (_cosigned(k, text, sigs) for k in witness_keys) if w)
        if len(witnesses) < require_witnesses:
            raise ReceiptInvalid(f"{len(witnesses)} of {require_witnesses} required witness cosignatures")
        index, proof = int(receipt["log_index"]), receipt["inclusion_proof"]
        if int(proof["size"]) != size or int(proof["index"]) != index:
            raise ReceiptInvalid("the inclusion proof is for another tree or leaf")
        leaf = base64.b64decode(receipt["leaf"], validate=True)
        hashes = [base64.b64decode(h, validate=True) for h in proof["hashes"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ReceiptInvalid(f"malformed receipt: {type(exc).__name__}") from None
    if _root_from_inclusion(index, size, hashlib.sha256(b"\x00" + leaf).digest(), hashes) != root:
        raise ReceiptInvalid("the inclusion proof does not lead to the checkpoint's root")
    event = json.loads(leaf)
    if grant_id is not None and (event.get("grant_id") != grant_id or event.get("kind") != "issued"):
        raise ReceiptInvalid("the logged event is not this grant's issuance")
    return Receipt(index, size, root, event, witnesses)


def _key(text: str, kind: int) -> tuple[str, bytes]:
    name, hex_id, encoded = text.strip().split("+", 2)
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) != 33 or raw[0] != kind or _key_id(name, kind, raw[1:]).hex() != hex_id:
        raise ValueError("bad verifier key")
    return name, raw[1:]


def _key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def _ok(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise ValueError("not a signed note")
    sigs = []
    for line in note[cut + 2 : -1].split("\n"):
        if not line.startswith(_DASH):
            raise ValueError("bad signature line")
        signer, _, encoded = line[len(_DASH):].partition(" ")
        raw = base64.b64decode(encoded, validate=True)
        sigs.append((signer, raw[:4], raw[4:]))
    return note[: cut + 1], sigs


def _checkpoint(text: str) -> tuple[str, int, bytes]:
    origin, size, root = text.split("\n")[:3]
    if not size.isdigit() or (size != "0" and size.startswith("0")):
        raise ValueError("bad checkpoint size")
    return origin, int(size), base64.b64decode(root, validate=True)


def _cosigned(key: str, text: str, sigs: list[tuple[str, bytes, bytes]]) -> str | None:
    name, public = _key(key, 0x04)
    for signer, key_id, raw in sigs:
        if signer == name and key_id == _key_id(name, 0x04, public) and len(raw) == 72:
            (timestamp,) = struct.unpack(">Q", raw[:8])
            if _ok(public, raw[8:], f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()):
                return name
    return None


def _root_from_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes | None:
    """RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None
