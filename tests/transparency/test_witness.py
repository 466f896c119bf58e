"""The witness (C2SP tlog-witness add-checkpoint) over HTTP, and the broker pushing checkpoints to it."""

from __future__ import annotations

import base64
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from broker.transparency import checkpoint as cp
from broker.transparency import note, tree
from tests.support.broker import broker_settings, open_client
from tests.transparency.witnesses import running_witness

ORIGIN = "log.test/log"


def _request(old: int, proof: list[bytes], signed: str) -> str:
    return "\n".join([f"old {old}", *(base64.b64encode(h).decode() for h in proof)]) + "\n\n" + signed


def _grow(log: tree.MemoryTree, n: int) -> None:
    log.add(f"leaf {log.size + i}".encode() for i in range(n))


def _signed(signer: note.Signer, log: tree.MemoryTree, size: int | None = None) -> str:
    size = log.size if size is None else size
    return cp.sign_checkpoint(cp.Checkpoint(signer.name, size, log.root(size)), signer)


def test_add_checkpoint_follows_the_spec(tmp_path) -> None:
    signer, log = note.Signer.generate(ORIGIN), tree.MemoryTree()
    _grow(log, 5)
    with running_witness(tmp_path, signer.verifier.key_string()) as w:
        post = lambda body: httpx.post(f"{w.url}/add-checkpoint", content=body.encode())  # noqa: E731
        first = post(_request(0, [], _signed(signer, log)))
        assert first.status_code == 200 and first.text.startswith("\u2014 witness.test/w1 ")
        verifier = cp.CosignatureVerifier.parse(w.key)
        _, names = cp.open_checkpoint(_signed(signer, log) + first.text, signer.verifier, [verifier])
        assert names == ["witness.test/w1"]

        stale = post(_request(0, [], _signed(signer, log)))
        assert (stale.status_code, stale.text, stale.headers["content-type"]) == (409, "5\n", "text/x.tlog.size")
        _grow(log, 4)
        assert post(_request(5, [b"\x00" * 32, *log.consistency(5, 9)[1:]], _signed(signer, log))).status_code == 422
        assert post(_request(5, log.consistency(5, 9), _signed(signer, log))).status_code == 200
        assert post(_request(9, [], _signed(signer, log))).status_code == 200  # same size, same root: cosigned again

        other = tree.MemoryTree()
        _grow(other, 3)
        other.add([b"forked"] * 6)
        assert post(_request(9, [], _signed(signer, other))).status_code == 409  # same size, another root
        assert post(_request(12, [], _signed(signer, log, 9))).status_code == 400  # old larger than size
        stranger = note.Signer.generate("other.test/log")
        assert post(_request(0, [], _signed(stranger, log))).status_code == 404  # unknown origin
        impostor = note.Signer.generate(ORIGIN)
        assert post(_request(9, [], _signed(impostor, log))).status_code == 403  # not the trusted key
        assert post("old 01\n\n" + _signed(signer, log)).status_code == 400
        latest = httpx.get(f"{w.url}/checkpoint").text
        assert cp.open_checkpoint(latest, signer.verifier, [verifier]) == (cp.Checkpoint(ORIGIN, 9, log.root()), ["witness.test/w1"])


def test_the_witness_imports_only_the_transparency_package() -> None:
    code = "import sys, broker.transparency.witness as w; print(sorted(m for m in sys.modules if m.startswith('broker')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(m.startswith("broker.transparency") or m == "broker" for m in eval(loaded))  # noqa: S307


def test_broker_pushes_checkpoints_and_serves_them_cosigned(tmp_path, issuers) -> None:
    with open_client(broker_settings(tmp_path / "b", issuers)) as probe:
        log_key = probe.components.log.verifier().key_string()
    with running_witness(tmp_path / "w", log_key) as w:
        settings = broker_settings(tmp_path / "b", issuers, log_witnesses=[{"url": w.url, "key": w.key}])
        with open_client(settings) as broker:
            parts = broker.components.log
            for round_ in range(3):
                broker.grant(issuers.worker(), task=f"t{round_}", ttl=60)
                parts.checkpointer.maybe_sign(force=True)
                parts.witnesses.run()
                served = broker.get("/v1/log/checkpoint").text
                checkpoint, names = cp.open_checkpoint(served, note.Verifier.parse(log_key),
                                                       [cp.CosignatureVerifier.parse(w.key)])  # fmt: skip
                assert names == ["witness.test/w1"] and checkpoint.size == len(broker.events())
            assert broker.get("/readyz").json()["log_witnesses"] == {"witness.test/w1": "ok"}


def test_a_refused_checkpoint_raises_the_alarm(tmp_path, issuers, caplog) -> None:
    """A witness that saw more than this log has (a cut tail, a restored backup) refuses with 409."""
    with open_client(broker_settings(tmp_path / "b", issuers)) as probe:
        log_key = probe.components.log.verifier().key_string()
    (tmp_path / "b2").mkdir()
    (tmp_path / "b2" / "log_key").write_bytes((tmp_path / "b" / "log_key").read_bytes())  # a backup: same key
    (tmp_path / "b2" / "log_key").chmod(0o600)
    with running_witness(tmp_path / "w", log_key) as w:
        witnesses = [{"url": w.url, "key": w.key}]
        with open_client(broker_settings(tmp_path / "b", issuers, log_witnesses=witnesses)) as broker:
            for n in range(3):
                broker.grant(issuers.worker(), task=f"t{n}", ttl=60)
            broker.components.log.checkpointer.maybe_sign(force=True)
            broker.components.log.witnesses.run()
        caplog.set_level(logging.ERROR, logger="broker.transparency.push")  # the worker thread may push first
        with open_client(broker_settings(tmp_path / "b2", issuers, log_witnesses=witnesses)) as restored:
            restored.grant(issuers.worker(), task="t-other", ttl=60)
            restored.components.log.checkpointer.maybe_sign(force=True)
            restored.components.log.witnesses.run()
            assert any("refused checkpoint 1: HTTP 409" in r.getMessage() for r in caplog.records)
            metrics = restored.get("/metrics").text
            assert re.search(r'broker_log_witness_rejections_total\{status="409",witness="witness.test/w1"\} [1-9]', metrics)
            detail = restored.get("/readyz").json()["log_witnesses"]["witness.test/w1"]
            assert "HTTP 409" in detail


def test_witness_serve_on_a_taken_port_says_so_and_exits(tmp_path) -> None:
    key = note.Signer.generate(ORIGIN).verifier.key_string()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(Path(sys.executable).parent / "broker"), "witness", "serve", "--port", str(port),
             "--data-dir", str(tmp_path), "--log-key", key], check=False, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
