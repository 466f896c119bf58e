"""RFC 9162 §2.1 Merkle tree hashing, incremental append, and inclusion and consistency proofs (pure).

The tree is stored as its complete subtrees: node (level, index) covers leaves
[index·2^level, (index+1)·2^level). Appending a leaf adds it and the subtrees it completes
(two nodes per leaf on average) and needs only the right frontier, never the whole tree.
Every other hash a root or proof needs is a fold of O(log n) stored nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

NodeKey = tuple[int, int]  # (level, index)
Range = tuple[int, int]  # leaves [start, end)
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not verify, or was asked for sizes or indexes the tree does not have."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def append(frontier: Sequence[bytes], size: int, leaves: Iterable[bytes]) -> tuple[list[bytes], int, list[tuple[int, int, bytes]]]:
    """Add leaf hashes to a tree of `size` leaves given its right frontier.

    The frontier holds the roots of the complete subtrees of `size`'s binary decomposition, largest
    first. Returns the new frontier, the new size and the new nodes as (level, index, hash).
    """
    stack, nodes = list(frontier), []
    for value in leaves:
        index, level, current = size, 0, value
        nodes.append((0, index, current))
        while index & 1:  # each trailing one bit of the index completes one more subtree
            current = node_hash(stack.pop(), current)
            index, level = index >> 1, level + 1
            nodes.append((level, index, current))
        stack.append(current)
        size += 1
    return stack, size, nodes


def root_from_frontier(frontier: Sequence[bytes]) -> bytes:
    if not frontier:
        return EMPTY_ROOT
    current = frontier[-1]
    for left in reversed(frontier[:-1]):
        current = node_hash(left, current)
    return current


def range_nodes(start: int, end: int) -> list[NodeKey]:
    """The complete subtrees that make up [start, end), left to right (start aligned as RFC 9162 splits are)."""
    keys, position, remaining = [], start, end - start
    for level in range(remaining.bit_length() - 1, -1, -1):
        if remaining >> level & 1:
            keys.append((level, position >> level))
            position += 1 << level
    return keys


def range_hash(nodes: dict[NodeKey, bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) from stored nodes."""
    return root_from_frontier([nodes[key] for key in range_nodes(start, end)])


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The subtrees whose hashes form PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), in proof order."""
    if not 0 <= index < size:
        raise ProofError(f"no leaf {index} in a tree of size {size}")
    return _path(index, 0, size)


def _path(m: int, start: int, end: int) -> list[Range]:
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, start, start + k), (start + k, end)]
    return [*_path(m - k, start + k, end), (start, start + k)]


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The subtrees whose hashes form PROOF(first, D[0:second]) (RFC 9162 §2.1.4.1), in proof order."""
    if not 0 <= first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    return _subproof(first, 0, second, True)


def _subproof(m: int, start: int, end: int, complete: bool) -> list[Range]:
    n = end - start
    if m == n:
        return [] if complete else [(start, end)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, start, start + k, complete), (start + k, end)]
    return [*_subproof(m - k, start + k, end, False), (start, start + k)]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def needed_nodes(ranges: Iterable[Range]) -> set[NodeKey]:
    return {key for start, end in ranges for key in range_nodes(start, end)}


def hashes_for(ranges: Sequence[Range], fetch: Callable[[set[NodeKey]], dict[NodeKey, bytes]]) -> list[bytes]:
    """Resolve proof ranges to hashes with one batched fetch of stored nodes."""
    nodes = fetch(needed_nodes(ranges))
    return [range_hash(nodes, start, end) for start, end in ranges]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises ProofError unless `leaf` is leaf `index` of the tree `root` of `size`."""
    if not 0 <= index < size:
        raise ProofError("leaf index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise ProofError("inclusion proof does not verify")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2; raises ProofError unless tree `second_root` extends tree `first_root`."""
    if not 0 <= first <= second:
        raise ProofError("the first tree is larger than the second")
    if first == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if first == second:
        if proof or first_root != second_root:
            raise ProofError("same size, different roots: the log forked")
        return
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, first_root)
    if not path:
        raise ProofError("empty consistency proof")
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise ProofError("consistency proof does not verify")


class MemoryTree:
    """A whole tree in memory (for `audit verify` and tests): same append, same proofs."""

    def __init__(self) -> None:
        self.frontier: list[bytes] = []
        self.size = 0
        self.nodes: dict[NodeKey, bytes] = {}

    def add(self, entries: Iterable[bytes]) -> None:
        self.frontier, self.size, new = append(self.frontier, self.size, (leaf_hash(e) for e in entries))
        self.nodes.update({(level, index): value for level, index, value in new})

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        return range_hash(self.nodes, 0, size) if size else EMPTY_ROOT

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return hashes_for(inclusion_ranges(index, size), self._fetch)

    def consistency(self, first: int, second: int) -> list[bytes]:
        return hashes_for(consistency_ranges(first, second), self._fetch)

    def _fetch(self, keys: set[NodeKey]) -> dict[NodeKey, bytes]:
        return {key: self.nodes[key] for key in keys}
