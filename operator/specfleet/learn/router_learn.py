"""One pass of the router's learning loop over a policy's capture store: judge what was captured
since the last pass, keep the labels, train a candidate when enough labels arrived, decide
whether it replaces the classifier in force, and record all of it in the store
(``specfleet.api.storelayout`` names where).

The pass, in order:

1. **Read** the captured batches not read yet. The cursor (``Cursor``) is a time, ``since``,
   and the batches written at or after it that were read already: a batch is unread when its
   name's time (``BatchKey.written``, when its pod wrote it) is at or after ``since`` and it is
   not among them. After a pass ``since`` becomes the newest batch read less ``LATE`` (never
   earlier than it was), and the batches read at or after it are kept, so a batch that lands
   up to ``LATE`` after a newer one was read is still read, and none is read twice. Every
   record of an unread batch counts as looked at, sampled or not.
2. **Judge** a sample of their requests (``specfleet.learn.labelling``: paced, a verdict that
   does not parse or a server's error counted and dropped) and import the labels into the
   store (``specfleet.learn.labelstore``). When requests were asked and none was labelled (a
   judge answering garbage, a fleet that is down) the cursor stays, so the next pass asks them
   again; otherwise it moves past every batch read.
3. **Train** (``specfleet.learn.router_train``, as ``specfleet router train``) on the training
   side of all the stored labels (each distinct line once) when at least ``min_new_labels``
   labels arrived since the last training, or none ever ran. The artifact is stored under its
   content hash.
4. **Decide** (``specfleet.learn.promotion``) on the held-out side of the same labels against
   the classifier in force: the store's in-force pointer (the latest applied promotion), else
   the heuristic. A pin other than the one in force is the candidate judged (and wins, as the
   rule says; a candidate trained in the same pass is kept, not judged); otherwise the
   candidate just trained (refused while a pin is in force). Nothing trained and no pin to
   apply: no decision, and the artifact in force is not even read.
5. **Record** the decision (``promotion.as_json``, which ``promotion.replay`` decides again),
   and when it is an applied promotion (mode ``Apply``) move the in-force pointer. ``Recommend``
   records only.

Everything read from the store is data: artifacts go through ``specfleet.routing.learned``'s
checks, and one whose bytes are not what its name says (another content hash, a broken file) is
refused, naming it, and never becomes in force. The store's I/O is ``specfleet.capturestore``'s;
the servers are ``labelling``'s. Called by ``specfleet router learn``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from specfleet import capturestore
from specfleet.api import learning as spec
from specfleet.api import storelayout
from specfleet.api.capture import BatchKey
from specfleet.learn import (
    LearnError,
    labelling,
    labels,
    labelstore,
    promotion,
    split,
)
from specfleet.learn.policy import Policy
from specfleet.routing import learned

LATE = capturestore.LATE
"""How late a batch may land after a newer one was read and still be read."""
DEFAULT_MIN_NEW_LABELS = spec.DEFAULT_MIN_NEW_LABELS
STATUS_SCHEMA = spec.STATUS_SCHEMA
REASON_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far the loop has read the store's batches, and what the last training saw."""

    since: datetime | None = None
    """Batches written before it are behind the cursor (None: nothing read yet)."""
    seen: frozenset[str] = frozenset()
    """The batches written at or after ``since`` that were read."""
    trained_labels: int | None = None
    """How many labels the store held when a candidate was last trained (None: never)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": storelayout.CURSOR_SCHEMA,
            "since": None if self.since is None else _iso(self.since),
            "seen": sorted(self.seen),
            "trainedLabels": self.trained_labels,
        }

    @classmethod
    def of_json(cls, found: Any, source: str) -> Cursor:
        try:
            if not isinstance(found, dict) or found.get("schema") != storelayout.CURSOR_SCHEMA:
                raise ValueError(f"not a {storelayout.CURSOR_SCHEMA} object")
            since = found["since"]
            seen = found["seen"]
            trained = found["trainedLabels"]
            if not isinstance(seen, list) or not all(isinstance(p, str) for p in seen):
                raise ValueError("seen is not a list of batch names")
            if trained is not None and (isinstance(trained, bool) or not isinstance(trained, int)):
                raise ValueError(f"trainedLabels {trained!r} is not a count")
            moment = None if since is None else datetime.fromisoformat(since)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"since {since!r} has no time zone")
            return cls(
                since=moment,
                seen=frozenset(seen),
                trained_labels=trained,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LearnError(
                f"{source}: not the learning loop's cursor ({exc}): delete it to read every "
                "batch in the store again"
            ) from None


def unread(batches: Iterable[capturestore.Batch], cursor: Cursor) -> list[capturestore.Batch]:
    """The batches the cursor has not passed, oldest first."""
    return [
        b
        for b in batches
        if (cursor.since is None or b.key.written >= cursor.since) and b.path not in cursor.seen
    ]


def advanced(cursor: Cursor, read: Sequence[capturestore.Batch]) -> Cursor:
    """The cursor past ``read`` as well (see the module docstring)."""
    if not read:
        return cursor
    since = max(b.key.written for b in read) - LATE
    if cursor.since is not None:
        since = max(since, cursor.since)
    paths = cursor.seen | {b.path for b in read}
    kept = set()
    for path in paths:
        key = BatchKey.parse(path)
        if key is not None and key.written >= since:
            kept.add(path)
    return Cursor(since, frozenset(kept), cursor.trained_labels)


@dataclass(frozen=True, slots=True)
class Settings:
    """What a pass is asked to do."""

    objective: promotion.Objective
    mode: promotion.Mode = "Recommend"
    pin: str | None = None
    min_new_labels: int = DEFAULT_MIN_NEW_LABELS
    sample: float = 1.0


@dataclass
class Report:
    """What a pass did."""

    time: datetime
    batches: int = 0
    """Unread batches read."""
    counts: labelling.Counts = field(default_factory=labelling.Counts)
    unreadable_batches: list[str] = field(default_factory=list)
    labels_written: str | None = None
    """Where this pass's judged labels were kept, if any."""
    labels: int = 0
    """Distinct labelled requests in the store, for the policy's tiers."""
    new_labels: int = 0
    """Of those, how many arrived since the last training (all of them when none ran)."""
    trained: str | None = None
    """The content hash of the candidate trained in this pass."""
    notes: list[str] = field(default_factory=list)
    decision: promotion.Decision | None = None
    decision_key: str | None = None
    in_force: str = promotion.HEURISTIC
    """The classifier in force once the pass ended."""
    cursor_moved: bool = False

    @property
    def labelling_failed(self) -> bool:
        """Whether requests were asked and none was labelled."""
        return self.counts.asked > 0 and self.counts.failed

    def line(self) -> str:
        decision = self.decision
        return (
            f"batches={self.batches} records={self.counts.lines} asked={self.counts.asked} "
            f"labelled={self.counts.total_labelled} unparseable={self.counts.unparseable} "
            f"tier_errors={sum(self.counts.tier_errors.values())} "
            f"judge_errors={self.counts.judge_errors} labels={self.labels} "
            f"new_labels={self.new_labels} trained={self.trained or 'none'} "
            f"decision={decision.verdict.lower() if decision else 'none'} "
            f"rule={decision.rule if decision else 'none'} "
            f"applied={str(bool(decision and decision.applied)).lower()} "
            f"in_force={self.in_force}"
        )

    def status_json(self) -> dict[str, Any]:
        """What ``status.learning`` takes of the pass (``specfleet.api.learning``), small
        enough for a container's termination message (4 KiB) whatever the pass saw: counts,
        the decision with its reason cut to ``REASON_CHARS``, no lists."""
        counts = self.counts
        found: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "time": _iso(self.time),
            "lastRun": {
                "batches": self.batches,
                "unreadableBatches": len(self.unreadable_batches),
                "records": counts.lines,
                "asked": counts.asked,
                "labelled": counts.total_labelled,
                "unparseable": counts.unparseable,
                "tierErrors": sum(counts.tier_errors.values()),
                "judgeErrors": counts.judge_errors,
            },
            "labels": self.labels,
            "newLabels": self.new_labels,
            "trained": self.trained,
            "inForce": self.in_force,
            "labellingFailed": self.labelling_failed,
        }
        if self.decision is not None:
            decision = promotion.as_json(self.decision)
            found["decision"] = {
                key: decision[key]
                for key in (
                    "time",
                    "verdict",
                    "rule",
                    "applied",
                    "mode",
                    "labels",
                    "candidate",
                    "inForce",
                )
            } | {"reason": _cut(decision["reason"], REASON_CHARS), "record": self.decision_key}
        return found

    def as_json(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "time": _iso(self.time),
            "batches": self.batches,
            "unreadableBatches": self.unreadable_batches,
            "records": counts.lines,
            "asked": counts.asked,
            "labelled": dict(counts.labelled),
            "unparseable": counts.unparseable,
            "tierErrors": dict(counts.tier_errors),
            "judgeErrors": counts.judge_errors,
            "unreadable": counts.unreadable,
            "notSampled": counts.not_sampled,
            "labelsWritten": self.labels_written,
            "labels": self.labels,
            "newLabels": self.new_labels,
            "trained": self.trained,
            "notes": self.notes,
            "decision": None if self.decision is None else promotion.as_json(self.decision),
            "decisionKey": self.decision_key,
            "inForce": self.in_force,
            "cursorMoved": self.cursor_moved,
        }


Labeller = Callable[[], labelling.Labeller]
"""Connects to the tiers and the judge: called only when there is something to judge."""
Train = Callable[[labels.LabelSet, Policy, datetime, float], tuple[learned.Artifact, list[str]]]
"""Trains a candidate on a label set (its training side) for a quality target: the artifact
and training's warnings (``specfleet.learn.router_train``, given in so that this module needs
no scikit-learn to import)."""


def run(
    store: capturestore.Store,
    root: str,
    policy: Policy,
    settings: Settings,
    labeller: Labeller,
    train: Train,
    *,
    now: datetime,
    trained_at: datetime,
) -> tuple[Report, labelling.Labeller | None]:
    """One pass (see the module docstring): its report, and the labeller if one was made.
    Raises LearnError, ArtifactError or CaptureError for a store or an artifact it cannot
    use; what was recorded before stays recorded."""
    report = Report(time=now)
    cursor = read_cursor(store, root)
    made, cursor = _judge(store, root, policy, settings, labeller, cursor, report)
    everything = stored_labels(store, root, policy.tiers)
    candidate = _train(store, root, policy, settings, train, trained_at, cursor, everything, report)
    _decide(store, root, policy, settings, candidate, everything, report)
    return report, made


def _judge(
    store: capturestore.Store,
    root: str,
    policy: Policy,
    settings: Settings,
    labeller: Labeller,
    cursor: Cursor,
    report: Report,
) -> tuple[labelling.Labeller | None, Cursor]:
    """Steps 1 and 2: the unread batches judged, their labels kept, the cursor moved."""
    fresh = unread(capturestore.list_batches(store, root), cursor)
    report.batches = len(fresh)
    if not fresh:
        return None, cursor
    made = labeller()
    report.counts = made.counts
    judged: list[bytes] = []
    for batch in fresh:
        try:
            for asked in labelling.requests(capturestore.lines(store, batch), made.counts):
                if not labelling.sampled(asked, settings.sample):
                    made.counts.not_sampled += 1
                    continue
                line = made.label(asked)
                if line is not None:
                    judged.append(line)
        except capturestore.CaptureError as exc:
            report.unreadable_batches.append(batch.path)
            report.notes.append(f"passed by an unreadable batch: {exc}")
    if judged:
        data = labels.read(judged, policy.tiers, name="judged labels")
        report.labels_written, _ = labelstore.write(store, root, data, report.time)
    if report.labelling_failed:
        return made, cursor
    cursor = advanced(cursor, fresh)
    report.cursor_moved = True
    write_json(store, storelayout.cursor(root), cursor.as_json())
    return made, cursor


def _train(
    store: capturestore.Store,
    root: str,
    policy: Policy,
    settings: Settings,
    train: Train,
    trained_at: datetime,
    cursor: Cursor,
    everything: labels.LabelSet,
    report: Report,
) -> learned.Classifier | None:
    """Step 3: a candidate trained and stored, when enough labels arrived."""
    if everything.skipped:
        report.notes.append(
            f"left out {len(everything.skipped)} stored labels that are not for this policy's "
            f"tiers, the first: {everything.skipped[0]}"
        )
    report.labels = len(everything.examples)
    previous = cursor.trained_labels
    report.new_labels = report.labels - (previous or 0)
    if previous is not None and report.new_labels < settings.min_new_labels:
        report.notes.append(
            f"not trained: {report.new_labels} labels arrived since the last training, fewer "
            f"than {settings.min_new_labels} (--min-new-labels)"
        )
        return None
    if not everything.examples:
        report.notes.append("not trained: no labels in the store yet")
        return None
    try:
        target = settings.objective.quality_target
        artifact, warnings = train(everything, policy, trained_at, target)
    except LearnError as exc:
        report.notes.append(f"not trained: {exc}")
        return None
    report.notes += [f"training: {w}" for w in warnings]
    data = learned.dumps(artifact)
    candidate = learned.loads(data, source="the trained artifact")
    store.put(storelayout.classifier(root, candidate.content_hash), data)
    report.trained = candidate.content_hash
    trained = Cursor(cursor.since, cursor.seen, report.labels)
    write_json(store, storelayout.cursor(root), trained.as_json())
    return candidate


def _decide(
    store: capturestore.Store,
    root: str,
    policy: Policy,
    settings: Settings,
    candidate: learned.Classifier | None,
    everything: labels.LabelSet,
    report: Report,
) -> None:
    """Steps 4 and 5: the decision, recorded; the pointer moved for an applied promotion."""
    pointer = read_in_force(store, root)
    report.in_force = pointer
    if settings.pin is not None and settings.pin != pointer:
        candidate = load_classifier(store, root, settings.pin, pinned=True)
    if candidate is None:
        return
    in_force = None if pointer == promotion.HEURISTIC else load_classifier(store, root, pointer)
    held = candidate.artifact.training.held_out
    if held is None or (held.rule, held.share) != (split.RULE, split.SHARE):
        raise LearnError(
            f"{candidate.content_hash} was not trained by the split {split.RULE} at "
            f"{split.SHARE:g}, so its training may hold the requests it would be judged on"
        )
    held_out = split.divide(everything).held_out
    # Figures need numpy, which the operator's own command line, importing this module, does
    # not load.
    from specfleet.learn import router_eval  # noqa: PLC0415

    found = [router_eval.figures_of(held_out, policy, c) for c in (candidate, in_force)]
    decision = promotion.decide(
        settings.objective,
        found[0],
        found[1],
        len(held_out.examples),
        now=report.time,
        pin=settings.pin,
        mode=settings.mode,
        held_out=held_out.sha256(),
    )
    key = storelayout.decision(root, report.time, decision.verdict, candidate.content_hash)
    write_json(store, key, promotion.as_json(decision))
    report.decision, report.decision_key = decision, key
    if decision.applied:
        pointer_json = {
            "schema": storelayout.IN_FORCE_SCHEMA,
            "classifier": candidate.content_hash,
            "decision": key,
            "time": _iso(report.time),
        }
        write_json(store, storelayout.in_force(root), pointer_json)
        report.in_force = candidate.content_hash


def stored_labels(store: capturestore.Store, root: str, tiers: Sequence[str]) -> labels.LabelSet:
    """Every distinct labelled line in the store (first import first), for ``tiers``; lines
    that do not fit them are left out (``skipped``)."""
    distinct: dict[bytes, None] = {}
    for line in labelstore.export(store, root):
        distinct.setdefault(line, None)
    return labels.read(distinct, tiers, skip_invalid=True, name="the store's labels")


def read_cursor(store: capturestore.Store, root: str) -> Cursor:
    path = storelayout.cursor(root)
    found = read_json(store, path)
    return Cursor() if found is None else Cursor.of_json(found, path)


def read_in_force(store: capturestore.Store, root: str) -> str:
    """The content hash the in-force pointer names, or ``heuristic`` when there is none."""
    path = storelayout.in_force(root)
    found = read_json(store, path)
    if found is None:
        return promotion.HEURISTIC
    try:
        return storelayout.pointed(found, path, root)
    except ValueError as exc:
        raise LearnError(str(exc)) from None


def load_classifier(
    store: capturestore.Store, root: str, content_hash: str, *, pinned: bool = False
) -> learned.Classifier:
    """The stored artifact of ``content_hash``, checked as the router checks it and against
    its name; raises LearnError naming it."""
    what = f"the pinned classifier {content_hash}" if pinned else "the classifier in force"
    try:
        path = storelayout.classifier(root, content_hash)
    except ValueError as exc:
        raise LearnError(f"{what}: {exc}") from None
    data = _read(store, path, learned.MAX_BYTES + 1)
    if data is None:
        raise LearnError(
            f"{what}: {path} is not in the store ({store!r}): pin a classifier this loop "
            "trained (see its decisions), or train one"
        )
    try:
        classifier = learned.loads(data, source=path)
    except learned.ArtifactError as exc:
        raise LearnError(f"{what} cannot be used: {exc}") from None
    if classifier.content_hash != content_hash:
        raise LearnError(
            f"{what} cannot be used: {path} holds {classifier.content_hash}, not the "
            "classifier its name says"
        )
    return classifier


def read_json(store: capturestore.Store, path: str) -> Any:
    """The JSON object at ``path``; None when there is none. Raises LearnError for bytes that
    are not JSON."""
    data = _read(store, path, 64 * 1024 * 1024)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise LearnError(f"{path}: not JSON ({exc}): put back what was there") from None


def write_json(store: capturestore.Store, path: str, found: Any) -> None:
    store.put(path, (json.dumps(found, indent=2, ensure_ascii=True) + "\n").encode())


def _read(store: capturestore.Store, path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of the object at ``path``; None when it is not in the store."""
    folder = path.rsplit("/", 1)[0]
    if all(found != path for found, _ in store.objects(folder)):
        return None
    raw = store.open(path)
    try:
        return raw.read(limit)
    finally:
        raw.close()


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
