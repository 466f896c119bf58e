"""C2SP signed-note and tlog-checkpoint: the published example keys and signatures, and cosignatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from broker.transparency import checkpoint as cp
from broker.transparency import note

V = json.loads((Path(__file__).parent / "data" / "signed_note_vectors.json").read_text())


def test_signer_key_signs_the_published_signature():
    signer = note.Signer.parse(V["signer_key"])
    assert signer.key_string() == V["signer_key"]
    assert signer.verifier.key_string() == V["verifier_key"]
    assert note.sign(V["text"], signer) == V["text"] + "\n" + V["signature_line"]  # Ed25519 is deterministic


def test_verifier_key_round_trips_and_the_key_id_is_the_spec_hash():
    verifier = note.Verifier.parse(V["verifier_key"])
    assert verifier.name == "PeterNeumann" and verifier.key_id.hex() == "c74f20a3"
    assert verifier.key_id == note.key_id("PeterNeumann", 0x01, verifier.public)


@pytest.mark.parametrize("key", [*V["bad_verifier_keys"], V["verifier_key"][:-1], V["verifier_key"].replace("c74f", "c75f"),
                                 "Peter Neumann" + V["verifier_key"][12:], V["verifier_key"] + "+x"])
def test_mangled_verifier_keys_are_refused(key):
    with pytest.raises(note.NoteError):
        note.Verifier.parse(key)


def test_open_verifies_known_and_ignores_unknown_signatures():
    peter, enoch = note.Verifier.parse(V["verifier_key"]), note.Verifier.parse(V["other_verifier_key"])
    message = V["text"] + "\n" + V["signature_line"] + V["other_signature_line"]
    text, sigs = note.open_note(message, [peter])
    assert text == V["text"] and [s.name for s in sigs] == ["PeterNeumann"]
    assert [s.name for s in note.open_note(message, [peter, enoch])[1]] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(note.NoteError, match="no verifiable"):
        note.open_note(message, [])


@pytest.mark.parametrize("message", [
    V["text"],
    V["text"] + "\n",
    V["text"] + "\n" + V["signature_line"][:-1],
    "\x01" + V["text"] + "\n" + V["signature_line"],
    V["text"] + "\n" + V["signature_line"] + "Unexpected line.\n",
    V["text"] + "\n" + V["signature_line"].replace("x08go/ZJ", "x08go/ZK"),
    V["text"].replace("answer", "ANSWER") + "\n" + V["signature_line"],
], ids=["no-sigs", "blank", "no-final-newline", "control-char", "trailing-line", "bad-signature", "edited-text"])
def test_bad_notes_are_refused(message):
    with pytest.raises(note.NoteError):
        note.open_note(message, [note.Verifier.parse(V["verifier_key"])])


def test_checkpoint_body_signs_and_opens():
    log = note.Signer.generate("broker.example/log")
    point = cp.Checkpoint("broker.example/log", 20852163, base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="))
    assert point.body() == "broker.example/log\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    signed = cp.sign_checkpoint(point, log)
    assert cp.open_checkpoint(signed, log.verifier) == (point, [])
    other = note.Signer.generate("broker.example/log")
    with pytest.raises(note.NoteError):
        cp.open_checkpoint(signed, other.verifier)


@pytest.mark.parametrize("body", ["o\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n", "o\n12\nAAAA\n", "o\n12\n", "o\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"])
def test_malformed_checkpoint_bodies_are_refused(body):
    with pytest.raises(note.NoteError):
        cp.Checkpoint.parse(body)


def test_cosignature_v1_signs_the_timestamped_message():
    witness = cp.Cosigner("witness.example/w1", bytes(range(32)))
    body = cp.Checkpoint("log", 3, bytes(32), ("ext line",)).body()
    sig = witness.cosign(body, 1679315147)
    assert sig.key_id == note.key_id("witness.example/w1", 0x04, witness.verifier.public)
    assert sig.signature[:8] == (1679315147).to_bytes(8, "big") and len(sig.signature) == 72
    verifier = cp.CosignatureVerifier.parse(witness.verifier.key_string())
    assert verifier.verify(body, sig)
    assert not verifier.verify(body.replace("3", "4"), sig)
    assert not note.Verifier(verifier.name, witness.verifier.public).verify(body.encode(), sig.signature[8:])
