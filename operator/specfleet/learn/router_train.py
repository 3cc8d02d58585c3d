"""Training a router's classifier on a policy's labelled requests (``specfleet router train``).

Training takes only the training side of the labelled requests (``specfleet.learn.split``:
about 80%, chosen by a hash of each request); the held-out side is left for judging the
classifier before promotion, and the artifact names both (``training`` is the training side,
``training.heldOut`` the held-out one).

The model, per ``specfleet.routing.learned``: for each tier boundary j (every tier but the
last), a binary logistic regression of "this request's label is above tier j", on what
``specfleet.routing.features`` makes of the request:

- the vocabulary: the unigrams and bigrams found in at least ``MIN_DOCUMENT_FREQUENCY`` (2)
  training requests, the most frequent first (ties by name), up to ``max_vocabulary`` terms
  (default 32,768, within ``learned.MAX_VOCABULARY`` and small enough that the artifact fits a
  ConfigMap); each is a 0/1 column of a sparse matrix, beside the dense features;
- scikit-learn's ``LogisticRegression`` (L2, ``C`` = 1, lbfgs), its classes balanced (a rare
  "needs more" must not be drowned by the many requests that do not; the threshold, chosen
  next, corrects the probabilities' scale), each request weighted by its ``weight``. A boundary
  whose training requests are all on one side gets a constant model (an intercept of
  ``CONSTANT_SCORE``, no weights).

The operating point, as RouteLLM calibrates its threshold on data like the user's: k-fold
cross-validation (``FOLDS``, stratified by label, ``SEED``; the vocabulary of each fold from its
training part only) gives every request a probability from a model that never saw it; the
threshold is the one where the policy (overrides first, then the classifier) meets the quality
target at the lowest mean cost (``specfleet.learn.figures.operating_point``). The classifier
is then fitted on all the requests, with that threshold, and written with ``learned.dump``;
``report.json`` beside it holds the cross-validated quality and cost at the threshold, the
quality/cost curve, and the heuristic's figures on the same requests.

Deterministic: the same labelled requests, policy, options and ``trained_at`` give the same
artifact, byte for byte. Refuses (``TrainingError``) fewer than ``MIN_LABELLED`` requests or
fewer than two different labels on the training side (the message says how many the split held
out); a tier no request is labelled with is a warning (the classifier will seldom, if ever,
send requests there). Called by ``specfleet.cli`` and by
``specfleet.learn.router_eval`` (cross-validated routes when no classifier is given).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from specfleet.api import learning
from specfleet.learn import LearnError, figures, labels, split
from specfleet.learn.policy import Policy
from specfleet.routing import features, heuristic, learned
from specfleet.routing.request import ParsedRequest

MIN_LABELLED = 20
"""The fewest labelled requests training takes."""
MIN_DOCUMENT_FREQUENCY = 2
"""A term is in the vocabulary when at least this many training requests hold it."""
DEFAULT_VOCABULARY = 32_768
DEFAULT_QUALITY_TARGET = learning.DEFAULT_QUALITY_TARGET
FOLDS = 5
SEED = 0
REGULARISATION = 1.0
"""scikit-learn's C: the inverse of the L2 penalty."""
CONSTANT_SCORE = 8.0
"""The log-odds of a boundary whose training requests all lie on one side of it."""
REPORT = "report.json"


class TrainingError(LearnError):
    """Training cannot go on with these labelled requests; the message says why."""


Floats = figures.Floats


@dataclass(frozen=True)
class Model:
    """Fitted boundaries over a vocabulary, as numpy arrays."""

    vocabulary: tuple[str, ...]
    intercepts: Floats
    """One per boundary."""
    term_weights: Floats
    """Boundaries x vocabulary."""
    dense_weights: Floats
    """Boundaries x ``features.DENSE``."""

    def probabilities(self, seen: Sequence[features.Features]) -> Floats:
        """P("needs a tier above j") for each request (row) and boundary j (column)."""
        index = {term: i for i, term in enumerate(self.vocabulary)}
        x = design(seen, index)
        weights = np.hstack([self.term_weights, self.dense_weights]).T
        scores = np.asarray(x @ weights) + self.intercepts
        result: Floats = 1.0 / (1.0 + np.exp(-scores))
        return result

    def boundaries(self) -> list[learned.Boundary]:
        return [
            learned.Boundary(
                intercept=float(self.intercepts[j]),
                weights=[float(w) for w in self.term_weights[j]],
                dense=[float(w) for w in self.dense_weights[j]],
            )
            for j in range(len(self.intercepts))
        ]


@dataclass(frozen=True)
class Trained:
    artifact: learned.Artifact
    report: dict[str, Any]
    warnings: list[str]


def seen_of(requests: Sequence[ParsedRequest]) -> list[features.Features]:
    """What the classifier sees of each request."""
    return [features.extract(r, heuristic.classify(r)) for r in requests]


def vocabulary(seen: Sequence[features.Features], limit: int) -> tuple[str, ...]:
    """The terms held by at least MIN_DOCUMENT_FREQUENCY requests, most frequent first, at
    most ``limit``."""
    frequency: Counter[str] = Counter()
    for request in seen:
        frequency.update(request.terms)
    kept = [
        term
        for term, n in frequency.items()
        if n >= MIN_DOCUMENT_FREQUENCY
        and len(term) <= learned.MAX_TERM_CHARS
        and features.is_term(term)
    ]
    kept.sort(key=lambda term: (-frequency[term], term))
    return tuple(kept[:limit])


def design(seen: Sequence[features.Features], index: dict[str, int]) -> Any:
    """The sparse matrix of requests (rows): a 0/1 column per vocabulary term, then the dense
    features."""
    width = len(index)
    columns: list[int] = []
    values: list[float] = []
    starts = [0]
    for request in seen:
        found = sorted(i for i in map(index.get, request.terms) if i is not None)
        columns.extend(found)
        values.extend([1.0] * len(found))
        columns.extend(range(width, width + len(request.dense)))
        values.extend(request.dense)
        starts.append(len(columns))
    return sparse.csr_matrix(
        (np.asarray(values), np.asarray(columns, dtype=np.int64), np.asarray(starts)),
        shape=(len(seen), width + len(features.DENSE)),
    )


def fit(
    seen: Sequence[features.Features],
    labelled: Sequence[int],
    weights: Sequence[float],
    tiers: int,
    limit: int = DEFAULT_VOCABULARY,
) -> Model:
    """One logistic model per boundary, on a vocabulary of these requests."""
    terms = vocabulary(seen, limit)
    x = design(seen, {term: i for i, term in enumerate(terms)})
    y_all = np.asarray(labelled)
    w = np.asarray(weights, dtype=np.float64)
    intercepts = np.zeros(tiers - 1)
    term_weights = np.zeros((tiers - 1, len(terms)))
    dense_weights = np.zeros((tiers - 1, len(features.DENSE)))
    for j in range(tiers - 1):
        y = y_all > j
        if y.all() or not y.any():
            intercepts[j] = CONSTANT_SCORE if y.all() else -CONSTANT_SCORE
            continue
        model = LogisticRegression(
            C=REGULARISATION, class_weight="balanced", solver="lbfgs", max_iter=5000
        )
        model.fit(x, y, sample_weight=w)
        coefficients = model.coef_[0]
        intercepts[j] = float(model.intercept_[0])
        term_weights[j] = coefficients[: len(terms)]
        dense_weights[j] = coefficients[len(terms) :]
    return Model(terms, intercepts, term_weights, dense_weights)


def folds(labelled: Sequence[int], k: int, seed: int) -> figures.Ints:
    """Each request's fold, 0 to k - 1: each label's requests shuffled (``seed``) and dealt
    round the folds in turn, carrying on from where the last label stopped."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labelled)
    assigned = np.zeros(len(y), dtype=np.int64)
    dealt = 0
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        assigned[members] = (np.arange(len(members)) + dealt) % k
        dealt += len(members)
    return assigned


def out_of_fold(
    seen: Sequence[features.Features],
    labelled: Sequence[int],
    weights: Sequence[float],
    tiers: int,
    *,
    limit: int = DEFAULT_VOCABULARY,
    k: int = FOLDS,
    seed: int = SEED,
) -> Floats:
    """Each request's probabilities from a model fitted on the other folds."""
    fold = folds(labelled, k, seed)
    result = np.zeros((len(seen), tiers - 1))
    for f in range(k):
        held: list[int] = np.flatnonzero(fold == f).tolist()
        kept: list[int] = np.flatnonzero(fold != f).tolist()
        if not held:
            continue
        model = fit(
            [seen[i] for i in kept],
            [labelled[i] for i in kept],
            [weights[i] for i in kept],
            tiers,
            limit,
        )
        result[held] = model.probabilities([seen[i] for i in held])
    return result


def check(data: labels.LabelSet, held_out: int | None = None) -> list[str]:
    """Warnings about ``data``; raises TrainingError when it cannot be trained on. ``held_out``:
    how many more requests the split kept out of ``data`` (None: ``data`` is all of them)."""
    if len(data.tiers) < 2:
        raise TrainingError(
            f"the policy has one tier ({data.tiers[0]}): there is no choice to learn"
        )
    side = (
        ""
        if held_out is None
        else f" on the training side ({held_out} more held out for evaluation, "
        f"{len(data.examples) + held_out} in all)"
    )
    if len(data.examples) < MIN_LABELLED:
        raise TrainingError(
            f"{len(data.examples)} labelled requests{side}: training needs at least "
            f"{MIN_LABELLED}, with at least 2 different labels"
        )
    counts = data.counts()
    present = [tier for tier, n in counts.items() if n]
    if len(present) < 2:
        raise TrainingError(
            f"every one of the {len(data.examples)} labelled requests{side} is labelled "
            f"{present[0]!r}: training needs at least 2 different labels"
        )
    return [
        f"no request is labelled {tier!r}: the classifier learns nothing of it and will "
        "seldom, if ever, send requests there"
        for tier, n in counts.items()
        if not n
    ]


def train(
    data: labels.LabelSet,
    policy: Policy,
    *,
    trained_at: datetime,
    quality_target: float = DEFAULT_QUALITY_TARGET,
    max_vocabulary: int = DEFAULT_VOCABULARY,
    k: int = FOLDS,
    seed: int = SEED,
) -> Trained:
    """The artifact and report of a classifier trained on the training side of ``data``
    (``split.divide``) for ``policy``."""
    if not 0 < quality_target <= 1:
        raise TrainingError(f"the quality target {quality_target} must be in (0, 1]")
    if not 1 <= max_vocabulary <= learned.MAX_VOCABULARY:
        raise TrainingError(
            f"the vocabulary's size {max_vocabulary} must be from 1 to {learned.MAX_VOCABULARY}"
        )
    if data.tiers != policy.tiers:
        raise TrainingError(f"labels read for tiers {data.tiers}, the policy has {policy.tiers}")
    divided = split.divide(data)
    data = divided.training
    warnings = check(data, held_out=len(divided.held_out.examples))
    training = data.training().model_copy(update={"held_out": divided.held_out_identity()})
    requests = [e.request for e in data.examples]
    seen = seen_of(requests)
    labelled, weights = data.labels, [e.weight for e in data.examples]
    tiers = len(policy.tiers)
    fixed = policy.fixed(requests)
    held_out = out_of_fold(seen, labelled, weights, tiers, limit=max_vocabulary, k=k, seed=seed)
    points = figures.sweep(held_out, labelled, policy.costs, fixed)
    chosen = figures.operating_point(points, quality_target)
    if chosen.quality < quality_target:
        warnings.append(
            f"no threshold meets the quality target {quality_target}: the best is "
            f"{chosen.quality:.3f}"
        )
    model = fit(seen, labelled, weights, tiers, max_vocabulary)
    artifact = learned.Artifact(
        tiers=list(policy.tiers),
        vocabulary=list(model.vocabulary),
        boundaries=model.boundaries(),
        threshold=chosen.threshold,
        quality_target=quality_target,
        training=training,
        trained_at=trained_at,
    )
    heuristic_routes = [policy.heuristic(r) for r in requests]
    report = {
        "tiers": list(policy.tiers),
        "costs": dict(zip(policy.tiers, policy.costs, strict=True)),
        "notes": policy.notes(),
        "training": training.model_dump(mode="json", by_alias=True),
        "qualityTarget": quality_target,
        "threshold": chosen.threshold,
        "folds": k,
        "seed": seed,
        "vocabulary": len(model.vocabulary),
        "crossValidated": {"quality": chosen.quality, "cost": chosen.cost},
        "heuristic": {
            "quality": figures.quality(heuristic_routes, labelled),
            "cost": figures.cost(heuristic_routes, policy.costs),
        },
        "curve": [
            {"threshold": p.threshold, "quality": p.quality, "cost": p.cost}
            for p in figures.thinned(points)
        ],
        "warnings": warnings,
    }
    return Trained(artifact, report, warnings)


def write(trained: Trained, directory: Path) -> tuple[Path, Path]:
    """The artifact (``classifier.json``) and ``report.json`` (which names the artifact's
    content hash) in ``directory``, made if need be."""
    directory.mkdir(parents=True, exist_ok=True)
    artifact = learned.dump(trained.artifact, directory)
    stored = json.loads(artifact.read_bytes())
    report = directory / REPORT
    report.write_text(
        json.dumps({"contentHash": stored["contentHash"], **trained.report}, indent=2) + "\n"
    )
    return artifact, report
