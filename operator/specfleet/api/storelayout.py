"""Where the router's learning loop keeps its state in a policy's capture store.

Under the policy's root (``specfleet.capturestore.root``: ``PREFIX/NAMESPACE/routingpolicy/
NAME``), beside its captured batches and its labels (``specfleet.learn.labelstore``):

- ``learning/cursor.json``: how far ``specfleet router learn`` has read the captured batches,
  and how many labels the last training saw (``CURSOR_SCHEMA``; see
  ``specfleet.learn.router_learn``);
- ``learning/classifiers/sha256-HEX.json``: a trained classifier's artifact (the file
  ``specfleet.routing.learned`` loads), named by its own content hash, so the same artifact is
  kept once and a name says what its bytes must hash to;
- ``learning/decisions/TIME-VERDICT-HEX16.json``: one promotion decision each
  (``specfleet.learn.promotion.as_json``; TIME in UTC to the microsecond, VERDICT ``promote``
  or ``refuse``, HEX16 the first 16 hex digits of the candidate's hash), oldest first by name;
- ``learning/in-force.json``: the classifier in force (``IN_FORCE_SCHEMA``: its content hash
  and the applied decision that put it there). Absent: the policy's heuristic.

None of these names is a batch's (``specfleet.api.capture.BatchKey``), so ``specfleet capture``
and retention pass them by, as they do labels. The layout is the contract between the learning
Job that writes it and the routers that follow the in-force pointer
(``specfleet_runtime.router.inforce``), hence in the core. Pure: names in, names out, and
``pointed`` to read a pointer's content.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

FOLDER = "learning"
CURSOR_SCHEMA = "specfleet.dev/router-learn-cursor/v1"
IN_FORCE_SCHEMA = "specfleet.dev/router-in-force/v1"

_HASH = re.compile(r"^sha256:(?P<hex>[0-9a-f]{64})$")
_CLASSIFIER = re.compile(r"/classifiers/sha256-(?P<hex>[0-9a-f]{64})\.json$")


def cursor(root: str) -> str:
    return f"{root}/{FOLDER}/cursor.json"


def in_force(root: str) -> str:
    return f"{root}/{FOLDER}/in-force.json"


def classifiers(root: str) -> str:
    """The folder of stored artifacts."""
    return f"{root}/{FOLDER}/classifiers"


def decisions(root: str) -> str:
    """The folder of decision records."""
    return f"{root}/{FOLDER}/decisions"


def is_content_hash(text: str) -> bool:
    """Whether ``text`` is a classifier's content hash, ``sha256:`` and 64 hex digits."""
    return _HASH.match(text) is not None


def classifier(root: str, content_hash: str) -> str:
    """The artifact's name for ``content_hash`` (``sha256:HEX``); raises ValueError for
    anything else."""
    found = _HASH.match(content_hash)
    if found is None:
        raise ValueError(f"{content_hash!r} is not a content hash (sha256: and 64 hex digits)")
    return f"{classifiers(root)}/sha256-{found['hex']}.json"


def hash_of(path: str) -> str | None:
    """The content hash a stored artifact's name says it has; None for another name."""
    found = _CLASSIFIER.search(path)
    return None if found is None else f"sha256:{found['hex']}"


def decision(root: str, time: datetime, verdict: str, content_hash: str) -> str:
    """A decision's name: when it was made, its verdict and its candidate."""
    short = content_hash.removeprefix("sha256:")[:16]
    return (
        f"{decisions(root)}/{time.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{verdict.lower()}-{short}.json"
    )


def pointed(found: object, path: str, root: str) -> str:
    """The content hash an in-force pointer's JSON (``found``, read from ``path``) names;
    raises ValueError saying what is wrong and where to look."""
    named = found.get("classifier") if isinstance(found, dict) else None
    if (
        not isinstance(found, dict)
        or found.get("schema") != IN_FORCE_SCHEMA
        or not isinstance(named, str)
        or not is_content_hash(named)
    ):
        raise ValueError(
            f"{path}: not an in-force pointer ({IN_FORCE_SCHEMA} naming a content hash): the "
            f"latest applied decision under {decisions(root)}/ says which classifier it put in "
            "force"
        )
    return named
