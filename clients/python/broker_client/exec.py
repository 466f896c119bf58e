"""`broker-exec`: run a command with a credential for one task, give it back when the command exits.

broker-exec --boundary orders-db --scope read --ttl 10m -- ./migrate.sh
broker-exec --boundary orders-db --scope read --file /run/creds.env --renew-signal HUP -- ./server
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from broker_client.client import Client, Task
from broker_client.credential import Credential
from broker_client.errors import BrokerClientError, BrokerError, CompletionFailed, TransportError
from broker_client.svid import SvidFiles

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
EX_USAGE, EX_UNAVAILABLE, EX_CANTCREAT, EX_NOPERM, EX_NOTFOUND = 64, 69, 73, 77, 127
EXIT_CODES = """exit status:
  the command's own (128+N when signal N ended it)
  2    bad arguments
  64   no identity source or broker address
  69   broker unreachable or unavailable (5xx)
  73   the --file cannot be created
  77   refused (identity, policy, DPoP, frozen)
  127  command not found

The command never sees how broker-exec got its identity (BROKER_IDENTITY_*, BROKER_SPIFFE_JWT_FILE,
BROKER_K8S_TOKEN_FILE, ACTIONS_ID_TOKEN_REQUEST_*): only the credential. With --file, the
credential is renewed at half its lifetime, the file replaced atomically and --renew-signal sent;
in the environment it cannot be renewed, and broker-exec says so when it expires."""
# what the SDK reads to find an identity (broker_client.identity.from_env): the child gets none of it
IDENTITY_ENV = frozenset({
    "BROKER_IDENTITY_TOKEN", "BROKER_IDENTITY_COMMAND", "BROKER_IDENTITY_FILE", "BROKER_SPIFFE_JWT_FILE",
    "BROKER_K8S_TOKEN_FILE", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
})  # fmt: skip
RENEW_AT = 0.5  # of the remaining lifetime, as SPIRE rotates SVIDs; the old credential lives on until its expiry
RETRY_SECONDS = 5.0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="broker-exec", description=__doc__.split("\n\n")[0], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--boundary", required=True, help="the one trust boundary, e.g. orders-db")
    parser.add_argument("--scope", action="append", required=True, help="a scope (repeat, or comma-separated)")
    parser.add_argument("--ttl", default=None, help="seconds or 30s/10m/1h (default: the boundary's)")
    parser.add_argument("--task", default=None, help="task name (default exec-<command>); a suffix makes it unique")
    parser.add_argument("--url", default=None, help="broker address (default BROKER_URL)")
    parser.add_argument(
        "--svid-dir",
        type=Path,
        default=None,
        help="X.509-SVID files from spiffe-helper (svid.pem, svid_key.pem, bundle.pem): mutual TLS",
    )
    parser.add_argument("--file", type=Path, default=None, help="write the variables to this new 0600 file instead")
    parser.add_argument(
        "--renew-signal",
        default=None,
        metavar="SIG",
        help="with --file: signal the command after each renewal (HUP, USR1, ...)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("give the command after --")
    args.scopes = [s for item in args.scope for s in item.split(",") if s]
    args.renew_signal = _signal(parser, args.renew_signal, args.file)
    return args


def _signal(parser: argparse.ArgumentParser, name: str | None, file: Path | None) -> signal.Signals | None:
    if name is None:
        return None
    if file is None:
        parser.error("--renew-signal needs --file (a process's environment cannot be renewed)")
    try:
        return signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"]
    except KeyError:
        parser.error(f"--renew-signal: unknown signal {name!r}")


def write_file(path: Path, variables: dict[str, str], *, replace: bool = False) -> None:
    """KEY='value' lines (sourceable by sh), 0600; created new, or (`replace`) swapped in whole by a rename."""
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        for key, value in variables.items():
            handle.write(f"{key}='{value.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'\n")
        handle.flush()
        os.fsync(handle.fileno())
    if replace:
        os.replace(target, path)  # a reader sees the old file or the new one, never half of one


def child_env(credential: Credential, file: Path | None) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name not in IDENTITY_ENV}
    if file is None:
        return {**inherited, **credential.env()}
    write_file(file, credential.env())
    return {**inherited, "BROKER_CREDENTIAL_FILE": str(file), "BROKER_GRANT_ID": credential.grant_id}


def seconds_left(credential: Credential) -> float:
    return (credential.expires_at - datetime.now(UTC)).total_seconds()


class Renewer(threading.Thread):
    """Keeps a running command's credential fresh (--file), or says when it expired (environment)."""

    def __init__(self, task: Task, args: argparse.Namespace, credential: Credential, child: subprocess.Popen) -> None:
        super().__init__(name="broker-exec-renewer", daemon=True)
        self.task, self.args, self.credential, self.child = task, args, credential, child
        self.stopped = threading.Event()

    def run(self) -> None:
        if self.args.file is None:
            if not self.stopped.wait(max(0.0, seconds_left(self.credential))):
                say(f"the credential in the command's environment expired at {self.credential.expires_at.isoformat()}; "
                    "broker-exec cannot renew an environment: use --file PATH [--renew-signal SIG]")  # fmt: skip
            return
        while not self.stopped.wait(max(0.0, seconds_left(self.credential) * RENEW_AT)):
            self._renew()

    def _renew(self) -> None:
        try:
            fresh = self.task.grant(self.args.boundary, self.args.scopes, self.args.ttl)
            write_file(self.args.file, fresh.env(), replace=True)
        except (BrokerClientError, OSError) as exc:
            say(f"renewing the credential failed ({exc}); it expires at {self.credential.expires_at.isoformat()}")
            self.stopped.wait(min(RETRY_SECONDS, max(0.1, seconds_left(self.credential) / 2)))
            return
        self.credential = fresh
        if self.args.renew_signal is not None and self.child.poll() is None:
            self.child.send_signal(self.args.renew_signal)


def say(message: str) -> None:
    print(f"broker-exec: {message}", file=sys.stderr, flush=True)


@contextmanager
def forwarding(child: subprocess.Popen) -> Iterator[None]:
    """Signals to this process go to the child; the child decides when to stop."""
    previous = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum)) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_child(
    command: list[str], env: dict[str, str], watch: Callable[[subprocess.Popen], Renewer] | None = None
) -> int:
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        say(f"{command[0]}: {exc.strerror}")
        return EX_NOTFOUND
    renewer = watch(child) if watch else None
    if renewer:
        renewer.start()
    try:
        with forwarding(child):
            code = child.wait()
    finally:
        if renewer:
            renewer.stopped.set()
            renewer.join()
    return 128 - code if code < 0 else code


def first_grant(task: Task, args: argparse.Namespace) -> Credential:
    """The credential, or the error; a refusal issued nothing, so there is nothing to complete."""
    try:
        return task.grant(args.boundary, args.scopes, args.ttl)
    except BrokerError:
        task.asked = False  # the broker answered no: no task-complete call
        raise
    except TransportError:
        try:  # the request may have arrived and only its answer been lost: give back what it may have issued
            task.complete()
        except BrokerClientError:
            pass
        task.asked = False
        raise


def run(args: argparse.Namespace) -> int:
    identity = SvidFiles(args.svid_dir) if args.svid_dir is not None else None
    with Client(args.url, identity) as client:
        task = client.task(args.task or f"exec-{Path(args.command[0]).name}")
        credential = first_grant(task, args)
        wrote = False
        try:
            with task:
                env = child_env(credential, args.file)
                wrote = args.file is not None  # a file that was there before is never ours to remove
                code = run_child(args.command, env, lambda child: Renewer(task, args, credential, child))
        except CompletionFailed as exc:
            say(f"{exc}; the credential expires at its TTL")
        finally:
            if wrote:
                args.file.unlink(missing_ok=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except TransportError as exc:
        say(f"cannot reach the broker at {args.url or os.environ.get('BROKER_URL', '(BROKER_URL unset)')}: {exc}")
        return EX_UNAVAILABLE
    except BrokerError as exc:
        say(str(exc))
        return EX_UNAVAILABLE if exc.status >= 500 else EX_NOPERM
    except BrokerClientError as exc:
        say(str(exc))
        return EX_USAGE
    except OSError as exc:  # the --file could not be created (it exists, or the folder is missing)
        say(f"{args.file}: {exc.strerror}")
        return EX_CANTCREAT


if __name__ == "__main__":
    sys.exit(main())
