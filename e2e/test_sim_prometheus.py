"""Two simulators scraped by a real Prometheus: the PromQL specfleet's autoscaler will run gives
back the acceptance rate each simulator was set to and the P99 latency its clients measured.

No cluster: the simulators and Prometheus are local processes. The load runs for a bounded
time; then the test waits (with a deadline) until Prometheus has scraped the final counters,
and evaluates each query once.

Tolerances:
- acceptance rate within 0.03 of the set rate: each simulator samples thousands of drafts, so
  the sampling error is under 0.01; both counters are scraped together, so rate()'s
  extrapolation cancels in the ratio;
- P99: histogram_quantile can only place a quantile inside the histogram bucket that holds it
  (it interpolates linearly within), so its estimate must lie between the lower bound of the
  bucket holding 95% of the client's P99 and the upper bound of the bucket holding the client's
  P99. The 5% allows for what the client measures on top of the server: HTTP and event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from dataclasses import dataclass, field

import aiohttp

from e2e import harness
from specfleet_runtime.sim.vllm_metrics import REQUEST_LATENCY_BUCKETS
from tests.sim.process import running_sim

LOAD_SECONDS = 20.0
"""Under the 30 s rate window, so the queries see the whole load."""
CLIENTS = 12
"""Concurrent clients per simulator, above --max-num-seqs so some requests queue."""
MAX_NUM_SEQS = 8
TIME_FACTOR = 0.2
ACCEPTANCE_TOLERANCE = 0.03
SIM_FLAGS = (
    "--architecture", "meta-llama/Llama-3.1-70B-Instruct",
    "--draft", "meta-llama/Llama-3.2-3B-Instruct",
    "--num-speculative-tokens", "5",
    "--tensor-parallel-size", "2",
    "--max-num-seqs", str(MAX_NUM_SEQS),
    "--time-factor", str(TIME_FACTOR),
)  # fmt: skip
MODELS = {"spec-high": 0.9, "spec-low": 0.5}
"""Served model name -> the acceptance rate its simulator is set to."""


@dataclass
class Load:
    """What the clients of one simulator saw."""

    latencies: list[float] = field(default_factory=list)
    """Seconds from sending each request to reading its whole response."""


def test_prometheus_reads_the_set_acceptance_and_the_client_p99(
    prometheus: harness.Prometheus,
) -> None:
    with running_sim(*_flags("spec-high")) as high, running_sim(*_flags("spec-low")) as low:
        prometheus.add_targets("sim", [high.removeprefix("http://"), low.removeprefix("http://")])
        harness.wait_for(
            lambda: len(prometheus.query('up{job="sim"} == 1')) == 2,
            timeout=30,
            what="Prometheus to scrape both simulators",
        )
        loads = asyncio.run(_drive({"spec-high": high, "spec-low": low}))
        for model, load in loads.items():
            _wait_for_final_scrape(prometheus, model, len(load.latencies))
        for model, load in loads.items():
            _check_acceptance(prometheus, model, MODELS[model])
            _check_p99(prometheus, model, load)


def _flags(model: str) -> list[str]:
    rate = MODELS[model]
    return [*SIM_FLAGS, "--model", model, "--acceptance-rate", str(rate), "--seed", "1"]


def _wait_for_final_scrape(prometheus: harness.Prometheus, model: str, requests: int) -> None:
    def scraped() -> bool:
        result = prometheus.query(f'sum(vllm:request_success_total{{model_name="{model}"}})')
        return bool(result) and float(result[0]["value"][1]) == requests

    harness.wait_for(scraped, timeout=30, what=f"Prometheus to scrape {model}'s last requests")


def _scalar(prometheus: harness.Prometheus, promql: str) -> float:
    result = prometheus.query(promql)
    assert len(result) == 1, f"{promql}: {result}"
    return float(result[0]["value"][1])


def _check_acceptance(prometheus: harness.Prometheus, model: str, rate: float) -> None:
    selector = f'{{model_name="{model}"}}'
    measured = _scalar(
        prometheus,
        f"sum(rate(vllm:spec_decode_num_accepted_tokens_total{selector}[30s]))"
        f" / sum(rate(vllm:spec_decode_num_draft_tokens_total{selector}[30s]))",
    )
    assert abs(measured - rate) <= ACCEPTANCE_TOLERANCE, f"{model}: {measured} vs {rate}"


def _check_p99(prometheus: harness.Prometheus, model: str, load: Load) -> None:
    estimate = _scalar(
        prometheus,
        "histogram_quantile(0.99, sum by (le) "
        f'(rate(vllm:e2e_request_latency_seconds_bucket{{model_name="{model}"}}[30s])))',
    )
    client_p99 = _quantile(load.latencies, 0.99)
    low, _ = _bucket(client_p99 * 0.95)
    _, high = _bucket(client_p99)
    assert low <= estimate <= high, (
        f"{model}: Prometheus P99 {estimate:.3f}s outside [{low}, {high}] around the client's "
        f"{client_p99:.3f}s over {len(load.latencies)} requests"
    )


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _bucket(seconds: float) -> tuple[float, float]:
    """The bounds of vLLM's e2e latency bucket that holds `seconds`."""
    bounds = (0.0, *REQUEST_LATENCY_BUCKETS, math.inf)
    index = bisect.bisect_left(bounds, seconds)
    return bounds[index - 1], bounds[index]


async def _drive(urls: dict[str, str]) -> dict[str, Load]:
    loads = {model: Load() for model in urls}
    deadline = time.monotonic() + LOAD_SECONDS
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(
            *(
                _client(http, urls[model], model, loads[model], deadline, seed)
                for model in urls
                for seed in range(CLIENTS)
            )
        )
    for model, load in loads.items():
        assert len(load.latencies) >= 20, f"{model}: only {len(load.latencies)} requests"
    return loads


async def _client(
    http: aiohttp.ClientSession, url: str, model: str, load: Load, deadline: float, seed: int
) -> None:
    """Send requests one after another until the deadline; output lengths vary so latencies
    spread over several buckets."""
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        request = {
            "model": model,
            "prompt": f"client {seed} request {len(load.latencies)}",
            "max_tokens": rng.randint(200, 1000),
        }
        start = time.monotonic()
        async with http.post(f"{url}/v1/completions", json=request) as response:
            assert response.status == 200, await response.text()
            await response.read()
        load.latencies.append(time.monotonic() - start)
