"""Autoscaling: the pure policy that retunes a model's batch limit from its measured speculative
acceptance rate and P99 latency.

`decide` makes one decision; `speculation_healthy` judges whether the draft still pays. The
operator feeds them observations from Prometheus and records every decision in status; `specfleet
review` replays them; `bench/autoscale.py` measures them on the performance model.
"""

from specfleet.autoscale.policy import Policy, band, decide, smoothed, speculation_healthy

__all__ = ["Policy", "band", "decide", "smoothed", "speculation_healthy"]
