"""A `broker witness` on loopback for tests: the real HTTP server in a thread, its own temp state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.transparency.note import Verifier
from broker.transparency.witness import Witness, make_server


@dataclass
class RunningWitness:
    witness: Witness
    url: str

    @property
    def key(self) -> str:
        return self.witness.cosigner.verifier.key_string()


@contextmanager
def running_witness(data_dir: Path, log_key: str, name: str = "witness.test/w1") -> Iterator[RunningWitness]:
    witness = Witness(data_dir, Verifier.parse(log_key), name)
    server = make_server(witness, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningWitness(witness, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
