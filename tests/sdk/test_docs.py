"""Every example of docs/sdk-guide.md and examples/ runs against the real broker."""

from __future__ import annotations

import pytest

from tests.sdk.docs import ROOT, blocks, run_block

GUIDE = ROOT / "docs" / "sdk-guide.md"
GUIDE_BLOCKS = blocks(GUIDE)


def test_the_guide_has_examples() -> None:
    assert len(GUIDE_BLOCKS) >= 8


@pytest.mark.parametrize(("lang", "code"), GUIDE_BLOCKS, ids=[f"block-{i}" for i in range(len(GUIDE_BLOCKS))])
def test_guide_example_runs(live, worker_token, issuers, monkeypatch, lang, code) -> None:
    receiver = issuers.oidc.token(sub="receiver-orders-api", lifetime=600)
    env = {"BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": worker_token, "BROKER_RECEIVER_TOKEN": receiver}
    if lang == "sh":
        done = run_block(lang, code, env)
        assert done.returncode == 0, done.stderr[-2000:]
        return
    for name, value in env.items():  # Python examples run in this process, as a reader's script would
        monkeypatch.setenv(name, value)
    exec(compile(code, f"{GUIDE.name} block", "exec"), {"__name__": "__guide__"})  # noqa: S102


def test_agent_loop_example_three_calls_none_outlived(live, worker_token) -> None:
    env = {"BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": worker_token, "EXAMPLE_BOUNDARY": "orders"}
    done = run_block("python", (ROOT / "examples" / "agent_loop.py").read_text(), env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no credential outlived its call" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()[1:4]]
    assert [r[0] for r in rows] == ["lookup_order", "update_order", "summarize"]
    tasks = [r[1] for r in rows]
    assert len(set(tasks)) == 3
    # the ledger: each grant's `completed` event comes before the next tool's `issued` event
    sequence = []
    for task in tasks:
        (grant,) = live.task_grants("system:serviceaccount:payments:worker", task)
        issued = live.events(kind="issued", grant_id=grant.id)[0].seq
        completed = live.events(kind="completed", grant_id=grant.id)[0].seq
        sequence += [issued, completed]
    assert sequence == sorted(sequence), "a credential outlived its tool call"
