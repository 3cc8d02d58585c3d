"""The learned classifier in force in a policy's capture store, followed while the router runs:
what a RoutingPolicy with ``spec.learning`` routes with.

The learning loop (``specfleet router learn``, the policy's learning Job) keeps its artifacts and
a pointer to the one in force in the capture store (``specfleet.api.storelayout``: under the
policy's root, ``learning/in-force.json`` names a content hash, and
``learning/classifiers/sha256-HEX.json`` holds that artifact). ``StoreArtifact.poll`` reads the
pointer at most once per ``pollSeconds`` (the configuration's ``classifier.inForce``), and the
artifact only when the pointer names another. An artifact is data: loaded whole with the same
checks as a mounted one (``specfleet_runtime.router.artifact.fitted``: schema, feature version,
its own content hash, the policy's tiers), and refused unless its content hash is the one the
pointer names.

Which classifier is in force (``chooser``): the one the pointer names once it loaded and
fitted; the heuristic while there is no pointer (nothing was promoted yet); and while the store
cannot be read, or the pointer or its artifact cannot be used, the last one that could, so that
a store that is down for a while changes no routing. Each distinct problem is one WARNING naming
the store's object and what is kept, and one load failure counted (``reason`` as
``specfleet_runtime.router.artifact.REASONS``).

It reads the store with blocking calls (boto3's), so ``poll`` runs off the event loop
(``specfleet_runtime.router.app.watch``). Called by ``specfleet_runtime.router.app``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from specfleet.api import storelayout
from specfleet.api.capture import CaptureConfig
from specfleet.routing import learned
from specfleet_runtime.capture import store as stores
from specfleet_runtime.router import routing
from specfleet_runtime.router.artifact import UnfitError, fitted, in_force_message

log = logging.getLogger(__name__)

POINTER_BYTES = 64 * 1024
"""The most of an in-force pointer read (one is a few hundred bytes)."""


class StoreArtifact:
    """Follows the in-force pointer of one policy's store for ``tiers``."""

    def __init__(
        self,
        capture: CaptureConfig,
        tiers: Sequence[str],
        poll_seconds: float,
        failed: Callable[[str], None] | None = None,
        *,
        store: stores.Reader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``store`` defaults to the one ``capture`` names, opened at the first poll (an S3
        client takes a while to build); ``failed(reason)`` is called once per distinct
        problem."""
        self.capture = capture
        self.tiers = tuple(tiers)
        self.poll_seconds = poll_seconds
        self.root = stores.batch_root(capture.store, capture.source)
        self.pointer = storelayout.in_force(self.root)
        self.chooser = routing.HEURISTIC
        """What picks tiers now (see the module docstring)."""
        self._failed = failed
        self._store = store
        self._clock = clock
        self._next: float | None = None
        self._named: str | None = None
        """The content hash the pointer named at the last read that could be used."""
        self._problem: str | None = None

    def identity(self) -> tuple[CaptureConfig, tuple[str, ...], float]:
        """What a new configuration must keep for this follower to go on."""
        return self.capture, self.tiers, self.poll_seconds

    @property
    def error(self) -> str | None:
        """The problem with the store, the pointer or the artifact as last read, if any."""
        return self._problem

    def poll(self) -> bool:
        """Read the pointer if it is due; whether the classifier in force changed."""
        now = self._clock()
        if self._next is not None and now < self._next:
            return False
        self._next = now + self.poll_seconds
        try:
            chooser = self._read()
        except _ReadError as problem:
            self._report(problem.reason, str(problem))
            return False
        self._report(None, None)
        if chooser is None or chooser == self.chooser:
            return False
        self.chooser = chooser
        if chooser.learned is None:
            log.info("%s: no classifier in force in the store: the heuristic routes", self.where)
        else:
            log.info("%s", in_force_message(self.where, chooser.learned))
        return True

    @property
    def where(self) -> str:
        """The pointer, as a problem names it."""
        s3 = self.capture.store.s3
        if s3 is not None:
            return f"classifier in force s3://{s3.bucket}/{self.pointer}"
        return f"classifier in force {self.capture.store.directory}/{self.pointer}"

    def _read(self) -> routing.Chooser | None:
        """The chooser the store names now; None when that is the one in force."""
        store = self._opened()
        data = self._get(store, self.pointer, POINTER_BYTES)
        if data is None:
            self._named = None
            return routing.HEURISTIC
        try:
            named = storelayout.pointed(json.loads(data), self.where, self.root)
        except ValueError as exc:  # JSONDecodeError too
            raise _ReadError("invalid", f"{self.where}: {exc}") from None
        if named == self._named:
            return None
        path = storelayout.classifier(self.root, named)
        content = self._get(store, path, learned.MAX_BYTES + 1)
        if content is None:
            raise _ReadError(
                "unreadable",
                f"{self.where} names {named}, but {path} is not in the store: the learning "
                "loop writes the artifact before the pointer; was it deleted?",
            )
        source = f"classifier {path}"
        try:
            classifier = fitted(content, source, self.tiers)
        except UnfitError as exc:
            raise _ReadError(exc.reason, str(exc)) from None
        if classifier.content_hash != named:
            raise _ReadError(
                "invalid",
                f"{source}: its content hash is {classifier.content_hash}, not the "
                f"{named} its name and the pointer say: the file was replaced",
            )
        self._named = named
        return routing.Chooser(classifier)

    def _opened(self) -> stores.Reader:
        if self._store is None:
            try:
                self._store = stores.open_store(self.capture.store)
            except Exception as exc:  # boto3's, building a client
                raise _ReadError(
                    "unreadable", f"{self.where}: cannot open the store: {exc}"
                ) from exc
        return self._store

    def _get(self, store: stores.Reader, name: str, most: int) -> bytes | None:
        try:
            return store.get(name, most)
        except stores.StoreError as exc:
            raise _ReadError("unreadable", f"{self.where}: {exc}") from None

    def _report(self, reason: str | None, problem: str | None) -> None:
        if problem is not None and problem != self._problem:
            kept = (
                "the heuristic"
                if self.chooser.learned is None
                else f"the learned classifier {self.chooser.content_hash}"
            )
            log.warning("%s; keeping %s", problem, kept)
            if self._failed is not None and reason is not None:
                self._failed(reason)
        self._problem = problem


class _ReadError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
