"""Whether a trained router classifier replaces the one in force: the promotion rule, and the
record of each decision, which replays.

The rule, on the held-out labels only (``specfleet.learn.split``: requests neither classifier
was trained on, when both were trained by this split), both classifiers routing the same
requests with the policy's overrides first. The objective is a quality target T (the share of
requests sent to a tier at or above their label; 0.95 by default) met at the lowest cost; its
margins are a quality tolerance t (0.02) and a cost margin m (0.05):

1. **Pinned.** A pinned classifier (the content hash a team pins) wins over any candidate:
   the pinned one is promoted whatever its figures, and any other is refused. No figures are
   judged.
2. **InForce.** A candidate that is the classifier in force is refused: nothing to change.
3. **TooFewLabels.** Fewer held-out labels than ``Objective.min_labels``, the larger of
   ``MIN_LABELS`` (30) and T(1 - T) / t**2 (119 at T = 0.95, t = 0.02): below it the standard
   error of a quality near the target, sqrt(T(1 - T) / n), is larger than the tolerance, so a
   classifier would pass or miss the target by the luck of which requests were held out.
   Refused.
4. A classifier **meets the target** when its held-out quality is at least T - t. The
   tolerance is there because training calibrates the threshold to meet T on its own
   cross-validation, so on new requests a good candidate lands about T, as often a little
   below as above; the classifier in force is held to the same test.
5. **MissesTarget.** The candidate does not meet the target: refused, however cheap, even when
   the one in force misses it by more (a candidate must bring the policy to its objective).
6. **MeetsWhereInForceMisses.** The candidate meets it and the one in force does not:
   promoted, whatever the cost (the heuristic is cheap because it sends hard requests to small
   models).
7. **Cheaper.** Both meet it and the candidate's mean cost per request is at most (1 - m)
   times the one in force's: promoted.
8. **NotCheaper.** Both meet it and the candidate saves less than m of the cost: refused (a
   saving within the margin is not worth a change of routing).

``decide`` applies the rule to the figures (``Figures``, from ``specfleet.learn.router_eval``)
and returns a ``Decision``: the verdict, the rule that decided, a sentence saying why, and
everything it was decided from. A decision is data (``as_json``, ``from_json``) for a status
history, an Event or ``specfleet review``; ``replay`` decides again from what a decision
recorded, and gives back the same decision. ``applied`` is whether the promotion takes effect
(mode ``Apply``); under ``Recommend`` a promotion is recorded, not acted on.

Pure: no clock (the caller gives the time), no I/O. Called by ``specfleet router promote``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast, get_args

from specfleet.api import learning
from specfleet.learn import LearnError

Verdict = Literal["Promote", "Refuse"]
Rule = Literal[
    "Pinned",
    "InForce",
    "TooFewLabels",
    "MissesTarget",
    "MeetsWhereInForceMisses",
    "Cheaper",
    "NotCheaper",
]
Mode = Literal["Apply", "Recommend"]

HEURISTIC = learning.HEURISTIC
"""How the policy's own heuristic is named where a classifier's content hash would be."""
DEFAULT_QUALITY_TARGET = learning.DEFAULT_QUALITY_TARGET
DEFAULT_QUALITY_TOLERANCE = learning.DEFAULT_QUALITY_TOLERANCE
DEFAULT_COST_MARGIN = learning.DEFAULT_COST_MARGIN
MIN_LABELS = 30
"""The fewest held-out labels any objective judges on."""


class PromotionError(LearnError):
    """An objective or figures the rule cannot judge; the message says which."""


@dataclass(frozen=True, slots=True)
class Objective:
    """What the policy asks of its router, and the rule's margins."""

    quality_target: float = DEFAULT_QUALITY_TARGET
    """The share of requests that must go to a tier at or above their label."""
    quality_tolerance: float = DEFAULT_QUALITY_TOLERANCE
    """How far below the target a held-out quality still meets it (sampling)."""
    cost_margin: float = DEFAULT_COST_MARGIN
    """The share of the cost in force a candidate must save to replace it."""

    def __post_init__(self) -> None:
        if not 0 < self.quality_target <= 1:
            raise PromotionError(f"the quality target {self.quality_target} must be in (0, 1]")
        if not 0 < self.quality_tolerance < self.quality_target:
            raise PromotionError(
                f"the quality tolerance {self.quality_tolerance} must be above 0 and below the "
                f"target {self.quality_target}"
            )
        if not 0 <= self.cost_margin < 1:
            raise PromotionError(f"the cost margin {self.cost_margin} must be in [0, 1)")

    @property
    def floor(self) -> float:
        """The lowest held-out quality that meets the target."""
        return self.quality_target - self.quality_tolerance

    def min_labels(self) -> int:
        """The fewest held-out labels the rule judges on (see the module docstring)."""
        spread = self.quality_target * (1 - self.quality_target)
        return max(MIN_LABELS, math.ceil(spread / self.quality_tolerance**2 - 1e-9))

    def meets(self, figures: Figures) -> bool:
        return figures.quality >= self.floor - 1e-12


@dataclass(frozen=True, slots=True)
class Figures:
    """One classifier's figures on the held-out labels."""

    classifier: str
    """Its content hash (``sha256:...``), or ``heuristic``."""
    quality: float
    """The share of held-out requests it sends to a tier at or above their label."""
    cost: float
    """The mean cost per held-out request (the last tier's cost is 1.0)."""

    def __post_init__(self) -> None:
        if not 0 <= self.quality <= 1:
            raise PromotionError(f"{self.classifier}: quality {self.quality} is not in [0, 1]")
        if not 0 <= self.cost < math.inf:
            raise PromotionError(f"{self.classifier}: cost {self.cost} is not a cost")


@dataclass(frozen=True, slots=True)
class Decision:
    """One promotion decision, with everything needed to replay it."""

    time: datetime
    """When it was made (the caller's clock)."""
    verdict: Verdict
    rule: Rule
    """The branch of the rule that decided (see the module docstring)."""
    reason: str
    """Why, in a sentence, with the figures."""
    applied: bool
    """True when a promotion takes effect: False for a refusal, and under ``Recommend``."""
    mode: Mode
    objective: Objective
    labels: int
    """How many held-out labels both were judged on."""
    candidate: Figures
    in_force: Figures
    pin: str | None = None
    """The content hash the team pins, if any."""
    held_out: str = ""
    """Which held-out labels: their SHA-256, as the split identifies them."""

    def line(self) -> str:
        """The decision's one line of key=value figures, for scripts."""
        return (
            f"decision={self.verdict.lower()} rule={self.rule} "
            f"candidate_quality={self.candidate.quality:.3f} "
            f"candidate_cost={self.candidate.cost:.3f} "
            f"in_force_quality={self.in_force.quality:.3f} "
            f"in_force_cost={self.in_force.cost:.3f} labels={self.labels}"
        )


def decide(
    objective: Objective,
    candidate: Figures,
    in_force: Figures,
    labels: int,
    *,
    now: datetime,
    pin: str | None = None,
    mode: Mode = "Apply",
    held_out: str = "",
) -> Decision:
    """The rule (see the module docstring) applied to both classifiers' figures on the same
    ``labels`` held-out labels."""
    if labels < 0:
        raise PromotionError(f"{labels} held-out labels")
    verdict, rule, reason = _judge(objective, candidate, in_force, labels, pin)
    return Decision(
        time=now,
        verdict=verdict,
        rule=rule,
        reason=reason,
        applied=verdict == "Promote" and mode == "Apply",
        mode=mode,
        objective=objective,
        labels=labels,
        candidate=candidate,
        in_force=in_force,
        pin=pin,
        held_out=held_out,
    )


def _judge(
    objective: Objective, candidate: Figures, in_force: Figures, labels: int, pin: str | None
) -> tuple[Verdict, Rule, str]:
    target = f"{objective.quality_target:g}"
    floor = f"{objective.floor:.3f}"
    if pin is not None:
        if candidate.classifier == pin:
            return "Promote", "Pinned", f"the policy pins {pin}, so it is promoted, figures aside"
        return (
            "Refuse",
            "Pinned",
            f"the policy pins {pin}, which wins over any candidate: {candidate.classifier} is "
            "not promoted, figures aside",
        )
    if candidate.classifier == in_force.classifier:
        return "Refuse", "InForce", f"{candidate.classifier} is already in force"
    needed = objective.min_labels()
    if labels < needed:
        return (
            "Refuse",
            "TooFewLabels",
            f"{labels} held-out labels, fewer than the {needed} the rule needs to judge a "
            f"quality target of {target} within {objective.quality_tolerance:g} (below that, "
            "a quality's standard error is larger than the tolerance): label more requests",
        )
    said = (
        f"candidate quality {candidate.quality:.3f} cost {candidate.cost:.3f}, in force "
        f"({in_force.classifier}) quality {in_force.quality:.3f} cost {in_force.cost:.3f}, "
        f"on {labels} held-out labels"
    )
    if not objective.meets(candidate):
        return (
            "Refuse",
            "MissesTarget",
            f"the candidate misses the quality target {target} (at least {floor} on held-out "
            f"labels): {said}",
        )
    if not objective.meets(in_force):
        return (
            "Promote",
            "MeetsWhereInForceMisses",
            f"the candidate meets the quality target {target} (at least {floor}) where the "
            f"classifier in force does not: {said}",
        )
    most = in_force.cost * (1 - objective.cost_margin)
    if candidate.cost <= most + 1e-12:
        return (
            "Promote",
            "Cheaper",
            f"both meet the quality target {target} and the candidate costs "
            f"{_saving(candidate, in_force)} less per request, at least the margin "
            f"{objective.cost_margin:g}: {said}",
        )
    if candidate.cost > in_force.cost:
        how = f"costs {_saving(in_force, candidate, of=in_force)} more per request"
    else:
        how = (
            f"saves {_saving(candidate, in_force)} of the cost per request, less than the "
            f"margin {objective.cost_margin:g}"
        )
    return (
        "Refuse",
        "NotCheaper",
        f"both meet the quality target {target} but the candidate {how}: {said}",
    )


def _saving(lower: Figures, higher: Figures, of: Figures | None = None) -> str:
    """How much ``lower`` saves of ``higher``'s cost, as a share of ``of``'s (default
    ``higher``'s)."""
    base = (of or higher).cost
    if base <= 0:
        return "nothing"
    return f"{(higher.cost - lower.cost) / base:.1%}"


def replay(decision: Decision) -> Decision:
    """The decision the rule makes again from what ``decision`` recorded."""
    return decide(
        decision.objective,
        decision.candidate,
        decision.in_force,
        decision.labels,
        now=decision.time,
        pin=decision.pin,
        mode=decision.mode,
        held_out=decision.held_out,
    )


def differences(recorded: Sequence[Decision]) -> list[tuple[Decision, Decision]]:
    """The recorded decisions that replay to another verdict or rule, each with its replay."""
    found = []
    for decision in recorded:
        again = replay(decision)
        if (again.verdict, again.rule, again.applied) != (
            decision.verdict,
            decision.rule,
            decision.applied,
        ):
            found.append((decision, again))
    return found


def as_json(decision: Decision) -> dict[str, Any]:
    """The decision as JSON (camelCase), for status, an Event or a file."""
    objective = decision.objective
    found: dict[str, Any] = {
        "time": decision.time.isoformat().replace("+00:00", "Z"),
        "verdict": decision.verdict,
        "rule": decision.rule,
        "reason": decision.reason,
        "applied": decision.applied,
        "mode": decision.mode,
        "objective": {
            "qualityTarget": objective.quality_target,
            "qualityTolerance": objective.quality_tolerance,
            "costMargin": objective.cost_margin,
        },
        "labels": decision.labels,
        "candidate": _figures_json(decision.candidate),
        "inForce": _figures_json(decision.in_force),
    }
    if decision.pin is not None:
        found["pin"] = decision.pin
    if decision.held_out:
        found["heldOut"] = decision.held_out
    return found


def from_json(found: Mapping[str, Any]) -> Decision:
    """A decision ``as_json`` wrote; raises PromotionError naming what is missing or wrong."""
    try:
        objective = found["objective"]
        time = datetime.fromisoformat(str(found["time"]).replace("Z", "+00:00"))
        if time.tzinfo is None:
            raise PromotionError(f"time {found['time']!r} has no time zone")
        decision = Decision(
            time=time,
            verdict=_one_of(found["verdict"], Verdict, "verdict"),
            rule=_one_of(found["rule"], Rule, "rule"),
            reason=str(found["reason"]),
            applied=_flag(found["applied"], "applied"),
            mode=_one_of(found["mode"], Mode, "mode"),
            objective=Objective(
                quality_target=float(objective["qualityTarget"]),
                quality_tolerance=float(objective["qualityTolerance"]),
                cost_margin=float(objective["costMargin"]),
            ),
            labels=int(found["labels"]),
            candidate=_figures_of(found["candidate"]),
            in_force=_figures_of(found["inForce"]),
            pin=None if found.get("pin") is None else str(found["pin"]),
            held_out=str(found.get("heldOut", "")),
        )
    except KeyError as exc:
        raise PromotionError(f"a promotion decision needs {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PromotionError):
            raise
        raise PromotionError(f"not a promotion decision: {exc}") from None
    return decision


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise PromotionError(f"{field} {value!r} is not true or false")
    return value


def _one_of(value: object, kind: Any, field: str) -> Any:
    allowed = get_args(kind)
    if value not in allowed:
        raise PromotionError(f"{field} {value!r} is not one of {', '.join(allowed)}")
    return value


def _figures_json(figures: Figures) -> dict[str, Any]:
    return {"classifier": figures.classifier, "quality": figures.quality, "cost": figures.cost}


def _figures_of(found: object) -> Figures:
    if not isinstance(found, Mapping):
        raise PromotionError(f"figures must be an object, not {found!r}")
    data = cast(Mapping[str, Any], found)
    return Figures(str(data["classifier"]), float(data["quality"]), float(data["cost"]))
