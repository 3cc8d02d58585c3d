"""Which requests are captured: decided from the request ID alone, pure.

The ID is hashed (BLAKE2b, unkeyed, so every pod computes the same) to a number in [0, 1),
and the request is kept when that number is under the sample rate. The router and the gates
behind it see one ID per request (``X-Request-Id``), so they keep the same requests, and a
higher rate keeps a superset of what a lower one keeps. Called by
``specfleet_runtime.capture.writer``.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 53)  # a double holds 53 bits exactly: the position stays under 1


def position(request_id: str) -> float:
    """Where a request ID falls in [0, 1)."""
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / _SCALE


def sampled(request_id: str, rate: float) -> bool:
    """Whether the request with this ID is captured at ``rate``."""
    return position(request_id) < rate
