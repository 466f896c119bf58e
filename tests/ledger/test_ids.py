"""Grant and event ids sort by when they were made (broker/ids.py): a batch's new keys land together at the
end of the ledger's indexes, not on a random page each, while staying unguessable and unique."""

from __future__ import annotations

import itertools
import re
import time

from broker.ids import time_ordered
from tests.support.broker import broker_settings, open_client

GRANT_ID = re.compile(r"g_[0-9a-f]{12}[0-9a-f]{24}")
EVENT_ID = re.compile(r"[0-9a-f]{32}")


def test_grants_and_their_events_get_ids_in_the_order_they_were_made(tmp_path, issuers):
    # whole seconds, then 2 ms a call: each call's millisecond is distinct whatever the float rounding
    start, ticks = float(int(time.time())), itertools.count()
    with open_client(broker_settings(tmp_path, issuers), clock=lambda: start + next(ticks) * 0.002) as broker:
        token = issuers.worker()
        answers = [broker.grant(token, task=f"t-{n}", ttl=60) for n in range(20)]
        assert [a.status_code for a in answers] == [201] * 20, answers[0].text
        granted = [a.json()["grant_id"] for a in answers]
        events = broker.events()
    assert all(GRANT_ID.fullmatch(g) for g in granted), granted[0]
    assert sorted(granted) == granted and len(set(granted)) == 20
    ids = [e.id for e in events]  # in chain order; the events of one append share its millisecond
    assert all(EVENT_ID.fullmatch(i) for i in ids) and len(set(ids)) == len(ids) == 20
    assert sorted(i[:12] for i in ids) == [i[:12] for i in ids] and len({i[:12] for i in ids}) == 20


def test_the_prefix_is_the_millisecond_and_the_rest_is_random():
    made = [time_ordered(1_700_000_000.123, 12) for _ in range(1000)]
    assert {m[:12] for m in made} == {f"{1_700_000_000_123:012x}"}
    assert len({m[12:] for m in made}) == 1000 and all(len(m) == 12 + 24 for m in made)
    assert time_ordered(0.0005, 4)[:12] == "0" * 12 and time_ordered(-5.0, 4)[:12] == "0" * 12  # a clock before 1970
    assert time_ordered(1.002, 4) > time_ordered(1.001, 4)
