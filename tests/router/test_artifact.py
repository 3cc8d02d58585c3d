"""Which classifier is in force while the artifact the configuration names is reread: the newest
that loads and fits the policy's tiers, else the last that did, else the heuristic; each
problem one WARNING naming the file and why, and one failure counted by its reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from specfleet_runtime.router import artifact
from tests.router.builders import TIERS, classifier, content_hash, replace

CAPITAL = classifier({"capital": 2})
DRAFT = classifier({"draft": 1})


class Watching:
    """An ArtifactFile on ``path`` and the failures it reported."""

    def __init__(self, path: Path, tiers: tuple[str, ...] = TIERS) -> None:
        self.failures: list[str] = []
        self.file = artifact.ArtifactFile(path, tiers, self.failures.append)

    @property
    def in_force(self) -> str | None:
        return self.file.chooser.content_hash


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_newest_artifact_that_fits_is_in_force(tmp_path: Path) -> None:
    path = tmp_path / "classifier" / "classifier.json"
    replace(path, CAPITAL)
    watching = Watching(path.parent)  # a directory holding classifier.json, as mounted
    loaded = watching.file.poll()
    assert loaded is not None and loaded.content_hash == content_hash(CAPITAL)
    assert watching.in_force == content_hash(CAPITAL)
    assert watching.file.chooser.kind == "learned"
    assert watching.file.poll() is None  # unchanged: nothing new, nothing reread
    replace(path, DRAFT)
    assert watching.file.poll() is not None
    assert watching.in_force == content_hash(DRAFT)
    assert watching.failures == []


@pytest.mark.parametrize(
    ("content", "reason", "says"),
    [
        (CAPITAL[:-40], "invalid", "not a classifier's JSON"),
        (b'{"policy": "assistant", "tiers": []}', "invalid", "schema is 'None'"),
        (CAPITAL.replace(b'"threshold":0.5', b'"threshold":0.6'), "invalid", "contentHash"),
        (
            classifier({"capital": 1}, tiers=("small", "large")),
            "tiers",
            "was trained for tiers small, large, not the policy's simple, medium, complex",
        ),
        (
            classifier({"capital": 1}, tiers=("medium", "simple", "complex")),
            "tiers",
            "not the policy's simple, medium, complex in that order",
        ),
        (None, "unreadable", "cannot be read: No such file or directory"),
    ],
)
def test_an_artifact_that_cannot_be_used_leaves_the_heuristic(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    content: bytes | None,
    reason: str,
    says: str,
) -> None:
    path = tmp_path / "classifier.json"
    if content is not None:
        replace(path, content)
    watching = Watching(path)
    for _ in range(3):
        assert watching.file.poll() is None
    assert watching.in_force is None
    assert watching.file.chooser.kind == "heuristic"
    (warning,) = warnings(caplog)
    assert warning.startswith(f"classifier {path}: ")
    assert says in warning
    assert warning.endswith("; keeping the heuristic")
    assert watching.failures == [reason]


def test_a_broken_replacement_keeps_the_last_classifier_that_fitted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "classifier.json"
    replace(path, CAPITAL)
    watching = Watching(path)
    assert watching.file.poll() is not None
    replace(path, b"{")
    assert watching.file.poll() is None
    path.unlink()
    assert watching.file.poll() is None
    replace(path, classifier({"x": 1}, tiers=("a", "b")))
    assert watching.file.poll() is None
    assert watching.in_force == content_hash(CAPITAL)
    kept = f"; keeping the learned classifier {content_hash(CAPITAL)}"
    found = warnings(caplog)
    assert len(found) == 3 and all(w.endswith(kept) for w in found)
    assert watching.failures == ["invalid", "unreadable", "tiers"]
    # The file put back as it was: the same classifier, no new problem.
    replace(path, CAPITAL)
    watching.file.poll()
    assert watching.in_force == content_hash(CAPITAL)
    assert watching.file.error is None
    assert len(warnings(caplog)) == 3


def test_the_same_problem_again_after_a_good_file_counts_again(tmp_path: Path) -> None:
    path = tmp_path / "classifier.json"
    watching = Watching(path)
    watching.file.poll()
    replace(path, DRAFT)
    watching.file.poll()
    path.unlink()
    watching.file.poll()
    watching.file.poll()
    assert watching.failures == ["unreadable", "unreadable"]
    assert watching.in_force == content_hash(DRAFT)
