"""The backlog of full passes: order, waiting for idle handlers, patience, closing."""

from __future__ import annotations

import threading

from specfleet.backlog import Backlog
from specfleet.reconcile import Applied


def _wrote(*children: str) -> tuple[Applied, ...]:
    return tuple(Applied(kind, name, changed=True) for kind, name in map(str.split, children))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_items_come_oldest_first_with_what_their_first_passes_wrote() -> None:
    backlog = Backlog(patience=5, clock=Clock())
    backlog.add(("ml", "a"), _wrote("Deployment a"))
    backlog.add(("ml", "b"), _wrote("ConfigMap b", "Deployment b"))
    backlog.add(("ml", "a"), _wrote("ConfigMap a", "Deployment a"))  # keeps its place, merges
    assert ("ml", "a") in backlog and ("ml", "b") in backlog
    assert backlog.due() == (("ml", "a"), _wrote("Deployment a", "ConfigMap a"))
    assert backlog.due() == (("ml", "b"), _wrote("ConfigMap b", "Deployment b"))
    assert backlog.due() is None and ("ml", "a") not in backlog


def test_a_full_pass_waits_while_a_handler_runs_but_only_for_its_patience() -> None:
    clock = Clock()
    backlog = Backlog(patience=5, clock=clock)
    backlog.add(("ml", "a"), [])
    with backlog.handling():
        clock.now += 2
        assert backlog.due() == 3.0  # seconds left
        clock.now += 3
        assert backlog.due() == (("ml", "a"), ())  # waited long enough
    backlog.add(("ml", "b"), [])
    with backlog.handling():
        assert backlog.due() == 5.0
    assert backlog.due() == (("ml", "b"), ())  # the handlers went idle


def test_a_discarded_item_is_gone() -> None:
    backlog = Backlog(clock=Clock())
    backlog.add(("ml", "a"), [])
    backlog.discard(("ml", "a"))
    backlog.discard(("ml", "never"))
    assert backlog.due() is None


def test_take_wakes_when_the_handlers_finish_and_returns_none_once_closed() -> None:
    backlog = Backlog(patience=3600)
    taken: list[tuple[object, bool]] = []
    took = threading.Event()
    handler_done = threading.Event()

    def finisher() -> None:
        while (item := backlog.take()) is not None:
            taken.append((item, handler_done.is_set()))
            took.set()

    thread = threading.Thread(target=finisher)
    with backlog.handling():
        thread.start()
        backlog.add(("ml", "a"), _wrote("Deployment a"))
        handler_done.set()
    assert took.wait(timeout=30)
    backlog.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    # Taken only once the handler finished, though an hour of patience was left.
    assert taken == [((("ml", "a"), _wrote("Deployment a")), True)]
