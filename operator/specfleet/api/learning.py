"""Learning a RoutingPolicy's classifier from its own captured traffic: `spec.learning` and
`status.learning`.

The spec is opt-in, and needs `spec.capture` (the loop reads what the router captured, and
keeps its labels, artifacts and decisions in the same store). When present, the operator runs
`specfleet router learn` on a schedule (a CronJob it owns): a judge model labels a share of
the requests captured since the last run, a candidate classifier is trained once enough new
labels arrived, and the promotion rule (`specfleet.learn.promotion`) decides, on held-out
labels, whether it replaces the classifier in force. `mode: Recommend` records each decision
and changes nothing; `Apply` makes a promoted classifier the one in force, which the routers
load from the store without a restart. `pin` names the classifier a team wants in force
(by its content hash), whatever the figures. The spec is never written by the operator: what
is in force is status, backed by the store's record of promotions.

Pure. Used by `specfleet.api.routingpolicy`, the render and reconcile passes, and
`specfleet.learn` (whose defaults these are).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from specfleet.api.base import ApiModel, Rule, StatusModel
from specfleet.api.common import ObjectName

DEFAULT_QUALITY_TARGET = 0.95
DEFAULT_QUALITY_TOLERANCE = 0.02
DEFAULT_COST_MARGIN = 0.05
DEFAULT_SCHEDULE = "41 * * * *"
"""Hourly, off the hour and away from capture retention's minute."""
DEFAULT_MIN_NEW_LABELS = 100
DEFAULT_JUDGE_SHARE = 0.1
DEFAULT_JUDGE_RATE = 2.0
DEFAULT_MAX_TOKENS = 512
HISTORY = 10
"""How many decisions `status.learning.decisions` keeps, newest last."""
STATUS_SCHEMA = "specfleet.dev/router-learn-status/v1"
"""The `schema` of what a learning pass reports for status (its Job's termination message)."""
HEURISTIC = "heuristic"
"""What `status.learning.inForce` says while no learned classifier is in force."""

CONTENT_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|[-0-9a-zA-Z*/,?]+( [-0-9a-zA-Z*/,?]+){4})$"
)
"""A CronJob's schedule: five fields, or a macro such as @hourly (the API server checks the
fields themselves when it accepts the CronJob)."""


class Objective(ApiModel):
    """What the router must achieve, and the promotion rule's margins."""

    rules = (
        Rule(
            cel="self.qualityTolerance < self.qualityTarget",
            message="learning.objective.qualityTolerance must be below qualityTarget (a "
            "tolerance of 0.02 under a 0.95 target accepts a held-out quality of 0.93)",
            check=lambda o: o.quality_tolerance < o.quality_target,
        ),
    )

    quality_target: Annotated[float, Field(gt=0.0, le=1.0)] = DEFAULT_QUALITY_TARGET
    """The share of requests that must go to a tier at or above their label (the cheapest
    tier whose answer the judge found as good as the strongest's)."""
    quality_tolerance: Annotated[float, Field(gt=0.0, le=0.5)] = DEFAULT_QUALITY_TOLERANCE
    """How far below the target a held-out quality still meets it: held-out labels are a
    sample, so a classifier calibrated to the target lands as often a little below as above."""
    cost_margin: Annotated[float, Field(ge=0.0, le=0.9)] = DEFAULT_COST_MARGIN
    """The share of the cost in force a candidate that meets the target must save to replace
    it (a smaller saving is not worth a change of routing)."""


class Judge(ApiModel):
    """Who labels captured requests, and how many."""

    model: ObjectName | None = None
    """The InferenceModel (in the same namespace) that judges whether a cheaper tier's answer
    is as good as the strongest's, asked through its Service. Unset: the last tier's model."""
    share: Annotated[float, Field(gt=0.0, le=1.0)] = DEFAULT_JUDGE_SHARE
    """The share of captured requests asked for a label, chosen by the request's content."""
    requests_per_second: Annotated[float, Field(gt=0.0, le=100.0)] = DEFAULT_JUDGE_RATE
    """At most this many requests a second to the tiers and the judge together, so serving
    comes first."""
    max_tokens: Annotated[int, Field(ge=1, le=32768)] = DEFAULT_MAX_TOKENS
    """The answers' cap for a captured request that set none."""


class LearningSpec(ApiModel):
    """Train the router's classifier on the policy's captured traffic (needs spec.capture)."""

    mode: Literal["Apply", "Recommend"] = "Recommend"
    """Recommend records every decision and changes nothing; Apply makes a promoted
    classifier the one the routers use."""
    schedule: Annotated[str, StringConstraints(pattern=CRON_PATTERN, max_length=64)] = (
        DEFAULT_SCHEDULE
    )
    """When the learning Job runs (a CronJob schedule, in the controller manager's time zone):
    it labels what was captured since the last run and trains when enough labels arrived."""
    objective: Objective = Objective()
    """The quality target the cheapest classifier must meet, and the rule's margins."""
    judge: Judge = Judge()
    """Which model labels requests, how many, how fast."""
    min_new_labels: Annotated[int, Field(ge=0, le=10_000_000)] = DEFAULT_MIN_NEW_LABELS
    """A candidate is trained once this many labels arrived since the last training."""
    pin: Annotated[str, StringConstraints(pattern=CONTENT_HASH_PATTERN)] | None = None
    """A classifier's content hash (sha256:...) to keep in force whatever the figures (under
    Apply); any other candidate is refused while it is set. Unset: the rule decides."""


class Figures(StatusModel):
    """A classifier's figures on the held-out labels of one decision."""

    classifier: str
    """Its content hash, or heuristic."""
    quality: float
    """The share of held-out requests it sent to a tier at or above their label."""
    cost: float
    """Its mean cost per request (1.0: everything on the last tier)."""


class LearningDecision(StatusModel):
    """One promotion decision, as `specfleet router learn` recorded it in the store."""

    time: datetime
    """When it was decided."""
    verdict: Literal["Promote", "Refuse"]
    """Whether the candidate was found better than the classifier in force."""
    rule: str
    """The branch of the promotion rule that decided (Cheaper, MissesTarget, Pinned, ...)."""
    reason: str
    """Why, in a sentence, with the figures."""
    applied: bool
    """Whether it changed the classifier in force (False for a refusal and under Recommend)."""
    mode: Literal["Apply", "Recommend"]
    """spec.learning.mode when it was decided."""
    labels: int
    """The held-out labels it was decided on."""
    candidate: Figures
    """The classifier judged: trained in that pass, or pinned."""
    in_force: Figures
    """The classifier in force when it was decided."""
    record: str | None = None
    """Where the store keeps it (`specfleet router promote --replay` decides it again)."""


class LearningStatus(StatusModel):
    """What the learning loop last did, as its Job reported."""

    in_force: str = HEURISTIC
    """The classifier the routers use: a content hash, or heuristic."""
    last_run_time: datetime | None = None
    """When the learning Job's last pass that reported ran."""
    last_job_time: datetime | None = None
    """The learning CronJob's latest lastScheduleTime or lastSuccessfulTime when the operator
    last read how its Jobs ended (a Job started by hand, `kubectl create job --from`, counts
    once it succeeds)."""
    labels: int | None = None
    """Labelled requests in the store."""
    new_labels: int | None = None
    """Of those, how many arrived since the last training."""
    last_run: dict[str, int] = Field(default_factory=dict)
    """The last pass's counts: batches read, records, asked, labelled, unparseable verdicts,
    errors of the tiers and of the judge."""
    decisions: list[LearningDecision] = Field(default_factory=list)
    """The last decisions, oldest first (at most ten)."""
