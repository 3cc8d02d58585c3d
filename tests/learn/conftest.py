from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.learn import fleet as simulated


@pytest.fixture(scope="module")
def fleet() -> Iterator[dict[str, str]]:
    """The simulated tiers, judge and garbage judge (``tests.learn.fleet``): base URLs."""
    with simulated.running() as urls:
        yield urls
