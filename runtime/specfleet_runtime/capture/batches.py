"""``Batches``: captured exchanges built into record lines and written to the store in
batches, the work a capture's writer does (on its thread, or in its writer process:
``specfleet_runtime.capture.writer`` and ``specfleet_runtime.capture.child``).

Each exchange becomes a line (``specfleet_runtime.capture.record``: parsed, redacted, hashed,
cut to size, or dropped as ``too_large``; one that cannot be built is a ``record_error``); the
lines collect into a batch, written when ``flush_records`` wait or ``flush_seconds`` after the
first of them (``due``; the caller watches the clock), gzip-compressed, under its ``BatchKey``
name. A batch the store refuses is dropped and counted (``store_error``), with one WARNING line
a minute at most; it is not retried, so a store that is down costs no memory. What became of
each record goes to a ``Report``.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from specfleet.api.capture import BatchKey, CaptureConfig
from specfleet_runtime.capture import record
from specfleet_runtime.capture import store as stores
from specfleet_runtime.capture.metrics import CaptureMetrics

log = logging.getLogger(__name__)

WARNING_INTERVAL = 60.0
"""At most one WARNING line about the store per this many seconds."""

# Batch numbers are unique within a process, across the captures a reload replaces.
_batch_numbers = itertools.count()


class Report(Protocol):
    """Where the writer says what became of the records it took."""

    def written(self, records: int) -> None: ...

    def dropped(self, reason: str, records: int) -> None: ...


class MetricsReport:
    """Straight into the capture's metrics."""

    def __init__(self, metrics: CaptureMetrics) -> None:
        self.metrics = metrics

    def written(self, records: int) -> None:
        self.metrics.written.inc(records)

    def dropped(self, reason: str, records: int) -> None:
        self.metrics.dropped_by[reason].inc(records)


class Batches:
    """Exchanges built into record lines and written to ``store`` in batches: the writer's
    work, done on the capture's thread or in its writer process."""

    def __init__(
        self,
        config: CaptureConfig,
        pod: str,
        key: bytes,
        store: stores.Store,
        report: Report,
        *,
        seq_offset: int = 0,
        seq_step: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Batch numbers are ``seq_offset + n * seq_step``, so that processes writing under
        one pod name (the router's workers) never name two batches alike."""
        self.config = config
        self.pod = pod
        self._builder = record.Builder(config, pod, key)
        self._root = stores.batch_root(config.store, config.source)
        self._store = store
        self._report = report
        self._seq_offset, self._seq_step = seq_offset, seq_step
        self._clock = clock
        self._lines: list[bytes] = []
        self.due: float | None = None
        """When the batch collecting must be written (``time.monotonic``); None while empty."""
        self._last_warning = -WARNING_INTERVAL
        self._quiet_warnings = 0

    def add(self, exchange: record.Exchange) -> None:
        """``exchange``'s line into the batch, which is written once ``flush_records`` wait."""
        line = self._line(exchange)
        if line is None:
            return
        if not self._lines:
            self.due = time.monotonic() + self.config.flush_seconds
        self._lines.append(line)
        if len(self._lines) >= self.config.flush_records:
            self.flush()

    def flush(self) -> None:
        """Write the batch collecting, if any."""
        if not self._lines:
            return
        batch, self._lines, self.due = self._lines, [], None
        key = BatchKey(
            written=datetime.fromtimestamp(self._clock(), UTC),
            component=self.config.source.component,
            pod=self.pod,
            seq=self._seq_offset + next(_batch_numbers) * self._seq_step,
            records=len(batch),
        )
        try:
            # zlib's default level: half the time of gzip's 9 on record lines, 2% larger.
            data = gzip.compress(b"".join(batch), compresslevel=6)
            self._store.put(key.name(self._root), data)
        except Exception as exc:  # StoreError, or a store's own bug: the batch is lost either way
            self._report.dropped("store_error", len(batch))
            self._warn(f"capture: {len(batch)} records dropped: {exc}")
        else:
            self._report.written(len(batch))

    def _line(self, exchange: record.Exchange) -> bytes | None:
        try:
            line = self._builder.line(exchange)
        except Exception:
            log.exception("capture: cannot build the record of request %s", exchange.request_id)
            self._report.dropped("record_error", 1)
            return None
        if line is None:
            self._report.dropped("too_large", 1)
        return line

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL:
            self._quiet_warnings += 1
            return
        if self._quiet_warnings:
            message += f" (and {self._quiet_warnings} more store failures since the last warning)"
        log.warning("%s", message)
        self._last_warning, self._quiet_warnings = now, 0


def open_store(config: CaptureConfig) -> stores.Store:
    """The store the configuration names; one that refuses every batch, saying why, when it
    cannot be opened (boto3 refusing its configuration)."""
    try:
        return stores.open_store(config.store)
    except Exception as exc:
        return _Broken(f"cannot open the store: {exc}")


class _Broken:
    """A store that could not be opened: it refuses every batch, saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def put(self, name: str, data: bytes) -> None:
        raise stores.StoreError(self.reason)
