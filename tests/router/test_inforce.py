"""The router following the classifier in force in a policy's capture store: the heuristic until
the learning loop's pointer names an artifact, that artifact once it loads, fits and hashes to
the name; the last good one while the store, the pointer or the artifact cannot be used, each
problem one WARNING and one failure counted; the pointer read at most once per pollSeconds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from specfleet.api import storelayout
from specfleet.api.capture import CaptureConfig
from specfleet_runtime.capture import store as stores
from specfleet_runtime.router import inforce
from tests.router.builders import TIERS, classifier, content_hash, replace

CAPITAL = classifier({"capital": 2})
DRAFT = classifier({"draft": 1})
POLL = 30.0


def _config(directory: Path) -> CaptureConfig:
    return CaptureConfig.model_validate(
        {
            "source": {
                "kind": "RoutingPolicy",
                "namespace": "ml",
                "name": "assistant",
                "component": "router",
            },
            "sampleRate": 1.0,
            "store": {"directory": str(directory)},
        }
    )


class Fleet:
    """A directory store, what the learning loop writes into it, and a router following it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.now = 0.0
        self.failures: list[str] = []
        self.follower = inforce.StoreArtifact(
            _config(directory), TIERS, POLL, self.failures.append, clock=lambda: self.now
        )
        self.root = directory / self.follower.root

    def store(self, artifact: bytes, named: str | None = None) -> str:
        """Keep an artifact under its content hash's name (or ``named``'s)."""
        hashed = named or content_hash(artifact)
        replace(Path(self.directory / storelayout.classifier(self.follower.root, hashed)), artifact)
        return hashed

    def point(self, hashed: str) -> None:
        """Move the in-force pointer, as an applied promotion does."""
        pointer = {
            "schema": storelayout.IN_FORCE_SCHEMA,
            "classifier": hashed,
            "decision": "learning/decisions/x.json",
            "time": "2026-12-07T06:00:00Z",
        }
        replace(self.directory / self.follower.pointer, json.dumps(pointer).encode())

    def poll(self) -> bool:
        """A poll once the pointer is due again."""
        self.now += POLL
        return self.follower.poll()

    @property
    def in_force(self) -> str | None:
        return self.follower.chooser.content_hash


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_heuristic_until_a_promotion_then_each_classifier_the_pointer_names(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path)
    assert not fleet.poll()
    assert fleet.in_force is None and fleet.follower.error is None
    fleet.point(fleet.store(CAPITAL))
    assert fleet.poll()
    assert fleet.in_force == content_hash(CAPITAL)
    assert fleet.follower.chooser.kind == "learned"
    assert not fleet.poll()  # the same pointer: nothing changes
    fleet.point(fleet.store(DRAFT))
    assert fleet.poll()
    assert fleet.in_force == content_hash(DRAFT)
    assert fleet.failures == []


def test_the_pointer_is_read_at_most_once_per_poll_seconds(tmp_path: Path) -> None:
    reads: list[str] = []

    class Counting(stores.DirectoryStore):
        def get(self, name: str, most: int) -> bytes | None:
            reads.append(name)
            return super().get(name, most)

    fleet = Fleet(tmp_path)
    fleet.follower = inforce.StoreArtifact(
        _config(tmp_path), TIERS, POLL, store=Counting(tmp_path), clock=lambda: fleet.now
    )
    fleet.point(fleet.store(CAPITAL))
    assert fleet.follower.poll()
    assert len(reads) == 2  # the pointer, then the artifact it names
    fleet.now += POLL - 1
    assert not fleet.follower.poll()
    assert len(reads) == 2
    fleet.now += 1
    assert not fleet.follower.poll()
    assert reads[2:] == [fleet.follower.pointer]  # unchanged: the artifact is not read again


@pytest.mark.parametrize(
    ("spoil", "reason", "says"),
    [
        ("pointer-garbage", "invalid", "not an in-force pointer"),
        ("artifact-missing", "unreadable", "is not in the store"),
        ("artifact-cut", "invalid", "not a classifier's JSON"),
        ("artifact-renamed", "invalid", "the file was replaced"),
        ("other-tiers", "tiers", "not the policy's simple, medium, complex"),
    ],
)
def test_what_cannot_be_used_leaves_the_last_good_classifier(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    spoil: str,
    reason: str,
    says: str,
) -> None:
    fleet = Fleet(tmp_path)
    fleet.point(fleet.store(CAPITAL))
    assert fleet.poll()
    if spoil == "pointer-garbage":
        replace(tmp_path / fleet.follower.pointer, b'{"schema": "something else"}')
    elif spoil == "artifact-missing":
        fleet.point("sha256:" + "ab" * 32)
    elif spoil == "artifact-cut":
        fleet.point(fleet.store(DRAFT[:-30], named="sha256:" + "cd" * 32))
    elif spoil == "artifact-renamed":  # DRAFT's bytes under another hash's name
        fleet.point(fleet.store(DRAFT, named="sha256:" + "ef" * 32))
    else:
        fleet.point(fleet.store(classifier({"capital": 1}, tiers=("small", "large"))))
    with caplog.at_level(logging.WARNING):
        assert not fleet.poll()
        assert not fleet.poll()  # the same problem again: said once
    assert fleet.in_force == content_hash(CAPITAL)
    (warning,) = warnings(caplog)
    assert says in warning and "keeping the learned classifier" in warning
    assert fleet.failures == [reason]
    assert fleet.follower.error is not None
    # Mended: the next good pointer is taken, and the problem is gone.
    fleet.point(fleet.store(DRAFT))
    assert fleet.poll()
    assert fleet.in_force == content_hash(DRAFT) and fleet.follower.error is None


def test_a_store_that_cannot_be_read_changes_no_routing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet(tmp_path / "store")
    fleet.point(fleet.store(CAPITAL))
    assert fleet.poll()
    (tmp_path / "store").rename(tmp_path / "moved")
    (tmp_path / "store").write_text("not a directory")  # reading under it fails, not "absent"
    with caplog.at_level(logging.WARNING):
        assert not fleet.poll()
    assert fleet.in_force == content_hash(CAPITAL)
    assert fleet.failures == ["unreadable"]
    assert "cannot read" in warnings(caplog)[0]
