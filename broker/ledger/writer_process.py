"""The ledger writer in its own process: the workers of one `broker serve` hand it their writes.

Why a process: with one writer thread in each worker, the workers' writers took turns on the ledger
(SQLite's one write lock; PostgreSQL's chain-head row), each batch waiting about a third of its time
for the other's commit; and each writer thread waited for its worker's GIL at every driver call
(BEGIN, the head read, each insert, COMMIT), so a batch of ~5 grants took ~4 ms of wall time for
~1 ms of its own work. One writer process commits everyone's writes in one queue, with its own GIL.

The process runs an ordinary `LedgerWriter` over its own `LedgerStore` (same database, same append
listeners), so batching, the freeze and parent checks inside the issuing transaction and the
one-write-alone retry are those of the thread. A worker's `RemoteWriter` has the thread writer's
surface (`submit`, `run`, `close`, `listeners`): its writes go over one Unix socket connection, the
writes submitted in one turn of the worker's event loop as one message (a message per write cost the
event loop a tenth of its time in `write` calls, and the writer process as much in reads); after
each batch, one message per connection brings back its writes' answers, each with the rows that
write chained, which the worker publishes to its own feed.

Transport: `multiprocessing.connection` on a socket in the data directory (0600, in a 0700 folder),
with an HMAC challenge on a key only the broker's user can read before anything is unpickled. Both
ends are the same program of one deployment. When the writer process is gone, every waiting write
fails with `LedgerUnavailable` (a 503), and so does every later one: nothing is written elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from itertools import count
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from broker.blocking import may_block
from broker.errors import LedgerUnavailable
from broker.ledger.issuing import Applied, Outcome, Write
from broker.ledger.writer import LedgerWriter

log = logging.getLogger(__name__)
SOCKET_NAME, KEY_NAME = "ledger-writer.sock", "ledger-writer.key"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are at most 107 bytes
UNREACHABLE = (OSError, EOFError, ValueError, AuthenticationError)  # no process, no socket, a wrong key


Commit = Callable[[Sequence[Write]], list[Applied]]  # LedgerStore.apply_writes


def socket_path(data_dir: Path) -> Path:
    path = data_dir / SOCKET_NAME
    if len(str(path)) > MAX_SOCKET_PATH:
        raise LedgerUnavailable(f"ledger writer socket path longer than {MAX_SOCKET_PATH} bytes: {path} "
                                "(a shorter data_dir, or ledger_writer: thread)")  # fmt: skip
    return path


def _wake(address: str) -> None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(address)


class WriterServer:
    """The writer process's side: accepts the workers' connections, answers each write once it is durable."""

    def __init__(self, commit: Commit, data_dir: Path) -> None:
        self._writer = LedgerWriter(commit, name="broker-ledger-writer")
        self._writer.listeners.append(self._batch_done)
        self._writer.after_batch.append(self._send_answers)
        self._answers: dict[Connection, list[tuple[Any, ...]]] = {}  # written by the writer thread only
        self._seconds: float | None = None  # the batch's commit, when it committed (not when retried alone)
        self._address = str(socket_path(data_dir))
        self._key_file = data_dir / KEY_NAME
        self._listener: Listener | None = None
        self._connections: set[Connection] = set()
        self._closed = threading.Event()

    def listen(self) -> None:
        """Bind the socket (a stale one from a killed process is replaced) and write a new key, both 0600."""
        key = secrets.token_bytes(32)
        self._key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # on PostgreSQL nothing else made it
        fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        Path(self._address).unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            self._listener = Listener(self._address, family="AF_UNIX", authkey=key)
        finally:
            os.umask(old_umask)

    def serve_forever(self) -> None:
        assert self._listener is not None, "listen() first"
        while True:
            try:
                conn = self._listener.accept()
            except UNREACHABLE as exc:  # a failed challenge (wrong key) or a dropped connect
                if self._closed.is_set():  # the listener itself was closed: stop, do not spin on it
                    return
                log.warning("ledger writer refused a connection: %s", type(exc).__name__)
                continue
            if self._closed.is_set():
                conn.close()
                return
            threading.Thread(target=self._serve, args=(conn,), name="broker-ledger-writer-conn", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and hang up on every worker (their waiting writes fail), then stop the writer."""
        self._closed.set()
        if self._listener is not None:
            _wake(self._address)  # closing a socket does not wake a thread blocked in its accept; a connect does
            self._listener.close()
        for conn in list(self._connections):
            conn.close()
        self._writer.close()

    def _serve(self, conn: Connection) -> None:
        self._connections.add(conn)
        while True:
            try:
                writes = conn.recv()  # [(request id, write), ...]: what one turn of a worker's loop submitted
            except Exception:  # noqa: BLE001 (gone, or not a message of ours: drop the connection)
                self._connections.discard(conn)
                conn.close()
                return
            for request_id, write in writes:
                self._writer.submit(write, on_done=lambda done, rid=request_id: self._answer(conn, rid, done))

    def _batch_done(self, seconds: float, _writes: int) -> None:
        self._seconds = seconds

    def _answer(self, conn: Connection, request_id: int, done: Future) -> None:
        """On the writer thread, as each write of a batch resolves: queued for that connection."""
        error = done.exception()
        if error is None:
            answer: tuple[Any, ...] = (request_id, done.result(), None)
        else:
            answer = (request_id, None, getattr(error, "detail", None) or f"ledger writer: {type(error).__name__}")
        self._answers.setdefault(conn, []).append(answer)

    def _send_answers(self) -> None:
        """After each batch: one message per connection, (the commit's seconds, all of its answers)."""
        answers, self._answers = self._answers, {}
        seconds, self._seconds = self._seconds, None
        for conn, batch in answers.items():
            try:
                _send(conn, (seconds, batch))
            except OSError:
                pass  # the worker is gone: its connection's reader ends


class RemoteWriter:
    """A worker's side: the thread writer's surface, over one connection to the writer process."""

    def __init__(self, data_dir: Path, on_commit: Callable[[Sequence[Applied]], None]) -> None:
        self._address = str(socket_path(data_dir))
        self._key_file = data_dir / KEY_NAME
        self._on_commit = on_commit
        self.listeners: list[Callable[[float, int], None]] = []  # (seconds, writes) per batch, as the thread's
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._pending: dict[int, Future] = {}
        self._outgoing: list[tuple[int, Write]] = []  # submitted, not sent yet (see `submit`)
        self._ids = count(1)

    def submit(self, write: Write) -> Future:
        """Queue the write for the writer process. On an event loop it is sent when the loop's current turn
        ends, with every write the turn's other requests submitted; from any other thread, at once."""
        future: Future = Future()
        loop = _running_loop()
        with self._lock:
            request_id = next(self._ids)
            self._pending[request_id] = future
            self._outgoing.append((request_id, write))
            first = len(self._outgoing) == 1  # else a send is already due
        if first and loop is not None:
            loop.call_soon(self._flush)  # runs after the callbacks already ready: the rest of this turn
        elif first:
            self._flush()
        return future

    def _flush(self) -> None:
        """Send what is queued as one message; a writer out of reach fails it (and everything waiting)."""
        with self._lock:
            writes, self._outgoing = self._outgoing, []
            if not writes:
                return
            try:
                _send(self._connected(), writes)
            except UNREACHABLE as exc:
                self._drop(f"ledger writer process unavailable ({type(exc).__name__})")

    def run(self, write: Write) -> Outcome:
        may_block()
        return self.submit(write).result()

    def check(self) -> None:
        """Readiness: connected (connecting if need be), else LedgerUnavailable."""
        with self._lock:
            try:
                self._connected()
            except UNREACHABLE as exc:
                raise LedgerUnavailable(f"ledger writer process unavailable ({type(exc).__name__})") from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    def _connected(self) -> Connection:
        if self._conn is None:
            key = Path(self._key_file).read_bytes()
            self._conn = Client(self._address, family="AF_UNIX", authkey=key)
            threading.Thread(target=self._read, args=(self._conn,), name="broker-ledger-writer-client",
                             daemon=True).start()  # fmt: skip
        return self._conn

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                seconds, answers = conn.recv()  # one message: this worker's share of one batch
            except (EOFError, OSError):
                with self._lock:
                    if self._conn is conn:
                        self._drop("ledger writer process unavailable (connection lost)")
                return
            with self._lock:
                futures = [self._pending.pop(request_id, None) for request_id, _, _ in answers]
            if seconds is not None:
                for listener in self.listeners:
                    listener(seconds, len(answers))
            try:
                self._on_commit([applied for _, applied, _ in answers if applied is not None])
            finally:
                _settle(futures, answers)

    def _drop(self, why: str) -> None:
        """Lock held: forget the connection; every write waiting on it fails (its outcome is unknown here,
        and the caller answers 503, as for a failed commit)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None
        waiting, self._pending, self._outgoing = self._pending, {}, []
        for future in waiting.values():
            if not future.done():
                future.set_exception(LedgerUnavailable(why))


def _settle(futures: list[Future | None], answers: list[tuple[Any, ...]]) -> None:
    """Each waiting write gets its outcome, or LedgerUnavailable with the writer's reason."""
    for future, (_, applied, error) in zip(futures, answers, strict=True):
        if future is None:
            continue
        if applied is None:
            future.set_exception(LedgerUnavailable(error or "ledger writer failed"))
        else:
            future.set_result(applied.outcome)


def wait_for_writer(data_dir: Path, alive: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until the writer process accepts a connection (raises LedgerUnavailable if it died or timed out)."""
    deadline = time.monotonic() + timeout
    probe = RemoteWriter(data_dir, on_commit=lambda _: None)
    while True:
        try:
            probe.check()
            probe.close()
            return
        except LedgerUnavailable:
            if not alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # an ordinary thread: no loop
        return None


def _send(conn: Connection, message: Any) -> None:
    """`conn.send` without multiprocessing's pickler, which copies its reducer table for every message
    (a third of the cost of a grant's message); `recv` reads it as it reads its own."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
