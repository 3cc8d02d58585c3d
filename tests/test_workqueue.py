"""The keyed work queue: one entry per key, one pass per key in flight, a change during a pass
kept for after it, delayed requeues, urgent keys first with patience for the rest."""

from __future__ import annotations

import threading

from specfleet.workqueue import Priority, Taken, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _queue(patience: float = 5.0) -> tuple[WorkQueue[str], Clock]:
    clock = Clock()
    return WorkQueue(patience=patience, clock=clock), clock


def test_a_key_added_twice_is_queued_once_at_its_earliest_and_most_urgent() -> None:
    queue, clock = _queue()
    queue.add("a", after=10)
    queue.add("a", Priority.URGENT, after=3)
    queue.add("a", after=7)
    assert len(queue) == 1
    assert queue.next() == 3.0
    clock.now = 3
    assert queue.next() == Taken("a", Priority.URGENT)
    assert queue.next() is None


def test_a_key_in_flight_is_not_handed_out_again_and_a_change_meanwhile_runs_after() -> None:
    queue, _ = _queue()
    queue.add("a")
    assert queue.next() == Taken("a", Priority.NORMAL)
    queue.add("a", Priority.URGENT)  # a change during the pass
    assert queue.in_flight("a") and "a" in queue
    assert queue.next() is None  # not twice at once
    queue.done("a")
    assert queue.next() == Taken("a", Priority.URGENT)
    queue.done("a")
    assert queue.next() is None and "a" not in queue


def test_urgent_keys_go_first_until_a_normal_one_has_waited_its_patience() -> None:
    queue, clock = _queue(patience=5)
    queue.add("status-of-a")
    clock.now = 1
    for name in ("b", "c"):
        queue.add(name, Priority.URGENT)
    assert queue.next() == Taken("b", Priority.URGENT)
    clock.now = 6  # "status-of-a" has waited 5 s past its due time
    queue.add("d", Priority.URGENT)
    assert queue.next() == Taken("status-of-a", Priority.NORMAL)
    assert queue.next() == Taken("c", Priority.URGENT)
    assert queue.next() == Taken("d", Priority.URGENT)


def test_due_keys_go_in_the_order_they_fell_due() -> None:
    queue, clock = _queue()
    queue.add("late", after=2)
    queue.add("early", after=1)
    queue.add("now")
    clock.now = 2
    order = []
    while isinstance(taken := queue.next(), Taken):
        order.append(taken.key)
        queue.done(taken.key)
    assert order == ["now", "early", "late"]


def test_a_forgotten_key_is_neither_queued_nor_run_again_after_its_pass() -> None:
    queue, _ = _queue()
    queue.add("a")
    queue.add("b")
    queue.forget("a")
    assert queue.next() == Taken("b", Priority.NORMAL)
    queue.add("b")
    queue.forget("b")
    queue.done("b")
    assert queue.next() is None


def test_take_waits_for_a_key_and_close_wakes_it_for_good() -> None:
    queue: WorkQueue[str] = WorkQueue()
    taken: list[Taken[str] | None] = []
    worker = threading.Thread(target=lambda: taken.append(queue.take()))
    worker.start()
    queue.add("a")
    worker.join(timeout=30)
    assert taken == [Taken("a", Priority.NORMAL)]
    closing = threading.Thread(target=lambda: taken.append(queue.take()))
    closing.start()
    queue.close()
    closing.join(timeout=30)
    assert taken[-1] is None


def test_normal_passes_take_at_most_their_slots_and_leave_the_rest_to_urgent_keys() -> None:
    queue: WorkQueue[str] = WorkQueue(patience=5, clock=Clock(), normal_slots=2)
    for name in ("resync-a", "resync-b", "resync-c"):
        queue.add(name)
    assert queue.next() == Taken("resync-a", Priority.NORMAL)
    assert queue.next() == Taken("resync-b", Priority.NORMAL)
    assert queue.next() is None  # resync-c waits for a slot
    queue.add("new", Priority.URGENT)
    assert queue.next() == Taken("new", Priority.URGENT)
    queue.done("resync-a")
    assert queue.next() == Taken("resync-c", Priority.NORMAL)
