"""The autoscaler's Prometheus source against the real thing: a simulator behind a real gate,
scraped by a real Prometheus with the labels the chart's PodMonitors set, read through
`specfleet.prometheus.Source`. It sees the acceptance the simulator was set to, a P99 and a
queue from the gate, throughput, the draft acceptance behind the rate, KV cache usage and no
preemptions, and a fresh scrape time; with Prometheus gone it says so and
gives nothing.

Tolerance: acceptance within 0.05 of the set rate (thousands of drafts sampled; both counters
scraped together).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime

import aiohttp

from e2e import harness
from specfleet import perf
from specfleet.api.inferencemodel import Observation
from specfleet.prometheus import Source
from tests.gate.test_gate_process import run_gate
from tests.sim.process import running_sim

ACCEPTANCE = 0.7
LIMIT = 2
CLIENTS = 8
"""More clients than the gate's limit, so requests queue at the gate."""
LOAD_SECONDS = 15.0
WINDOW_SECONDS = 30.0
LABELS = {"namespace": "ml", "inferencemodel": "llama"}


async def _load(url: str) -> int:
    """Bounded load through the gate; returns how many requests completed."""
    done = 0
    deadline = time.monotonic() + LOAD_SECONDS
    body = {"model": "llama", "prompt": "Hello there", "max_tokens": 24}

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with http.post(f"{url}/v1/completions", json=body) as response:
                await response.read()
                assert response.status == 200
                done += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return done


def _responses(prometheus: harness.Prometheus) -> float:
    result = prometheus.query('sum(specfleet_gate_responses_total{inferencemodel="llama"})')
    return float(result[0]["value"][1]) if result else -1.0


def test_the_source_reads_what_the_gate_and_vllm_export(prometheus: harness.Prometheus) -> None:
    flags = (
        "--model",
        "llama",
        "--architecture",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--draft",
        "meta-llama/Llama-3.2-1B-Instruct",
        "--num-speculative-tokens",
        "4",
        "--acceptance-rate",
        str(ACCEPTANCE),
        "--time-factor",
        "0.2",
        "--seed",
        "3",
    )
    with running_sim(*flags) as sim:

        async def scenario() -> tuple[int, Observation, str, Observation, str]:
            async with run_gate("--upstream", sim, "--initial-limit", str(LIMIT)) as (gate, _):
                prometheus.add_targets("vllm", [sim.removeprefix("http://")], LABELS)
                prometheus.add_targets("gate", [gate.removeprefix("http://")], LABELS)
                await asyncio.to_thread(
                    harness.wait_for,
                    lambda: len(prometheus.query("up == 1")) == 2,
                    timeout=30,
                    what="Prometheus to scrape the simulator and the gate",
                )
                completed = await _load(gate)
                await asyncio.to_thread(
                    harness.wait_for,
                    lambda: _responses(prometheus) == completed,
                    timeout=30,
                    what="Prometheus to scrape the gate after the last request",
                )
                source = Source(prometheus.url)
                seen, missing = source.observe("ml", "llama", WINDOW_SECONDS)
                other, why = source.observe("ml", "another", WINDOW_SECONDS)
                return completed, seen, missing, other, why

        completed, observation, missing, other, why = asyncio.run(scenario())

    assert completed > CLIENTS
    assert missing == ""
    assert observation.acceptance_rate is not None
    assert abs(observation.acceptance_rate - ACCEPTANCE) <= 0.05
    # Rounded for status and `kubectl get`: no 0.49625650305360774.
    assert observation.acceptance_rate == round(observation.acceptance_rate, 3)
    # Position 0's accepted tokens over drafts: the per-token chance behind the rate at K=4.
    assert observation.draft_acceptance is not None
    assert abs(observation.draft_acceptance - perf.acceptance_from_reported(ACCEPTANCE, 4)) <= 0.05
    # And every position's: a^(i+1) for the simulator's one acceptance, falling with i.
    by_position = observation.acceptance_by_position
    assert by_position is not None and len(by_position) == 4
    assert abs(by_position[0] - observation.draft_acceptance) <= 0.01
    assert all(later < earlier for earlier, later in itertools.pairwise(by_position))
    # Two sequences at a time fill next to none of an H100's cache (under 0.1% once rounded).
    assert observation.kv_cache_usage is not None and observation.kv_cache_usage < 0.01
    assert observation.preemptions == 0
    assert observation.p99_seconds is not None and observation.p99_seconds > 0
    assert observation.queue_depth is not None and observation.queue_depth > 0
    assert observation.throughput is not None and observation.throughput > 0
    assert observation.time is not None
    assert (datetime.now(UTC) - observation.time).total_seconds() < 60
    # Another model's series are not mixed in.
    assert other.acceptance_rate is None and "acceptance_rate" in why


def test_a_prometheus_that_does_not_answer_gives_nothing_and_says_why() -> None:
    url = f"http://{harness.LOOPBACK}:{harness.free_port()}"
    observation, why = Source(url, timeout_seconds=2).observe("ml", "llama", WINDOW_SECONDS)
    assert observation.acceptance_rate is None and observation.p99_seconds is None
    assert url in why and "did not answer" in why
