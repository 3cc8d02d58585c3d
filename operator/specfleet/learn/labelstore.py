"""A policy's labelled requests, kept in its capture store beside its captured records.

Under the policy's root in the store (``specfleet.capturestore.root``: ``PREFIX/NAMESPACE/
routingpolicy/NAME``), each import is one gzipped JSON-lines object, ``labels/imported-TIME-
SHA-LINES.jsonl.gz`` (TIME in UTC to the microsecond, SHA the first 16 hex digits of the
labels' SHA-256, LINES how many), holding the canonical accepted lines
(``specfleet.learn.labels``). The name holds the content's hash, so importing the same labels
twice keeps one copy. Captured batches are named otherwise, so ``specfleet capture`` and
retention pass labels by: they stay until someone deletes them.

``write`` into a directory store that is not there yet (a fresh volume) makes the directories
it needs. ``export`` reads every import back, oldest first, line by line. Called by
``specfleet router labels``; the store's I/O is ``specfleet.capturestore``'s.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from datetime import UTC, datetime

from specfleet import capturestore
from specfleet.learn import labels

FOLDER = "labels"
_NAME = re.compile(r"/labels/imported-\d{8}T\d{12}Z-(?P<sha>[0-9a-f]{16})-\d+\.jsonl\.gz$")


def imports(store: capturestore.Store, root: str) -> list[str]:
    """The paths of the imported label files under ``root``, oldest first."""
    found = [path for path, _ in store.objects(f"{root}/{FOLDER}") if _NAME.search(path)]
    return sorted(found, key=lambda path: (path.rsplit("/", 1)[-1], path))


def write(
    store: capturestore.Store, root: str, data: labels.LabelSet, now: datetime
) -> tuple[str, bool]:
    """Keep ``data``'s lines under ``root``: (the path, whether it was written; False when the
    same labels were imported before)."""
    digest = data.sha256()[:16]
    for path in [] if _unwritten(store) else imports(store, root):
        match = _NAME.search(path)
        if match is not None and match["sha"] == digest:
            return path, False
    written = now.astimezone(UTC)
    count = len(data.examples)
    name = f"{root}/{FOLDER}/imported-{written:%Y%m%dT%H%M%S%fZ}-{digest}-{count}.jsonl.gz"
    # mtime=0: the same labels make the same bytes.
    store.put(name, gzip.compress(labels.as_lines(data.examples), mtime=0))
    return name, True


def _unwritten(store: capturestore.Store) -> bool:
    """Whether ``store`` is a directory not made yet (a fresh volume, which readers refuse as
    not mounted): nothing is imported there, and ``put`` makes the directories it needs, as
    the pods' capture writer does."""
    return isinstance(store, capturestore.DirectoryStore) and not store.directory.exists()


def export(store: capturestore.Store, root: str) -> Iterator[bytes]:
    """Every stored line (without its newline), oldest import first."""
    for path in imports(store, root):
        raw = store.open(path)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                for line in unzipped:
                    stripped = line.rstrip(b"\r\n")
                    if stripped:
                        yield stripped
        except (OSError, EOFError) as exc:
            raise capturestore.CaptureError(f"{path} is not a complete gzip file: {exc}") from exc
        finally:
            raw.close()
