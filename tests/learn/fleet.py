"""Simulated tiers and judge as real ``specfleet-sim`` processes, and what the tests expect of
them: three tiers of different capability (the strongest also the judge), and a simulator
without a capability, which answers a judge's prompt with simulated words (garbage)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from specfleet_runtime.sim import capability
from tests.learn import traffic
from tests.sim.process import running_sim

CAPABILITIES = {"simple": 0.3, "medium": 0.6, "complex": 1.0}
MODELS = {"simple": "llama-3b", "medium": "llama-8b", "complex": "llama-70b"}
FAST = ("--time-factor", "0.01")


@contextlib.contextmanager
def running() -> Iterator[dict[str, str]]:
    """Each tier's simulator (its capability), and ``plain``, one without: base URLs."""
    with contextlib.ExitStack() as stack:
        urls = {
            tier: stack.enter_context(
                running_sim("--model", MODELS[tier], "--capability", str(strength), *FAST)
            )
            for tier, strength in CAPABILITIES.items()
        }
        # Without a capability it answers anything with simulated words, up to max_tokens.
        urls["plain"] = stack.enter_context(
            running_sim("--model", "plain", "--time-factor", "0.0001")
        )
        yield urls


def tier_flags(urls: dict[str, str]) -> list[str]:
    """``--tier NAME=URL`` for every tier of the policy."""
    return [f"--tier={tier}={urls[tier]}/v1" for tier in CAPABILITIES]


def expected_label(text: str) -> str:
    """The cheapest tier whose capability reaches the question's difficulty."""
    hard = capability.difficulty(text)
    return next((t for t, c in CAPABILITIES.items() if c >= hard), "complex")


def policy_file(directory: Path) -> Path:
    path = directory / "policy.yaml"
    path.write_text(traffic.POLICY_YAML)
    return path


def figures(printed: str) -> dict[str, str]:
    """The last line's ``key=value`` pairs."""
    return dict(pair.split("=", 1) for pair in printed.splitlines()[-1].split())
