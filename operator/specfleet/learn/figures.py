"""The figures a router is judged by, from labels, routed tiers and a classifier's
probabilities.

- **Quality**: the share of requests sent to a tier at or above their label (the cheapest tier
  good enough for them). Every request counts once, whatever its training weight.
- **Cost**: the mean cost per request of the tiers they were sent to, each tier's cost
  normalised so that the last tier's is 1.0 (``specfleet.learn.policy``): all to the last tier
  is 1.0, all to the cheapest is the cheapest tier's share of the last's.
- **Confusion**: a table of counts, label (row) by routed tier (column).
- **Sweep**: quality and cost at every threshold where a request's tier changes. A classifier
  with probabilities p_j ("needs a tier above j") sends a request to the first tier j with
  p_j below the threshold (``specfleet.routing.learned.Classifier.tier``), so that tier is the
  number of boundaries j whose running minimum min(p_0..p_j) is at or above the threshold; each
  figure is then a count of values at or above the threshold, read off sorted columns.
  Requests an override takes (``fixed``) stay where it sends them at every threshold.
- **APGR** (average performance gap recovered, as RouteLLM measures routers, extended from two
  models to a policy's tiers by cost): over the threshold sweep of the classifier alone (no
  overrides), from all requests on the cheapest tier (threshold above every probability: cost
  c_0, quality q_weak = the share of labels that are the cheapest tier) to all on the last
  (threshold below every probability: cost 1.0, quality q_strong = 1.0), the performance gap
  recovered at each point is PGR = (quality - q_weak) / (1.0 - q_weak); APGR is the area under
  PGR against cost, by the trapezoid rule between consecutive points of the sweep, divided by
  the width of the cost range, 1.0 - c_0. A router that ranks requests at random scores about
  0.5; a perfect one, with two tiers, 1 - a / 2 where a = 1 - q_weak (its PGR climbs to 1
  while the cost covers a of the range, then stays there). It assumes costs rise with the
  tiers; it is undefined when every label is the cheapest tier (no gap) or the cheapest tier
  costs as much as the last.

Pure (numpy).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

LOWEST_THRESHOLD = 1e-9
"""The extremes of a threshold (an artifact's lies strictly between 0 and 1)."""


@dataclass(frozen=True, slots=True)
class Point:
    """Quality and cost at one threshold."""

    threshold: float
    quality: float
    cost: float


def quality(routed: Sequence[int] | Ints, labels: Sequence[int] | Ints) -> float:
    """The share of requests routed at or above their label."""
    routed_, labels_ = np.asarray(routed), np.asarray(labels)
    return float(np.mean(routed_ >= labels_)) if len(labels_) else 0.0


def cost(routed: Sequence[int] | Ints, costs: Sequence[float]) -> float:
    """The mean normalised cost of the tiers routed to."""
    routed_ = np.asarray(routed, dtype=np.int64)
    return float(np.mean(np.asarray(costs)[routed_])) if len(routed_) else 0.0


def confusion(
    routed: Sequence[int] | Ints, labels: Sequence[int] | Ints, tiers: int
) -> list[list[int]]:
    """Counts by label (rows) and routed tier (columns)."""
    table = [[0] * tiers for _ in range(tiers)]
    for label, tier in zip(labels, routed, strict=True):
        table[int(label)][int(tier)] += 1
    return table


def running_minimum(probabilities: Floats) -> Floats:
    """min(p_0..p_j) for each request (row) and boundary j (column)."""
    result: Floats = np.minimum.accumulate(probabilities, axis=1)
    return result


def route(
    probabilities: Floats, threshold: float, fixed: Sequence[int | None] | None = None
) -> Ints:
    """Each request's tier at ``threshold`` (as ``Classifier.tier`` routes), an override's
    where ``fixed`` names one."""
    tiers: Ints = np.sum(running_minimum(probabilities) >= threshold, axis=1).astype(np.int64)
    if fixed is not None:
        for i, tier in enumerate(fixed):
            if tier is not None:
                tiers[i] = tier
    return tiers


def sweep(
    probabilities: Floats,
    labels: Sequence[int] | Ints,
    costs: Sequence[float],
    fixed: Sequence[int | None] | None = None,
) -> list[Point]:
    """Quality and cost at each threshold where a request's tier changes (midway between
    consecutive probabilities), and beyond both ends; highest threshold (cheapest) first."""
    labels_ = np.asarray(labels, dtype=np.int64)
    count, boundaries = probabilities.shape
    assert len(costs) == boundaries + 1 and len(labels_) == count
    free = np.ones(count, dtype=bool)
    fixed_quality = fixed_cost = 0.0
    if fixed is not None:
        for i, tier in enumerate(fixed):
            if tier is not None:
                free[i] = False
                fixed_quality += float(tier >= labels_[i])
                fixed_cost += costs[tier]
    minimum = running_minimum(probabilities[free])
    free_labels = labels_[free]
    values = np.unique(minimum) if minimum.size else np.zeros(0)
    cuts = np.concatenate(
        [values[:1] / 2, (values[1:] + values[:-1]) / 2, (values[-1:] + 1) / 2]
        if values.size
        else [np.array([0.5])]
    )
    thresholds = np.unique(np.clip(cuts, LOWEST_THRESHOLD, 1 - LOWEST_THRESHOLD))[::-1]
    # Cost: every request pays the cheapest tier, and the step up to tier j + 1 when the
    # running minimum at boundary j is at or above the threshold.
    total_cost = np.full(len(thresholds), fixed_cost + costs[0] * len(free_labels))
    for j in range(boundaries):
        column = np.sort(minimum[:, j])
        above = len(column) - np.searchsorted(column, thresholds, side="left")
        total_cost += (costs[j + 1] - costs[j]) * above
    # Quality: a request labelled L > 0 is served well when its tier is at least L, that is
    # when its running minimum at boundary L - 1 is at or above the threshold.
    needs = free_labels > 0
    deciding = np.sort(minimum[needs, free_labels[needs] - 1])
    good = (
        fixed_quality
        + np.sum(~needs)
        + (len(deciding) - np.searchsorted(deciding, thresholds, side="left"))
    )
    return [
        Point(float(t), float(q) / count, float(c) / count)
        for t, q, c in zip(thresholds, good, total_cost, strict=True)
    ]


def operating_point(points: Sequence[Point], target: float) -> Point:
    """The cheapest point whose quality meets ``target`` (ties: the higher quality, then the
    lower threshold); the point of highest quality when none does."""
    meeting = [p for p in points if p.quality >= target - 1e-12]
    if not meeting:
        return max(points, key=lambda p: (p.quality, -p.cost, -p.threshold))
    return min(meeting, key=lambda p: (p.cost, -p.quality, p.threshold))


def apgr(probabilities: Floats, labels: Sequence[int] | Ints, costs: Sequence[float]) -> float:
    """The average performance gap recovered (see the module docstring); raises ValueError
    when it is undefined."""
    labels_ = np.asarray(labels, dtype=np.int64)
    weak = float(np.mean(labels_ == 0))
    if weak >= 1.0:
        raise ValueError(
            "APGR is undefined: every label is the cheapest tier, so there is no gap to recover"
        )
    if costs[0] >= 1.0:
        raise ValueError(
            "APGR is undefined: the cheapest tier costs as much as the last, so there is no "
            "cost range"
        )
    points = sweep(probabilities, labels_, costs)
    area = 0.0
    for a, b in itertools.pairwise(points):
        gap_a, gap_b = (a.quality - weak) / (1 - weak), (b.quality - weak) / (1 - weak)
        area += (b.cost - a.cost) * (gap_a + gap_b) / 2
    return area / (1.0 - costs[0])


def thinned(points: Sequence[Point], most: int = 101) -> list[Point]:
    """At most ``most`` of ``points``, evenly spread, the first and last kept."""
    if len(points) <= most:
        return list(points)
    picks = np.unique(np.linspace(0, len(points) - 1, most).round().astype(int))
    return [points[i] for i in picks]
