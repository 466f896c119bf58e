"""Task blocks give every grant back: on success, exception, Ctrl-C, cancellation and SIGTERM."""

from __future__ import annotations

import asyncio
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from broker_client import AsyncClient, Client, CompletionFailed
from tests.sdk.conftest import WORKER


class Boom(Exception):
    pass


def _body_ok() -> None:
    pass


def _body_raises() -> None:
    raise Boom("tool failed")


def _body_interrupted() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("body", "escapes"),
    [(_body_ok, None), (_body_raises, Boom), (_body_interrupted, KeyboardInterrupt)],
    ids=["normal", "exception", "keyboard-interrupt"],
)
def test_sync_task_completes_its_grants_on_every_exit(client, live, body, escapes) -> None:
    task = client.task("reindex")
    try:
        with task:
            creds = [task.grant("orders", ["read"], ttl=300), task.grant("payments", ["read"], ttl=60)]
            assert {live.grant(c.grant_id).status for c in creds} == {"active"}
            body()
    except BaseException as exc:  # noqa: BLE001 (KeyboardInterrupt is one of the cases)
        assert escapes is not None and isinstance(exc, escapes)
    else:
        assert escapes is None
    assert [live.grant(c.grant_id).status for c in creds] == ["completed", "completed"]
    assert task.result.revoked == 2


async def _async_exit(live, token: str, how: str) -> list[str]:
    async with AsyncClient(live.url, token) as client:
        ids: list[str] = []
        started = asyncio.Event()

        async def work() -> None:
            async with client.task("async-job") as task:
                ids.append((await task.grant("orders", ["read"], ttl=300)).grant_id)
                started.set()
                if how == "exception":
                    raise Boom
                if how == "cancel":
                    await asyncio.sleep(30)

        job = asyncio.create_task(work())
        await started.wait()
        if how == "cancel":
            job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return ids


@pytest.mark.parametrize("how", ["normal", "exception", "cancel"], ids=["normal", "exception", "cancellation"])
def test_async_task_completes_on_every_exit(live, worker_token, how) -> None:
    ids = asyncio.run(_async_exit(live, worker_token, how))
    assert live.grant(ids[0]).status == "completed"


def test_task_ids_are_unique_per_block_and_nothing_to_complete_without_grants(client) -> None:
    with client.task("job") as first, client.task("job") as second:
        pass
    assert first.id != second.id and first.id.startswith("job.")
    assert first.result is None  # nothing asked, nothing called


def test_completion_failure_after_success_is_raised(live, worker_token) -> None:
    client = Client(live.url, worker_token)
    with pytest.raises(CompletionFailed):
        with client.task("lost") as task:
            task.grant("orders", ["read"], ttl=60)
            client.url = "http://127.0.0.1:9"  # the broker vanishes before the block ends
            client.retry = type(client.retry)(attempts=1)


SIGTERM_SCRIPTS = {
    "sync": """
        import sys, time
        from broker_client import Client
        with Client(sys.argv[1], sys.argv[2]) as client, client.task("sigterm-job") as task:
            print(task.grant("orders", ["read"], ttl=300).grant_id, flush=True)
            time.sleep(60)
    """,
    "async": """
        import asyncio, sys
        from broker_client import AsyncClient
        async def main():
            async with AsyncClient(sys.argv[1], sys.argv[2]) as client, client.task("sigterm-job") as task:
                print((await task.grant("orders", ["read"], ttl=300)).grant_id, flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """,
}


@pytest.mark.parametrize("flavour", sorted(SIGTERM_SCRIPTS))
def test_sigterm_to_a_process_using_the_sdk_completes_its_grants(live, worker_token, flavour) -> None:
    script = textwrap.dedent(SIGTERM_SCRIPTS[flavour])
    child = subprocess.Popen([sys.executable, "-c", script, live.url, worker_token], stdout=subprocess.PIPE, text=True)
    grant_id = child.stdout.readline().strip()
    assert live.grant(grant_id).status == "active"
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert live.grant(grant_id).status == "completed"
    assert live.grant(grant_id).end_reason == "task completed"


def test_credential_never_prints_its_secret(client) -> None:
    with client.task("printing") as task:
        cred = task.grant("orders", ["read"], ttl=60)
        shown = [repr(cred), str(cred), f"{cred}", "%s" % cred, repr([cred])]
        assert all(cred.token not in text and cred.fingerprint in text for text in shown)
        with pytest.raises(TypeError):
            pickle.dumps(cred)
        assert cred.token.count(".") == 2 and cred.token_type == "DPoP"


def test_ttl_accepts_durations(client, live) -> None:
    with client.task("ttl") as task:
        cred = task.grant("orders", ["read"], ttl="2m")
        row = live.grant(cred.grant_id)
        assert round(row.expires_at - row.issued_at) == 120
        assert time.time() < row.expires_at
        assert row.subject == WORKER


def test_a_task_id_with_a_slash_completes_its_grants(client, live) -> None:
    with client.task("ci/build") as task:
        grant_id = task.grant("orders", ["read"], ttl=60).grant_id
    assert task.id.startswith("ci/build.") and task.result.revoked == 1
    assert live.grant(grant_id).status == "completed"


def test_an_async_task_id_with_a_slash_completes_its_grants(live, worker_token) -> None:
    async def run() -> tuple[str, object]:
        async with AsyncClient(live.url, worker_token) as client, client.task("ci/build") as task:
            grant_id = (await task.grant("orders", ["read"], ttl=60)).grant_id
        return grant_id, task.result

    grant_id, result = asyncio.run(run())
    assert result.revoked == 1 and live.grant(grant_id).status == "completed"


def test_only_the_brokers_task_not_found_means_nothing_to_give_back(live, worker_token) -> None:
    from broker_client import PolicyDenied

    with Client(live.url, worker_token) as client:
        with pytest.raises(PolicyDenied), client.task("refused") as refused:
            refused.grant("orders", ["admin"], ttl=60)  # refused, so the broker holds nothing of this task
        assert (refused.result.matched, refused.result.revoked) == (0, 0)
        with pytest.raises(CompletionFailed), client.task("misrouted") as task:
            grant_id = task.grant("orders", ["read"], ttl=60).grant_id
            client.url = live.url + "/not-the-api"  # a 404 of another kind (`not_found`) is not "nothing to give back"
    assert live.grant(grant_id).status == "active"
