"""Autoscaling: the pure policy that retunes a model's batch limit from its measured speculative
acceptance rate and P99 latency.

`decide` makes one decision; `speculation_healthy` judges whether the draft still pays;
`step.advance` is one whole step (the decision, the speculation schedule's retune, the limit and
schedule in force after them, the history kept). The operator records each step it takes on
observations from Prometheus in status; `specfleet review --replay` folds recorded observations
through the same step; `bench/autoscale.py` runs it on the performance model.
"""

from specfleet.autoscale.policy import Policy, band, decide, smoothed, speculation_healthy

__all__ = ["Policy", "band", "decide", "smoothed", "speculation_healthy"]
