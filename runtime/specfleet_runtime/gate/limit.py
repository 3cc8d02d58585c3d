"""The gate's limit file: its format, and a poller that notices when the operator changes it.

The operator writes the live batch limit into the gate's ConfigMap; the pod mounts that key as a
file, passed to ``specfleet-gate --limit-file``. Accepted contents (YAML, so JSON works too):

    64                 # just the integer
    {"limit": 64}      # JSON object with a "limit" key
    limit: 64          # YAML mapping with a "limit" key

The limit must be an integer of at least 1.

``LimitFile`` rereads the file on every tick (``specfleet_runtime.watched``: a ConfigMap update
swaps a symlink that inotify would miss), and the gate ticks every ``POLL_INTERVAL`` seconds. A
file that is missing or invalid keeps the last good limit and is reported once per distinct
problem, not every tick.

Called by ``specfleet_runtime.gate.app`` (the polling task) and by tests directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import yaml

from specfleet_runtime import watched

# Well inside the one second within which a new limit must reach waiting requests.
POLL_INTERVAL = 0.25


class LimitFileError(ValueError):
    """The text does not hold a valid limit."""


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


class LimitFile(watched.Watched[str, int]):
    """Rereads a limit file and reports the limit when its content changes."""

    keeping = "the current limit"

    def read(self) -> str:
        return watched.read_text(self.path, "limit file")

    def parse(self, content: str) -> int:
        try:
            return parse_limit(content)
        except LimitFileError as exc:
            raise watched.WatchError(f"limit file {self.path}: {exc}") from None


async def watch(limit_file: LimitFile, apply: Callable[[int], None], interval: float) -> None:
    """Poll ``limit_file`` forever, calling ``apply`` with each new limit."""
    while True:
        limit = limit_file.poll()
        if limit is not None:
            apply(limit)
        await asyncio.sleep(interval)
