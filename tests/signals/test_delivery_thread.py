"""The SET delivery thread against shutdown: a commit's wake and close() on another thread."""

from __future__ import annotations

import threading
import types

from broker.signals import delivery as delivery_module
from broker.signals.delivery import Delivery


class NoStreams:
    def claim_push_streams(self, now: float, lease: float) -> list:
        return []


def test_close_while_a_wake_is_starting_the_thread_joins_it_started(monkeypatch) -> None:
    """A background revocation's commit wakes delivery while the lifespan closes it (CI saw
    'cannot join thread before it is started'): close() must wait for the start, then join."""
    delivery = Delivery(NoStreams(), keys=None, record=lambda event: None)
    closer_errors: list[BaseException] = []
    closer_done = threading.Event()

    def close_now() -> None:
        try:
            delivery.close()
        except BaseException as exc:  # noqa: BLE001 (the assertion below reports it)
            closer_errors.append(exc)
        finally:
            closer_done.set()

    class CloseDuringStart(threading.Thread):
        def start(self) -> None:
            threading.Thread(target=close_now, daemon=True).start()
            closer_done.wait(0.5)  # the old code's close() raised here, before the thread started
            super().start()

    fake = types.SimpleNamespace(Thread=CloseDuringStart, Lock=threading.Lock, Event=threading.Event)
    monkeypatch.setattr(delivery_module, "threading", fake)
    delivery.wake()
    assert closer_done.wait(10)
    assert closer_errors == []
    assert delivery._thread is not None and not delivery._thread.is_alive()


def test_a_wake_after_close_starts_no_thread() -> None:
    delivery = Delivery(NoStreams(), keys=None, record=lambda event: None)
    delivery.close()
    delivery.wake()
    assert delivery._thread is None
