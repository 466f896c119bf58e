"""A C2SP tlog-witness: cosigns a log's checkpoint only when it extends the last one it cosigned.

A separate small process (`broker witness serve`) with its own key and state; it imports nothing of
the broker but this package. State is one JSON file, replaced atomically under a lock, so checking
the old size and persisting the new checkpoint happen as one step (tlog-witness, add-checkpoint).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from broker.transparency import tree
from broker.transparency.checkpoint import Checkpoint, Cosigner, open_checkpoint
from broker.transparency.note import NoteError, Verifier, open_note, parse

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
MAX_PROOF_LINES = 63
SIZE_TYPE = "text/x.tlog.size"


@dataclass(frozen=True)
class Answer:
    """An add-checkpoint outcome: HTTP status, body and content type."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class Witness:
    """The witness's logic, without HTTP: one trusted log key, the latest cosigned checkpoint per origin."""

    def __init__(self, data_dir: Path, log_key: Verifier, name: str, clock: Callable[[], float] = time.time) -> None:
        self.data_dir, self.log_key, self._clock = data_dir, log_key, clock
        self.cosigner = Cosigner(name, load_seed(data_dir / "witness_key"))
        self._state_path = data_dir / "state.json"
        self._lock = threading.Lock()

    def latest(self) -> str | None:
        """The last checkpoint this witness cosigned, with its cosignature (what auditors compare against)."""
        return self._state().get(self.log_key.name, {}).get("note")

    def add_checkpoint(self, body: str) -> Answer:
        try:
            old, proof, note = _parse_request(body)
        except (NoteError, ValueError, binascii.Error) as exc:
            return Answer(400, f"bad request: {exc}\n")
        try:
            _, sigs = parse(note)
            if all(s.name != self.log_key.name for s in sigs):
                return Answer(404, "unknown log origin\n")
            checkpoint, _ = open_checkpoint(note, self.log_key)
            _, verified = open_note(note, [self.log_key])
        except NoteError:
            return Answer(403, "no valid signature from a trusted log key\n")
        if old > checkpoint.size:
            return Answer(400, "old size is larger than the checkpoint size\n")
        signed = checkpoint.body() + "\n" + "".join(s.line() for s in verified)
        with self._lock:
            return self._extend(old, proof, checkpoint, signed)

    def _extend(self, old: int, proof: list[bytes], checkpoint: Checkpoint, signed: str) -> Answer:
        state = self._state()
        known = state.get(checkpoint.origin, {"size": 0, "root": tree.EMPTY_ROOT.hex()})
        if old != known["size"]:
            return Answer(409, f"{known['size']}\n", SIZE_TYPE)
        try:
            tree.verify_consistency(old, checkpoint.size, bytes.fromhex(known["root"]), checkpoint.root, proof)
        except tree.ProofError:
            if old == checkpoint.size:  # same size, another root: a fork
                return Answer(409, f"{known['size']}\n", SIZE_TYPE)
            log.error("refused a checkpoint of %s: consistency proof from %d to %d does not verify",
                      checkpoint.origin, old, checkpoint.size)  # fmt: skip
            return Answer(422, "consistency proof does not verify\n")
        line = self.cosigner.cosign(checkpoint.body(), int(self._clock())).line()
        state[checkpoint.origin] = {"size": checkpoint.size, "root": checkpoint.root.hex(),
                                    "note": signed + line}  # fmt: skip
        self._save(state)
        return Answer(200, line)

    def _state(self) -> dict:
        return json.loads(self._state_path.read_text()) if self._state_path.exists() else {}

    def _save(self, state: dict) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # persisted before the cosignature leaves
        os.replace(tmp, self._state_path)


def _parse_request(body: str) -> tuple[int, list[bytes], str]:
    head, sep, note = body.partition("\n\n")
    if not sep:
        raise ValueError("missing the empty line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise ValueError("the first line must be `old <size>`")
    size = lines[0][4:]
    if not size.isdigit() or (size != "0" and size.startswith("0")):
        raise ValueError("old size is not a decimal without leading zeros")
    proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    if len(proof) > MAX_PROOF_LINES or any(len(p) != 32 for p in proof):
        raise ValueError("bad consistency proof lines")
    if int(size) == 0 and proof:
        raise ValueError("the proof must be empty when the old size is zero")
    return int(size), proof, note


def load_seed(path: Path) -> bytes:
    """The witness's private key seed, made on first start, readable by the owner only."""
    if path.exists():
        return base64.b64decode(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(seed).decode() + "\n")
    return seed


def make_server(witness: Witness, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The witness's HTTP face: `POST /add-checkpoint` (tlog-witness) and `GET /checkpoint` (its latest)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/add-checkpoint":
                return self._send(Answer(404, "not found\n"))
            length = self.headers.get("content-length", "")
            if not length.isdigit() or int(length) > MAX_BODY:
                return self._send(Answer(413 if length.isdigit() else 411, "body too large or without length\n"))
            try:
                body = self.rfile.read(int(length)).decode()
            except UnicodeDecodeError:
                return self._send(Answer(400, "body is not UTF-8\n"))
            self._send(witness.add_checkpoint(body))

        def do_GET(self) -> None:  # noqa: N802
            latest = witness.latest() if self.path == "/checkpoint" else None
            self._send(Answer(200, latest) if latest else Answer(404, "no checkpoint cosigned yet\n"))

        def _send(self, answer: Answer) -> None:
            data = answer.body.encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("witness %s", format % args)

    return ThreadingHTTPServer((host, port), Handler)


def serve(port: int, data_dir: Path, log_key: str, name: str, host: str = "127.0.0.1") -> None:
    """`broker witness serve`: print the witness's verifier key, then answer until stopped."""
    witness = Witness(data_dir, Verifier.parse(log_key), name)
    server = make_server(witness, port, host)
    print(f"witness {name} key {witness.cosigner.verifier.key_string()} on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
