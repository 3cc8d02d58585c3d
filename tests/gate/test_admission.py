"""Admission without HTTP: FIFO order, the limit under concurrency, live limit changes, the queue
bound, the deadline, and waiters that leave."""

from __future__ import annotations

import asyncio
import random

import pytest

from specfleet_runtime.gate.admission import (
    Admission,
    QueueFullError,
    QueueTimeoutError,
)
from tests.gate.fakes import until


async def queue_up(gate: Admission, count: int) -> list[asyncio.Task[None]]:
    """``count`` waiters, queued in index order."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(gate.acquire()))
        await until(lambda: gate.queued == len(tasks), f"waiter {i} to queue")
    return tasks


def test_waiters_are_admitted_in_arrival_order() -> None:
    async def scenario() -> list[int]:
        gate = Admission(1, max_queue=100, queue_timeout=60)
        await gate.acquire()
        order: list[int] = []

        async def request(i: int) -> None:
            async with gate.slot():
                order.append(i)
                # Give later waiters a chance to jump the queue if the gate allowed it.
                await asyncio.sleep(0)

        tasks = []
        for i in range(20):
            tasks.append(asyncio.create_task(request(i)))
            await until(lambda: gate.queued == len(tasks), f"request {i} to queue")
        gate.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == list(range(20))


def test_newcomers_queue_behind_waiters_even_when_a_slot_frees() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=10, queue_timeout=60)
        await gate.acquire()
        [first] = await queue_up(gate, 1)
        gate.release()  # the slot goes to the waiter, not to whoever asks next
        late = asyncio.create_task(gate.acquire())
        await until(first.done, "the first waiter to be admitted")
        assert not late.done()
        assert (gate.in_flight, gate.queued) == (1, 1)
        gate.release()
        await late

    asyncio.run(scenario())


def test_the_limit_is_never_exceeded_under_concurrency() -> None:
    async def scenario() -> int:
        gate = Admission(4, max_queue=1000, queue_timeout=60)
        rng = random.Random(7)
        running = 0
        peak = 0

        async def request() -> None:
            nonlocal running, peak
            async with gate.slot():
                running += 1
                peak = max(peak, running)
                for _ in range(rng.randrange(5)):
                    await asyncio.sleep(0)
                running -= 1

        await asyncio.gather(*(request() for _ in range(300)))
        assert (gate.in_flight, gate.queued) == (0, 0)
        return peak

    assert asyncio.run(scenario()) == 4


def test_raising_the_limit_admits_waiters_at_once_oldest_first() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=10, queue_timeout=60)
        await gate.acquire()
        waiters = await queue_up(gate, 3)
        gate.set_limit(3)
        assert (gate.in_flight, gate.queued) == (3, 1)
        await asyncio.gather(*waiters[:2])
        assert not waiters[2].done()
        gate.set_limit(4)
        await waiters[2]

    asyncio.run(scenario())


def test_lowering_the_limit_lets_in_flight_finish_and_admits_nobody_until_under_it() -> None:
    async def scenario() -> None:
        gate = Admission(3, max_queue=10, queue_timeout=60)
        for _ in range(3):
            await gate.acquire()
        gate.set_limit(1)
        assert gate.in_flight == 3  # nobody is interrupted
        [waiter] = await queue_up(gate, 1)
        gate.release()
        gate.release()
        await asyncio.sleep(0)
        assert not waiter.done()
        assert (gate.in_flight, gate.queued) == (1, 1)
        gate.release()
        await waiter
        assert gate.in_flight == 1

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=2, queue_timeout=60)
        await gate.acquire()
        waiters = await queue_up(gate, 2)
        with pytest.raises(QueueFullError, match="2 requests already wait"):
            await gate.acquire()
        assert gate.queued == 2
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    asyncio.run(scenario())


def test_no_queue_at_all_with_max_queue_zero() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=0, queue_timeout=60)
        await gate.acquire()
        with pytest.raises(QueueFullError):
            await gate.acquire()

    asyncio.run(scenario())


def test_a_waiter_past_its_deadline_leaves_the_queue() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=10, queue_timeout=0.01)
        await gate.acquire()
        with pytest.raises(QueueTimeoutError, match=r"no slot within 0\.01 s"):
            await gate.acquire()
        assert (gate.in_flight, gate.queued) == (1, 0)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_gets_the_slot() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=10, queue_timeout=60)
        await gate.acquire()
        leaver, stayer = await queue_up(gate, 2)
        leaver.cancel()
        await until(lambda: gate.queued == 1, "the cancelled waiter to leave")
        gate.release()
        await stayer
        assert gate.in_flight == 1

    asyncio.run(scenario())


def test_a_waiter_cancelled_just_as_its_slot_arrives_passes_the_slot_on() -> None:
    async def scenario() -> None:
        gate = Admission(1, max_queue=10, queue_timeout=60)
        await gate.acquire()
        leaver, stayer = await queue_up(gate, 2)
        gate.release()  # hands the slot to `leaver`, which has not run yet
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        await stayer
        assert (gate.in_flight, gate.queued) == (1, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(limit, max_queue=1, queue_timeout=1)
    with pytest.raises(ValueError, match="at least 1"):
        Admission(1, max_queue=1, queue_timeout=1).set_limit(limit)
