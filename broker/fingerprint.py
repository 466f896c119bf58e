"""SHA-256 fingerprints: what the broker stores and logs in place of a token, secret or handle."""

from __future__ import annotations

import hashlib

SHORT = 23  # "sha256:" and 16 hex digits: enough to match audit rows, too little to be a secret


def fingerprint(text: str, *, short: bool = False) -> str:
    """`sha256:<hex>` of `text`; `short` keeps the first 16 hex digits (for handles in audit rows)."""
    full = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return full[:SHORT] if short else full
