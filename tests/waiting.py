"""Waiting on a condition from a test that has no event loop of its own."""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE = 10.0


def until(probe: Callable[[], object], what: str, deadline: float = DEADLINE) -> None:
    """Return once ``probe()`` holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not probe():
        assert time.monotonic() < end, f"still waiting after {deadline} s for {what}"
        time.sleep(0.02)
