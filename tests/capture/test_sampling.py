"""Sampling: decided from the request ID alone, the same everywhere, at the configured rate."""

from __future__ import annotations

import subprocess
import sys

import pytest

from specfleet_runtime.capture import sampling

IDS = [f"req-{n:06d}" for n in range(20_000)]


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.3, 0.9])
def test_the_share_kept_is_the_rate(rate: float) -> None:
    kept = sum(sampling.sampled(request_id, rate) for request_id in IDS)
    # Binomial: 4.5 standard deviations either side, so this fails on a wrong mapping only.
    spread = 4.5 * (len(IDS) * rate * (1 - rate)) ** 0.5
    assert abs(kept - len(IDS) * rate) < spread


def test_a_higher_rate_keeps_a_superset_and_rate_one_keeps_all() -> None:
    low = {i for i in IDS if sampling.sampled(i, 0.1)}
    high = {i for i in IDS if sampling.sampled(i, 0.4)}
    assert low < high
    assert all(sampling.sampled(i, 1.0) for i in IDS)
    assert all(0.0 <= sampling.position(i) < 1.0 for i in IDS)


def test_another_process_decides_the_same() -> None:
    """No per-process salt (Python's own hash() has one): a router and a gate agree."""
    ours = [sampling.sampled(i, 0.5) for i in IDS[:200]]
    script = (
        "from specfleet_runtime.capture import sampling\n"
        "print([sampling.sampled(f'req-{n:06d}', 0.5) for n in range(200)])"
    )
    theirs = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert theirs.strip() == str(ours)
    assert 60 < sum(ours) < 140
