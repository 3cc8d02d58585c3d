"""The gate's limit file: its format, and a poller that notices when the operator changes it.

The operator writes the live batch limit into the gate's ConfigMap; the pod mounts that key as a
file, passed to ``specfleet-gate --limit-file``. Accepted contents (YAML, so JSON works too):

    64                 # just the integer
    {"limit": 64}      # JSON object with a "limit" key
    limit: 64          # YAML mapping with a "limit" key

The limit must be an integer of at least 1.

Kubernetes updates a ConfigMap volume by swapping a symlink (``..data``) to a new directory, which
inotify watches on the file itself miss; so ``LimitFile.poll`` simply rereads the file (a few
bytes) on every tick, and the gate ticks every ``POLL_INTERVAL`` seconds. A file that is missing
or invalid keeps the last good limit and is reported once per distinct problem, not every tick.

Called by ``specfleet_runtime.gate.app`` (the polling task) and by tests directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

# Well inside the one second within which a new limit must reach waiting requests.
POLL_INTERVAL = 0.25


class LimitFileError(ValueError):
    """The limit file cannot be read or does not hold a valid limit."""


def parse_limit(text: str) -> int:
    """The batch limit in a limit file's text (see the module docstring for the format)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LimitFileError(f"not YAML or JSON: {exc}") from None
    value = data.get("limit") if isinstance(data, dict) else data
    # bool is an int subclass; "true" is a typo, not a limit of 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise LimitFileError(
            f"expected an integer or a mapping with an integer 'limit', got {text.strip()!r}"
        )
    if value < 1:
        raise LimitFileError(f"the limit must be at least 1, got {value}")
    return value


class LimitFile:
    """Rereads a limit file and reports the limit when its content changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last_text: str | None = None
        self._last_error: str | None = None

    def poll(self) -> int | None:
        """The new limit if the file's content changed to a valid one since the last poll."""
        try:
            text = self.path.read_text()
        except OSError as exc:
            self._report(
                f"cannot read limit file {self.path}: {exc.strerror}; keeping the current limit"
            )
            return None
        if text == self._last_text:
            return None
        self._last_text = text
        try:
            limit = parse_limit(text)
        except LimitFileError as exc:
            self._report(f"limit file {self.path}: {exc}; keeping the current limit")
            return None
        self._last_error = None
        return limit

    def _report(self, message: str) -> None:
        if message != self._last_error:
            log.warning("%s", message)
            self._last_error = message


async def watch(limit_file: LimitFile, apply: Callable[[int], None], interval: float) -> None:
    """Poll ``limit_file`` forever, calling ``apply`` with each new limit."""
    while True:
        limit = limit_file.poll()
        if limit is not None:
            apply(limit)
        await asyncio.sleep(interval)
