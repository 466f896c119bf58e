"""Identifiers that sort by when they were made: a grant's id, an event's id.

Both are keys of ledger indexes (the grants table's primary key, the events' unique id, the events
by grant). A random id (uuid4, `token_urlsafe`) puts each new row on a random page of each of those
indexes, so every commit dirties, writes to the WAL and later checkpoints one page more per row;
the ledger writer's commit was the largest part of its work (bench/README.md, eighth pass). A
time prefix puts a batch's new keys next to each other at the end of the index, as a
sequence would, while the random part keeps an id unguessable and unique across replicas.

The prefix is the creation time in milliseconds as 12 hex digits (hex sorts as the number does, and
12 digits last until the year 10889); it reveals no more than the grant's `issued_at`, which its
holder and the ledger already show.
"""

from __future__ import annotations

import secrets


def time_ordered(now: float, random_bytes: int) -> str:
    """`now` (epoch seconds) as 12 hex digits of milliseconds, then `random_bytes` random bytes in hex."""
    return f"{max(0, int(now * 1000)):012x}{secrets.token_hex(random_bytes)}"
