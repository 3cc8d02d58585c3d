"""The learned classifier the router's configuration names, at run time: rereading its artifact
while the router runs, and saying which classifier picks the tiers.

The configuration's ``classifier`` (``specfleet.api.routerconfig``) is ``heuristic``, or names
an artifact (``{path}``: the file, or a directory holding ``classifier.json``). For a path,
``ArtifactFile.poll`` rereads the file on every tick of the configuration's reload
(``specfleet_runtime.watched``; the bytes are read again only when the file's inode, size or
modification time changed, so a 1 MiB artifact is not read every second, and a ConfigMap update,
which swaps the file, is seen at the next tick). A file that changed is loaded whole
(``specfleet.routing.learned.loads``: this schema and feature version, unchanged since it was
written) and must fit the policy: its tiers are the configuration's tier names, in order.

Which classifier is in force (``ArtifactFile.chooser``):

- the newest artifact read from the path that loaded and fitted;
- while the file cannot be read, or holds something that does not load or fit, the last one
  that did: an artifact that was routing goes on routing through a file being swapped or half
  written, as the configuration and the API keys keep their last good value. Each distinct
  problem is one WARNING naming the file, what is wrong and what is kept, and one load failure
  counted (``reason``: ``unreadable``, ``invalid`` or ``tiers``; under several workers, each
  reads and logs for itself and the first alone counts, see ``specfleet_runtime.router.metrics``);
- the heuristic when none has, since the configuration named this path with these tiers: a new
  path, or new tiers, start afresh (an artifact trained for other tiers cannot route them).

Nothing about the classifier stops the router or fails a request. Pure but for reading the
file; called by ``specfleet_runtime.router.app``, which holds one ``ArtifactFile`` while the
configuration names an artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from specfleet.routing import learned
from specfleet_runtime import watched
from specfleet_runtime.router import routing

log = logging.getLogger(__name__)

REASONS = ("unreadable", "invalid", "tiers")
"""Why an artifact was not taken: the file cannot be read; it is not a whole artifact of this
schema and feature version; its tiers are not the policy's."""


class UnfitError(ValueError):
    """An artifact that does not load or does not fit the policy; ``reason`` is one of
    ``REASONS`` (not ``unreadable``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fitted(content: bytes, source: str, tiers: Sequence[str]) -> learned.Classifier:
    """The classifier in ``content`` (``source`` names it in errors) if it loads whole and was
    trained for ``tiers``, in order; raises UnfitError saying why not."""
    try:
        classifier = learned.loads(content, source=source)
    except learned.ArtifactError as exc:
        raise UnfitError("invalid", str(exc)) from None
    if classifier.tiers != tuple(tiers):
        raise UnfitError(
            "tiers",
            f"{source}: {classifier.content_hash} was trained for tiers "
            f"{', '.join(classifier.tiers)}, not the policy's {', '.join(tiers)} in "
            "that order; train one on this policy's tiers",
        )
    return classifier


def in_force_message(source: str, classifier: learned.Classifier) -> str:
    """The INFO line of a learned classifier taking over."""
    training = classifier.artifact.training
    return (
        f"{source}: learned classifier {classifier.content_hash} in force (tiers "
        f"{', '.join(classifier.tiers)}; trained {classifier.artifact.trained_at.isoformat()} "
        f"on {training.count} labelled requests)"
    )


class ArtifactFile(watched.Watched[bytes, learned.Classifier]):
    """Rereads the artifact at ``path`` and reports a classifier when it changes to one that
    fits ``tiers``; ``chooser`` is the classifier in force (see the module docstring)."""

    keeping = "the heuristic"

    def __init__(
        self, path: Path, tiers: Sequence[str], failed: Callable[[str], None] | None = None
    ) -> None:
        """``failed(reason)`` is called once per distinct problem (one of ``REASONS``)."""
        super().__init__(path)
        self.tiers = tuple(tiers)
        """The policy's tier names, cheapest first: what an artifact's tiers must be."""
        self.chooser = routing.HEURISTIC
        """What picks tiers now: the last classifier that loaded and fitted, else the
        heuristic."""
        self._failed = failed
        self._read_failed = False
        self._content_reason = REASONS[1]
        self._signature: tuple[int, int, int, int] | None = None
        self._data = b""

    @property
    def file(self) -> Path:
        """The artifact's file: ``path``, or ``classifier.json`` in it if it is a directory."""
        return self.path / learned.FILENAME if self.path.is_dir() else self.path

    def read(self) -> bytes:
        file = self.file
        try:
            stat = file.stat()
            signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if signature != self._signature:
                with file.open("rb") as stream:
                    # One byte over the limit is enough for loads to refuse it.
                    self._data = stream.read(learned.MAX_BYTES + 1)
                self._signature = signature
        except OSError as exc:
            self._read_failed = True
            raise watched.WatchError(
                f"classifier {file}: cannot be read: {exc.strerror or exc}"
            ) from None
        self._read_failed = False
        return self._data

    def parse(self, content: bytes) -> learned.Classifier:
        try:
            return fitted(content, f"classifier {self.file}", self.tiers)
        except UnfitError as exc:
            self._content_reason = exc.reason
            raise watched.WatchError(str(exc)) from None

    def poll(self) -> learned.Classifier | None:
        """The new classifier if the file changed to one that loads and fits (it is then in
        force); None otherwise (what was in force stays)."""
        before = self.error
        classifier = super().poll()
        if classifier is not None:
            self.chooser = routing.Chooser(classifier)
            log.info("%s", in_force_message(f"classifier {self.file}", classifier))
        elif self.error is not None and self.error != before and self._failed is not None:
            self._failed("unreadable" if self._read_failed else self._content_reason)
        return classifier

    def kept(self) -> str:
        if self.chooser.learned is None:
            return "the heuristic"
        return f"the learned classifier {self.chooser.content_hash}"
