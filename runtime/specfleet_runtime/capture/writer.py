"""``Capture``: a component's sample of its own traffic, kept off the request path.

The request path asks ``sampled(request_id)`` before it keeps anything (the same answer in every
pod a request crosses, ``specfleet_runtime.capture.sampling``), keeps references to what it
reads and sends anyway, and hands them over with ``offer``, which never blocks and never raises:
the exchange goes on a bounded queue, or is dropped and counted (``queue_full``) when
``queue_records`` already wait.

Everything else happens on one writer thread per ``Capture``: each exchange becomes a record
line (``specfleet_runtime.capture.record``: parsed, redacted, hashed, cut to size or dropped as
``too_large``); lines collect into a batch, written when ``flush_records`` wait or
``flush_seconds`` after the first of them, gzip-compressed, under its ``BatchKey`` name in the
store (``specfleet_runtime.capture.store``). A batch the store refuses is dropped and counted
(``store_error``), with one WARNING line a minute at most; it is not retried, so a store that
is down costs no memory. ``close`` writes what waits (within a timeout) and stops the thread;
``stop`` asks the same without waiting (a reloaded configuration replaces a capture so).

The hash key is ``SPECFLEET_CAPTURE_HASH_KEY`` (``specfleet.api.capture.HASH_KEY_ENV``) when
set, else drawn at random when the capture starts. The S3 credentials are boto3's to find.
Created by the router's and the gate's apps; ``pod_name`` and ``load_config`` are their helpers.
"""

from __future__ import annotations

import collections
import gzip
import itertools
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import yaml

from specfleet.api.capture import HASH_KEY_ENV, BatchKey, CaptureConfig
from specfleet_runtime.capture import record, sampling
from specfleet_runtime.capture import store as stores
from specfleet_runtime.capture.metrics import CaptureMetrics

log = logging.getLogger(__name__)

POD_NAME_ENV = "POD_NAME"
"""The environment variable holding the pod's name (the downward API's ``metadata.name``);
unset, the host name stands in for it."""
CLOSE_TIMEOUT = 10.0
"""How long ``close`` waits for the last batch by default."""
WARNING_INTERVAL = 60.0
"""At most one WARNING line about the store per this many seconds."""

# Batch numbers are unique within a process, across the captures a reload replaces.
_batch_numbers = itertools.count()


def pod_name(environ: Mapping[str, str] = os.environ) -> str:
    """The pod's name as batch names hold it (lower case letters, digits, ``-`` and ``.``)."""
    name = environ.get(POD_NAME_ENV) or socket.gethostname()
    return re.sub(r"[^-a-z0-9.]", "-", name.lower()) or "unknown"


def load_config(path: Path) -> CaptureConfig:
    """The capture configuration in a YAML or JSON file; raises ValueError saying why not."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read capture config {path}: {exc}") from None
    try:
        return CaptureConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValueError(f"capture config {path}: {exc}") from None


def hash_key(environ: Mapping[str, str] = os.environ) -> bytes:
    """The key of the keyed hashes: the environment's, else a random one."""
    given = environ.get(HASH_KEY_ENV)
    return given.encode() if given else secrets.token_bytes(32)


class Capture:
    """One component's capture: sampling, the queue and the writer thread (started here)."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        pod: str,
        metrics: CaptureMetrics,
        environ: Mapping[str, str] = os.environ,
        store: stores.Store | None = None,
        seq_offset: int = 0,
        seq_step: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``store`` defaults to the one the configuration names (built on the writer thread).
        Batch numbers are ``seq_offset + n * seq_step``, so that processes writing under one
        pod name (the router's workers) never name two batches alike."""
        self.config = config
        self.pod = pod
        self.metrics = metrics
        self._builder = record.Builder(config, pod, hash_key(environ))
        self._root = stores.batch_root(config.store, config.source)
        self._store = store
        self._seq_offset, self._seq_step = seq_offset, seq_step
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[record.Exchange] = collections.deque()
        self._stopping = False
        self._last_warning = -WARNING_INTERVAL
        self._quiet_warnings = 0
        self._thread = threading.Thread(
            target=self._run, name=f"capture-{config.source.component}", daemon=True
        )
        self._thread.start()

    @property
    def component(self) -> str:
        return self.config.source.component

    def sampled(self, request_id: str) -> bool:
        """Whether this request is captured (the same answer in every pod it crosses)."""
        return sampling.sampled(request_id, self.config.sample_rate)

    def offer(self, exchange: record.Exchange) -> None:
        """Queue ``exchange`` to be written, or drop and count it when the queue is full.
        Never blocks on the writer and never raises; after ``stop``, nothing is taken."""
        try:
            with self._lock:
                if self._stopping:
                    return
                accepted = len(self._waiting) < self.config.queue_records
                if accepted:
                    self._waiting.append(exchange)
                    self._wake.notify()
            if accepted:
                self.metrics.queued.inc()
            else:
                self.metrics.dropped_by["queue_full"].inc()
        except Exception:  # the request path must never fail for capture's sake
            log.exception("capture: cannot queue request %s", exchange.request_id)

    @property
    def writing(self) -> bool:
        """Whether the writer thread is still running (after ``stop``: still writing)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Ask the writer to write what waits and end, without waiting for it."""
        with self._lock:
            self._stopping = True
            self._wake.notify()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Write what waits and stop the writer, waiting at most ``timeout`` seconds; whether
        it finished in time."""
        self.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("capture: the last records were not written within %g s", timeout)
            return False
        return True

    # -------------------------------------------------------------------------------------
    # The writer thread.

    def _run(self) -> None:
        store = self._store if self._store is not None else self._open_store()
        batch: list[bytes] = []
        due = 0.0
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    if batch:
                        left = due - time.monotonic()
                        if left <= 0:
                            break
                        self._wake.wait(left)
                    else:
                        self._wake.wait()
                taken = [
                    self._waiting.popleft()
                    for _ in range(min(len(self._waiting), self.config.flush_records))
                ]
                finishing = self._stopping and not self._waiting
            if taken:
                self.metrics.queued.dec(len(taken))
            for exchange in taken:
                line = self._line(exchange)
                if line is None:
                    continue
                if not batch:
                    due = time.monotonic() + self.config.flush_seconds
                batch.append(line)
                if len(batch) >= self.config.flush_records:
                    self._write(store, batch)
                    batch = []
            if batch and (finishing or time.monotonic() >= due):
                self._write(store, batch)
                batch = []
            if finishing:
                return

    def _open_store(self) -> stores.Store:
        try:
            return stores.open_store(self.config.store)
        except Exception as exc:  # boto3 refusing its configuration: every batch will fail
            return _Broken(f"cannot open the store: {exc}")

    def _line(self, exchange: record.Exchange) -> bytes | None:
        try:
            line = self._builder.line(exchange)
        except Exception:
            log.exception("capture: cannot build the record of request %s", exchange.request_id)
            self.metrics.dropped_by["record_error"].inc()
            return None
        if line is None:
            self.metrics.dropped_by["too_large"].inc()
        return line

    def _write(self, store: stores.Store, batch: list[bytes]) -> None:
        key = BatchKey(
            written=datetime.fromtimestamp(self._clock(), UTC),
            component=self.component,
            pod=self.pod,
            seq=self._seq_offset + next(_batch_numbers) * self._seq_step,
            records=len(batch),
        )
        try:
            store.put(key.name(self._root), gzip.compress(b"".join(batch)))
        except Exception as exc:  # StoreError, or a store's own bug: the batch is lost either way
            self.metrics.dropped_by["store_error"].inc(len(batch))
            self._warn(f"capture: {len(batch)} records dropped: {exc}")
        else:
            self.metrics.written.inc(len(batch))

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL:
            self._quiet_warnings += 1
            return
        if self._quiet_warnings:
            message += f" (and {self._quiet_warnings} more store failures since the last warning)"
        log.warning("%s", message)
        self._last_warning, self._quiet_warnings = now, 0


class _Broken:
    """A store that could not be opened: it refuses every batch, saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def put(self, name: str, data: bytes) -> None:
        raise stores.StoreError(self.reason)
