"""A routing classifier learned from a policy's own labelled requests: its artifact, and how
it scores a request.

The artifact is data, never code: one JSON file, ``classifier.json`` (``FILENAME``), in a
directory (later a ConfigMap's). Its fields, camelCase:

    schema:         "specfleet.dev/router-classifier/v2" (SCHEMA; v1 files still load, see
                    below)
    features:       the feature definition it was trained on (specfleet.routing.features.VERSION)
    tiers:          the policy's tier names, cheapest first (at least two)
    vocabulary:     the terms it weighs, as specfleet.routing.features makes them ("word" or
                    "word word")
    boundaries:     one per tier but the last; boundary j is a logistic model of "this request
                    needs a tier above j": {intercept, weights: one per vocabulary term (0 for
                    a term it does not use), dense: one per features.DENSE}
    threshold:      the operating point: a request goes to the first tier j whose probability
                    of needing more is below it (else the last tier)
    qualityTarget:  the quality the threshold was calibrated for (the share of requests that
                    get a tier at least as good as their label)
    training:       the labelled data it was fitted on, its identity: {sha256, count,
                    labels: {tier: n}, sources: {source: n}}, and (v2) heldOut: the labels
                    the split (specfleet.learn.split) kept out of training for evaluation,
                    {rule, share, sha256, count, labels: {tier: n}}; without heldOut the
                    classifier was fitted on every label it was given
    trainedAt:      when it was trained (RFC 3339)
    contentHash:    "sha256:" + the SHA-256 of the canonical JSON of every other field (keys
                    sorted, no spaces, ASCII), so a changed or truncated file is refused

Versions: v2 added ``training.heldOut``; a v1 file (which has none) loads as it always did, and
``dump`` writes v2. A reader of v1 alone refuses a v2 file by its schema, which says more than a
field it does not know.

``load`` reads one (a directory holding ``classifier.json``, or the file itself) and refuses, with
one ``ArtifactError`` naming the file and what is wrong, anything but a whole, unchanged
artifact of this schema and feature version whose shapes agree (the weights and the vocabulary,
the boundaries and the tiers, the labels and the tiers): never a half-loaded classifier. It
parses JSON and nothing else: no pickle, no import. ``dump`` writes one, with each weight
rounded to 6 significant digits (``SIGNIFICANT_DIGITS``): a 32,768-term vocabulary with three
boundaries of random weights is about 1.3 MiB of JSON and 0.56 MiB gzipped (0.75 MiB in
base64), within a ConfigMap's 1 MiB; two boundaries, 0.45 MiB gzipped. Since rounding moves the
scores a little, evaluate what ``load`` reads back, as the router will.

Limits (``load`` refuses more): ``MAX_BYTES`` of JSON, ``MAX_VOCABULARY`` terms of at most
``MAX_TERM_CHARS`` characters, weights of magnitude at most ``MAX_WEIGHT``, ``MAX_TIERS`` tiers
(the RoutingPolicy's own limit). These bound what a router holds in memory; what fits a
ConfigMap is smaller (see above).

``Classifier.tier`` routes: the probability p_j = sigmoid(score_j) of each boundary in turn, the
first with p_j below the threshold wins; a higher threshold never gives a more expensive tier.
At load, each term's weights across the boundaries become one int (fixed point, one field per
boundary), so a request costs one dictionary lookup per term and one ``sum``, and its sums are
exact: a request scores the same in every process, whatever order its terms come in.
``Classifier.choose`` is the router's way to the same tier: it takes the heuristic's
``Window`` of the request, whose words were split, made distinct and hashed once for both, and
makes only the bigrams (a set of strings, each hashed once) before looking the terms up.

No network, no clock: ``loads`` and ``dumps`` are pure, ``load`` and ``dump`` read and write
the one file. For the router (to route with a promoted classifier) and for whatever trains and
evaluates one; ``specfleet.routing.features`` computes what it scores.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from operator import mul
from pathlib import Path
from typing import Annotated, Any, NoReturn, Self

import pydantic
from pydantic import AwareDatetime, Field, StringConstraints

from specfleet.api.base import ApiModel
from specfleet.api.common import ObjectName
from specfleet.api.routingpolicy import MAX_TIERS
from specfleet.routing import features, heuristic
from specfleet.routing.request import ParsedRequest

SCHEMA = "specfleet.dev/router-classifier/v2"
"""The schema ``dump`` writes."""
SCHEMA_V1 = "specfleet.dev/router-classifier/v1"
"""The first schema, without ``training.heldOut``; still read."""
SCHEMAS = (SCHEMA_V1, SCHEMA)
FILENAME = "classifier.json"

MAX_BYTES = 16 * 1024 * 1024
"""The largest artifact ``load`` reads."""
MAX_VOCABULARY = 1 << 17
"""The most terms a vocabulary may hold."""
MAX_TERM_CHARS = 256
"""The longest term name."""
MAX_WEIGHT = 1e6
"""The largest magnitude of a weight (intercepts and dense weights included)."""
SIGNIFICANT_DIGITS = 6
"""The precision ``dump`` keeps of each weight."""


class ArtifactError(ValueError):
    """The file is not a classifier this router can use; the message names it and says why."""


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Weight = Annotated[float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)]


class HeldOut(ApiModel):
    """The labelled requests a split kept out of a classifier's training, for its evaluation."""

    rule: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """The split's rule and version (``specfleet.learn.split.RULE``)."""
    share: Annotated[float, Field(gt=0, lt=1)]
    """The share of requests the rule holds out."""
    sha256: Sha256
    """The SHA-256 of the held-out labelled data, as its trainer read it."""
    count: Count
    """How many labelled requests were held out (0 for a small file)."""
    labels: dict[ObjectName, Count]
    """How many held-out requests were labelled with each tier."""


class Training(ApiModel):
    """Which labelled data a classifier was trained on."""

    sha256: Sha256
    """The SHA-256 of the labelled data, as its trainer read it."""
    count: Annotated[int, Field(ge=1)]
    """How many labelled requests."""
    labels: dict[ObjectName, Count]
    """How many were labelled with each tier (the smallest tier good enough)."""
    sources: dict[Annotated[str, StringConstraints(min_length=1, max_length=253)], Count]
    """How many came from each source (a judge model, an import, ...)."""
    held_out: HeldOut | None = None
    """(v2) The labels held out of training for evaluation; None: trained on all it was
    given."""


class Boundary(ApiModel):
    """The logistic model of "needs a tier above this one"."""

    intercept: Weight
    weights: list[Weight]
    """One per vocabulary term, in the vocabulary's order."""
    dense: list[Weight]
    """One per dense feature, in ``features.DENSE`` order."""


class Artifact(ApiModel):
    """A trained classifier, as its file holds it (see the module docstring)."""

    schema_: str = Field(SCHEMA, alias="schema")
    features: str = features.VERSION
    tiers: list[ObjectName] = Field(min_length=2, max_length=MAX_TIERS)
    vocabulary: list[Annotated[str, StringConstraints(max_length=MAX_TERM_CHARS)]] = Field(
        max_length=MAX_VOCABULARY
    )
    boundaries: list[Boundary]
    threshold: Annotated[float, Field(gt=0, lt=1)]
    quality_target: Annotated[float, Field(gt=0, le=1)]
    training: Training
    trained_at: Annotated[AwareDatetime, Field(strict=False)]

    @pydantic.model_validator(mode="after")
    def _shapes(self) -> Self:
        if self.schema_ not in SCHEMAS:
            raise ValueError(f"schema must be one of {', '.join(SCHEMAS)}")
        if self.schema_ == SCHEMA_V1 and self.training.held_out is not None:
            raise ValueError(f"training.heldOut: a {SCHEMA_V1} artifact has none")
        if self.features != features.VERSION:
            raise ValueError(f"features must be {features.VERSION!r}")
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers must be unique: {self.tiers}")
        if len(self.boundaries) != len(self.tiers) - 1:
            raise ValueError(
                f"{len(self.tiers)} tiers need {len(self.tiers) - 1} boundaries, "
                f"not {len(self.boundaries)}"
            )
        for j, boundary in enumerate(self.boundaries):
            if len(boundary.weights) != len(self.vocabulary):
                raise ValueError(
                    f"boundaries[{j}].weights: {len(boundary.weights)} weights for a "
                    f"vocabulary of {len(self.vocabulary)} terms"
                )
            if len(boundary.dense) != len(features.DENSE):
                raise ValueError(
                    f"boundaries[{j}].dense: {len(boundary.dense)} weights for "
                    f"{len(features.DENSE)} dense features {features.DENSE}"
                )
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("vocabulary: a term is listed twice")
        for i, term in enumerate(self.vocabulary):
            if not features.is_term(term):
                raise ValueError(
                    f"vocabulary[{i}]: {term[:80]!r} is not a term of the features: one or two "
                    "lowercase words without ASCII punctuation, joined by one space"
                )
        unknown = sorted(set(self.training.labels) - set(self.tiers))
        if unknown:
            raise ValueError(f"training.labels: {unknown} are not tiers {self.tiers}")
        for what, counts in (("labels", self.training.labels), ("sources", self.training.sources)):
            if sum(counts.values()) != self.training.count:
                raise ValueError(
                    f"training.{what} add up to {sum(counts.values())}, "
                    f"not training.count {self.training.count}"
                )
        held_out = self.training.held_out
        if held_out is not None:
            unknown = sorted(set(held_out.labels) - set(self.tiers))
            if unknown:
                raise ValueError(f"training.heldOut.labels: {unknown} are not tiers {self.tiers}")
            if sum(held_out.labels.values()) != held_out.count:
                raise ValueError(
                    f"training.heldOut.labels add up to {sum(held_out.labels.values())}, "
                    f"not training.heldOut.count {held_out.count}"
                )
        return self


class Classifier:
    """A loaded artifact, ready to score requests."""

    def __init__(self, artifact: Artifact, content_hash: str) -> None:
        self.artifact = artifact
        self.content_hash = content_hash
        """What names this classifier: the artifact's ``contentHash``."""
        self.tiers = tuple(artifact.tiers)
        self.threshold = artifact.threshold
        boundaries = artifact.boundaries
        # Each term's weights across the boundaries, in fixed point, packed into one int (see
        # _pack): a request's sums are one C-level sum(), exact whatever the order of its terms.
        # A term weighed 0 at every boundary changes no score, and is left out.
        columns = zip(*(b.weights for b in boundaries), strict=True)
        self._weights: dict[str, int] = {}
        for term, weights in zip(artifact.vocabulary, columns, strict=True):
            packed = _pack(weights)
            if packed:
                self._weights[term] = packed
        self._boundaries = tuple((b.intercept, tuple(b.dense)) for b in boundaries)

    def scores(self, seen: features.Features) -> tuple[float, ...]:
        """The log-odds of "needs a tier above j", for each boundary j."""
        return self._scores(sum(filter(None, map(self._weights.get, seen.terms))), seen.dense)

    def choose(
        self,
        seen: heuristic.Window,
        classification: heuristic.Classification,
        threshold: float | None = None,
    ) -> int:
        """``tier(features.extract(request, classification, seen))`` for a request the
        heuristic read as ``seen`` and classified as ``classification``, without copying the
        window's words into a set of terms: the router's way (see the module docstring)."""
        weight = self._weights.get
        # Unigrams and bigrams never share a string (a bigram holds a space), so the two sums
        # add up to the sum over the terms, each once.
        packed = sum(filter(None, map(weight, seen.distinct)))
        bigrams = set(map(" ".join, features.pairs(seen.words)))
        packed += sum(filter(None, map(weight, bigrams)))
        return self._tier(self._scores(packed, features.dense(classification)), threshold)

    def _scores(self, packed: int, dense: tuple[float, ...]) -> tuple[float, ...]:
        scores = []
        for intercept, factors in self._boundaries:
            # The lowest field, read as signed; what is left holds the next boundaries' sums.
            field = ((packed + _HALF) & _MASK) - _HALF
            packed = (packed - field) >> _FIELD_BITS
            scores.append(intercept + field / _SCALE + sum(map(mul, factors, dense)))
        return tuple(scores)

    def probabilities(self, seen: features.Features) -> tuple[float, ...]:
        """The probability of "needs a tier above j", for each boundary j."""
        return tuple(map(_sigmoid, self.scores(seen)))

    def tier(self, seen: features.Features | ParsedRequest, threshold: float | None = None) -> int:
        """The index of the tier for a request (its features, or the request itself, which is
        then classified by the heuristic first): the first boundary whose probability is below
        ``threshold`` (default: the artifact's), else the last tier."""
        if isinstance(seen, ParsedRequest):
            window = heuristic.read(seen.text)
            return self.choose(window, heuristic.classify(seen, window), threshold)
        return self._tier(self.scores(seen), threshold)

    def _tier(self, scores: tuple[float, ...], threshold: float | None) -> int:
        cut = self.threshold if threshold is None else threshold
        for j, score in enumerate(scores):
            if _sigmoid(score) < cut:
                return j
        return len(self.tiers) - 1


# Fixed point: a weight w is round(w * 2**40), exact to 1e-12. A boundary's sum over at most
# MAX_VOCABULARY (2**17) terms of |w| <= MAX_WEIGHT (< 2**20) stays within 2**77, inside a
# signed 80-bit field, so the fields of a sum of packed ints are the sums of the fields.
_SCALE = float(1 << 40)
_FIELD_BITS = 80
_HALF = 1 << (_FIELD_BITS - 1)
_MASK = (1 << _FIELD_BITS) - 1


def _pack(weights: Sequence[float]) -> int:
    """One int holding ``weights`` in fixed point, boundary j in bits 80j to 80j + 79 (read as
    signed, lowest first)."""
    return sum(round(w * _SCALE) << (_FIELD_BITS * j) for j, w in enumerate(weights))


def _sigmoid(score: float) -> float:
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    odds = math.exp(score)
    return odds / (1.0 + odds)


def content_hash(data: dict[str, Any]) -> str:
    """The content hash of an artifact's JSON fields (without ``contentHash``)."""
    canonical = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def dumps(artifact: Artifact) -> bytes:
    """The artifact's file: its weights rounded to ``SIGNIFICANT_DIGITS``, its content hash
    added; an absent ``training.heldOut`` is left out, not written as null."""
    data = artifact.model_dump(mode="json", by_alias=True, exclude_none=True)
    for boundary in data["boundaries"]:
        boundary["intercept"] = _rounded(boundary["intercept"])
        boundary["weights"] = list(map(_rounded, boundary["weights"]))
        boundary["dense"] = list(map(_rounded, boundary["dense"]))
    data["contentHash"] = content_hash(data)
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()


def dump(artifact: Artifact, directory: Path) -> Path:
    """Write the artifact as ``directory/classifier.json``; the path written."""
    path = directory / FILENAME
    path.write_bytes(dumps(artifact))
    return path


def load(path: Path) -> Classifier:
    """The classifier in ``path`` (a directory holding ``classifier.json``, or the file);
    raises ArtifactError saying what is wrong (see the module docstring)."""
    file = path / FILENAME if path.is_dir() else path
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    return loads(data, source=str(file))


def loads(data: bytes, source: str = FILENAME) -> Classifier:
    """The classifier in ``data`` (a file's bytes; ``source`` names it in errors)."""

    def refuse(problem: str) -> NoReturn:
        raise ArtifactError(f"{source}: {problem}")

    if len(data) > MAX_BYTES:
        refuse(f"larger than {MAX_BYTES} bytes, the most a classifier may take")
    try:
        raw = json.loads(data, parse_float=_finite, parse_constant=_not_a_number)
    except (ValueError, RecursionError) as exc:
        first = (str(exc).splitlines() or ["nested too deeply"])[0][:200]
        refuse(f"not a classifier's JSON (cut short, or another kind of file): {first}")
    if not isinstance(raw, dict):
        refuse(f"not a classifier: a JSON {type(raw).__name__}, not an object")
    schema = raw.get("schema")
    if schema not in SCHEMAS:
        refuse(
            f"schema is {str(schema)[:80]!r}, not one of {', '.join(SCHEMAS)}: not a classifier "
            "this reads"
        )
    trained_on = raw.get("features")
    if trained_on != features.VERSION:
        refuse(
            f"trained on features {str(trained_on)[:80]!r}, but these are "
            f"{features.VERSION!r}: train it again"
        )
    stated = raw.pop("contentHash", None)
    if stated is None:
        refuse("contentHash is missing")
    actual = content_hash(raw)
    if stated != actual:
        refuse(
            f"contentHash {str(stated)[:80]!r} does not match the content ({actual}): "
            "the file was changed after it was written"
        )
    try:
        artifact = Artifact.model_validate(raw)
    except pydantic.ValidationError as exc:
        refuse(_describe(exc))
    return Classifier(artifact, actual)


def _rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _not_a_number(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
