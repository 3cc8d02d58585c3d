"""Judging a learned classifier beside the policy's own heuristic, on labelled requests
(``specfleet router evaluate``).

Both route every request as the router would before readiness: an override that matches
first (``specfleet.learn.policy``), else the heuristic's tiers (their ``when``) or the learned
classifier at its threshold. The learned classifier is a trained artifact
(``specfleet.routing.learned.load``, as the router loads it), or, without one, the training
code itself under nested k-fold cross-validation: each fold is routed by a classifier fitted on
the other folds, at a threshold chosen by cross-validation within those folds alone, so no
request is routed by a model or threshold that saw its label and one labelled file gives an
honest figure.

``figures_of`` gives one classifier's quality and cost on labelled requests, as
``specfleet.learn.promotion`` judges them (``specfleet router promote`` passes the held-out
side only).

The figures (``specfleet.learn.figures``): for each router, the confusion of label by routed
tier, quality (the share sent to a tier at or above their label) and mean normalised cost (the
last tier is 1.0); for the learned classifier, APGR over its threshold sweep. The report's
last line is ``Evaluation.line``, each figure to 3 decimals, on one line:

    learned_quality=<q> learned_cost=<c> heuristic_quality=<hq> heuristic_cost=<hc>
    apgr=<a> labels=<n>

Pure but for cross-validation's fitting (``specfleet.learn.router_train``, scikit-learn),
which is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from specfleet.learn import LearnError, figures, labels, promotion
from specfleet.learn.policy import Policy
from specfleet.routing import features, learned


class EvaluationError(LearnError):
    """These labels cannot be evaluated with this classifier or policy; the message says why."""


@dataclass(frozen=True)
class Evaluation:
    """Both routers' figures on one labelled set."""

    tiers: tuple[str, ...]
    labels: list[int]
    learned: list[int]
    """The learned classifier's tier for each request."""
    heuristic: list[int]
    """The policy's own rules' tier for each request."""
    costs: tuple[float, ...]
    apgr: float
    how: str
    """Where the learned routes came from."""
    notes: list[str]

    @property
    def learned_quality(self) -> float:
        return figures.quality(self.learned, self.labels)

    @property
    def learned_cost(self) -> float:
        return figures.cost(self.learned, self.costs)

    @property
    def heuristic_quality(self) -> float:
        return figures.quality(self.heuristic, self.labels)

    @property
    def heuristic_cost(self) -> float:
        return figures.cost(self.heuristic, self.costs)

    def line(self) -> str:
        """The report's last line."""
        return (
            f"learned_quality={self.learned_quality:.3f} learned_cost={self.learned_cost:.3f} "
            f"heuristic_quality={self.heuristic_quality:.3f} "
            f"heuristic_cost={self.heuristic_cost:.3f} apgr={self.apgr:.3f} "
            f"labels={len(self.labels)}"
        )

    def report(self) -> str:
        """The whole report, for people; ends with ``line``."""
        out = [f"{len(self.labels)} labelled requests; learned: {self.how}"]
        out.extend(f"note: {note}" for note in self.notes)
        out.append(
            "cost per request, the last tier 1.0: "
            + ", ".join(f"{t} {c:.3f}" for t, c in zip(self.tiers, self.costs, strict=True))
        )
        for name, routed in (("learned", self.learned), ("heuristic", self.heuristic)):
            out.append("")
            out.append(
                f"{name}: quality {figures.quality(routed, self.labels):.3f}, "
                f"cost {figures.cost(routed, self.costs):.3f}"
            )
            out.extend(_table(self.tiers, figures.confusion(routed, self.labels, len(self.tiers))))
        out.append("")
        out.append(
            "quality: the share sent to a tier at or above its label; cost: the mean cost per "
            "request; apgr: the quality gap between all-to-the-cheapest and all-to-the-last "
            "that the learned classifier recovers, averaged over that cost range"
        )
        out.append(self.line())
        return "\n".join(out)


def _table(tiers: Sequence[str], counts: list[list[int]]) -> list[str]:
    header = ["label \\ routed", *tiers]
    rows = [header] + [[tier, *map(str, row)] for tier, row in zip(tiers, counts, strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def evaluate(
    data: labels.LabelSet,
    policy: Policy,
    classifier: learned.Classifier | None = None,
    *,
    quality_target: float | None = None,
) -> Evaluation:
    """Both routers' figures on ``data``: with ``classifier``, at its own threshold; without,
    by nested cross-validation of the training code at ``quality_target`` (default: training's
    default)."""
    if data.tiers != policy.tiers:
        raise EvaluationError(f"labels read for tiers {data.tiers}, the policy has {policy.tiers}")
    if not data.examples:
        raise EvaluationError("no labelled requests to evaluate on")
    requests = [e.request for e in data.examples]
    labelled = data.labels
    fixed = policy.fixed(requests)
    if classifier is not None:
        if classifier.tiers != policy.tiers:
            raise EvaluationError(
                f"the classifier was trained for tiers {', '.join(classifier.tiers)}, the "
                f"policy has {', '.join(policy.tiers)}: train one for this policy"
            )
        from specfleet.learn import router_train  # noqa: PLC0415 - only for the features

        seen = router_train.seen_of(requests)
        probabilities = np.array([classifier.probabilities(s) for s in seen], dtype=np.float64)
        routed = [
            f if f is not None else classifier.tier(s) for f, s in zip(fixed, seen, strict=True)
        ]
        how = f"classifier {classifier.content_hash} at threshold {classifier.threshold:.4g}"
    else:
        routed, probabilities, how = _cross_validated(data, policy, fixed, quality_target)
    try:
        area = figures.apgr(probabilities, labelled, policy.costs)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    return Evaluation(
        tiers=policy.tiers,
        labels=labelled,
        learned=[int(t) for t in routed],
        heuristic=[policy.heuristic(r) for r in requests],
        costs=policy.costs,
        apgr=area,
        how=how,
        notes=policy.notes(),
    )


def figures_of(
    data: labels.LabelSet, policy: Policy, classifier: learned.Classifier | None
) -> promotion.Figures:
    """Quality and cost of ``classifier`` (None: the policy's heuristic) on ``data``, overrides
    first, as promotion judges them."""
    if data.tiers != policy.tiers:
        raise EvaluationError(f"labels read for tiers {data.tiers}, the policy has {policy.tiers}")
    requests = [e.request for e in data.examples]
    if classifier is None:
        routed = [policy.heuristic(r) for r in requests]
        name = promotion.HEURISTIC
    else:
        if classifier.tiers != policy.tiers:
            raise EvaluationError(
                f"the classifier {classifier.content_hash} was trained for tiers "
                f"{', '.join(classifier.tiers)}, the policy has {', '.join(policy.tiers)}: "
                "train one for this policy"
            )
        routed = [
            f if f is not None else classifier.tier(r)
            for f, r in zip(policy.fixed(requests), requests, strict=True)
        ]
        name = classifier.content_hash
    return promotion.Figures(
        classifier=name,
        quality=figures.quality(routed, data.labels),
        cost=figures.cost(routed, policy.costs),
    )


def _cross_validated(
    data: labels.LabelSet,
    policy: Policy,
    fixed: Sequence[int | None],
    quality_target: float | None,
) -> tuple[list[int], figures.Floats, str]:
    """Routes and probabilities of nested cross-validation (see the module docstring)."""
    from specfleet.learn import router_train  # noqa: PLC0415 - needs scikit-learn

    try:
        router_train.check(data)
    except router_train.TrainingError as exc:
        raise EvaluationError(f"{exc} (or give --classifier)") from None
    target = router_train.DEFAULT_QUALITY_TARGET if quality_target is None else quality_target
    requests = [e.request for e in data.examples]
    seen: list[features.Features] = router_train.seen_of(requests)
    labelled, weights = data.labels, [e.weight for e in data.examples]
    tiers = len(policy.tiers)
    k = router_train.FOLDS
    fold = router_train.folds(labelled, k, router_train.SEED)
    routed = np.zeros(len(seen), dtype=np.int64)
    probabilities = np.zeros((len(seen), tiers - 1))
    thresholds = []
    for f in range(k):
        held: list[int] = np.flatnonzero(fold == f).tolist()
        kept: list[int] = np.flatnonzero(fold != f).tolist()
        if not held:
            continue
        part = [seen[i] for i in kept]
        part_labels = [labelled[i] for i in kept]
        part_weights = [weights[i] for i in kept]
        inner = router_train.out_of_fold(part, part_labels, part_weights, tiers)
        chosen = figures.operating_point(
            figures.sweep(inner, part_labels, policy.costs, [fixed[i] for i in kept]), target
        )
        model = router_train.fit(part, part_labels, part_weights, tiers)
        probabilities[held] = model.probabilities([seen[i] for i in held])
        routed[held] = figures.route(
            probabilities[held], chosen.threshold, [fixed[i] for i in held]
        )
        thresholds.append(chosen.threshold)
    how = (
        f"{k}-fold cross-validation of training at quality target {target} (each fold's "
        f"threshold from its own training part: {', '.join(f'{t:.3g}' for t in thresholds)})"
    )
    return [int(t) for t in routed], probabilities, how
