"""RFC 9162 Merkle tree: reference vectors, and the broker's proofs checked by an independent verifier.

The verifier here is written from the RFC's definitions (recursive MTH, PATH and SUBPROOF), not the
broker's iterative algorithms, so a shared mistake cannot make both agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from broker.transparency import tree

VECTORS = json.loads((Path(__file__).parent / "data" / "rfc6962_vectors.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_mth(entries: list[bytes]) -> bytes:
    if not entries:
        return _h(b"")
    if len(entries) == 1:
        return _h(b"\x00" + entries[0])
    k = _k(len(entries))
    return _h(b"\x01" + reference_mth(entries[:k]) + reference_mth(entries[k:]))


def reference_root_from_path(m: int, n: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """Undo PATH(m, D[n]): the last proof element is the sibling at the top."""
    if n == 1:
        if proof:
            raise ValueError("proof too long")
        return leaf
    if not proof:
        raise ValueError("proof too short")
    k, top, rest = _k(n), proof[-1], proof[:-1]
    if m < k:
        return _h(b"\x01" + reference_root_from_path(m, k, leaf, rest) + top)
    return _h(b"\x01" + top + reference_root_from_path(m - k, n - k, leaf, rest))


def reference_inclusion_ok(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    try:
        return 0 <= index < size and reference_root_from_path(index, size, leaf, proof) == root
    except ValueError:
        return False


def _subproof_roots(m: int, n: int, complete: bool, old_root: bytes, proof: list[bytes]) -> tuple[bytes, bytes]:
    """Undo SUBPROOF(m, D[n], b): returns (hash of the first m leaves' part, hash of all n)."""
    if m == n:
        if complete:
            if proof:
                raise ValueError("proof too long")
            return old_root, old_root
        if len(proof) != 1:
            raise ValueError("proof length")
        return proof[0], proof[0]
    if not proof:
        raise ValueError("proof too short")
    k, top, rest = _k(n), proof[-1], proof[:-1]
    if m <= k:
        old, new = _subproof_roots(m, k, complete, old_root, rest)
        return old, _h(b"\x01" + new + top)
    old, new = _subproof_roots(m - k, n - k, False, old_root, rest)
    return _h(b"\x01" + top + old), _h(b"\x01" + top + new)


def reference_consistency_ok(first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes]) -> bool:
    if not 0 <= first <= second:
        return False
    if first == 0:
        return not proof
    if first == second:
        return not proof and root1 == root2
    try:
        return _subproof_roots(first, second, True, root1, proof) == (root1, root2)
    except ValueError:
        return False


def _memory(entries: list[bytes]) -> tree.MemoryTree:
    log = tree.MemoryTree()
    log.add(entries)
    return log


def test_reference_verifier_accepts_the_published_vectors():
    for v in VECTORS["inclusion"]:
        proof = [bytes.fromhex(x) for x in v["proof"]]
        leaf = tree.leaf_hash(LEAVES[v["index"]])
        assert reference_inclusion_ok(v["index"], v["size"], leaf, proof, ROOTS[v["size"] - 1])
    for v in VECTORS["consistency"]:
        proof = [bytes.fromhex(x) for x in v["proof"]]
        assert reference_consistency_ok(v["first"], v["second"], ROOTS[v["first"] - 1], ROOTS[v["second"] - 1], proof)


def test_roots_match_the_vectors_at_every_size():
    log = tree.MemoryTree()
    assert log.root() == bytes.fromhex(VECTORS["empty_root"])
    for size, entry in enumerate(LEAVES, start=1):
        log.add([entry])  # incremental, one leaf at a time
        assert log.root() == ROOTS[size - 1] == reference_mth(LEAVES[:size])
        assert tree.root_from_frontier(log.frontier) == ROOTS[size - 1]
    assert [log.root(size) for size in range(1, 9)] == ROOTS


@pytest.mark.parametrize("v", VECTORS["inclusion"], ids=lambda v: f"{v['index']}@{v['size']}")
def test_inclusion_proofs_equal_the_vectors(v):
    proof = _memory(LEAVES).inclusion(v["index"], v["size"])
    assert [p.hex() for p in proof] == v["proof"]
    tree.verify_inclusion(v["index"], v["size"], tree.leaf_hash(LEAVES[v["index"]]), proof, ROOTS[v["size"] - 1])


@pytest.mark.parametrize("v", VECTORS["consistency"], ids=lambda v: f"{v['first']}-{v['second']}")
def test_consistency_proofs_equal_the_vectors(v):
    proof = _memory(LEAVES).consistency(v["first"], v["second"])
    assert [p.hex() for p in proof] == v["proof"]
    tree.verify_consistency(v["first"], v["second"], ROOTS[v["first"] - 1], ROOTS[v["second"] - 1], proof)


def test_every_proof_up_to_40_leaves_verifies_independently():
    entries = [f"event {i}".encode() for i in range(40)]
    log = _memory(entries)
    for size in range(1, 41):
        root = reference_mth(entries[:size])
        assert log.root(size) == root
        for index in range(size):
            proof = log.inclusion(index, size)
            assert reference_inclusion_ok(index, size, tree.leaf_hash(entries[index]), proof, root)
        for first in range(0, size + 1):
            proof = log.consistency(first, size)
            assert reference_consistency_ok(first, size, log.root(first), root, proof), (first, size)


def test_batched_append_equals_one_by_one():
    entries = [bytes([i]) for i in range(37)]
    one, batched = tree.MemoryTree(), tree.MemoryTree()
    for e in entries:
        one.add([e])
    batched.add(entries[:5])
    batched.add(entries[5:])
    assert one.nodes == batched.nodes and one.frontier == batched.frontier
    assert len(one.nodes) < 2 * len(entries)  # complete subtrees only: about two nodes per leaf


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    return [bytes([p[0] ^ 8]) + p[1:] if j == i else p for j, p in enumerate(proof)]


def _inclusion_probes(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes):
    yield "index-1", (index - 1, size, leaf, proof, root)
    yield "index+1", (index + 1, size, leaf, proof, root)
    yield "index^2", (index ^ 2, size, leaf, proof, root)
    yield "size*2", (index, size * 2, leaf, proof, root)
    yield "size/2", (index, size // 2, leaf, proof, root)
    yield "wrong leaf", (index, size, b"WrongLeaf", proof, root)
    yield "empty root", (index, size, leaf, proof, tree.EMPTY_ROOT)
    yield "trailing root", (index, size, leaf, [*proof, root], root)
    yield "preceding root", (index, size, leaf, [root, *proof], root)
    for i in range(len(proof)):
        yield f"flip {i}", (index, size, leaf, _flip(proof, i), root)
    if proof:
        yield "removed", (index, size, leaf, proof[:-1], root)


@pytest.mark.parametrize("v", VECTORS["inclusion"][1:], ids=lambda v: f"{v['index']}@{v['size']}")
def test_corrupted_inclusion_proofs_fail(v):
    proof = [bytes.fromhex(x) for x in v["proof"]]
    leaf, root = tree.leaf_hash(LEAVES[v["index"]]), ROOTS[v["size"] - 1]
    for name, args in _inclusion_probes(v["index"], v["size"], leaf, proof, root):
        with pytest.raises(tree.ProofError):
            tree.verify_inclusion(*args)
        assert not reference_inclusion_ok(*args), name


@pytest.mark.parametrize("v", VECTORS["consistency"][1:], ids=lambda v: f"{v['first']}-{v['second']}")
def test_corrupted_consistency_proofs_fail(v):
    first, second = v["first"], v["second"]
    proof, r1, r2 = [bytes.fromhex(x) for x in v["proof"]], ROOTS[first - 1], ROOTS[second - 1]
    probes = [(first - 1, second, r1, r2, proof), (first + 1, second, r1, r2, proof), (first, second * 2, r1, r2, proof),
              (first, second, r2, r1, proof), (first, second, r1, b"x" * 32, proof), (first, second, r1, r2, []),
              (first, second, r1, r2, [*proof, r1]), (first, second, r1, r2, [r2, *proof]), (first, second, r1, r2, proof[:-1])]
    probes += [(first, second, r1, r2, _flip(proof, i)) for i in range(len(proof))]
    for args in probes:
        if args[0] <= 0:
            continue
        with pytest.raises(tree.ProofError):
            tree.verify_consistency(*args)


def test_consistency_edge_cases():
    tree.verify_consistency(0, 5, b"", ROOTS[4], [])
    tree.verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    for args in [(3, 3, ROOTS[2], ROOTS[3], []), (4, 3, ROOTS[3], ROOTS[2], []), (0, 5, b"", ROOTS[4], [ROOTS[0]])]:
        with pytest.raises(tree.ProofError):
            tree.verify_consistency(*args)
    with pytest.raises(tree.ProofError):
        tree.inclusion_ranges(5, 5)
