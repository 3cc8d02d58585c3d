"""``Capture``: a component's sample of its own traffic, kept off the request path.

The request path asks ``sampled(request_id)`` before it keeps anything (the same answer in every
pod a request crosses, ``specfleet_runtime.capture.sampling``), keeps references to what it
reads and sends anyway, and hands them over with ``offer``, which never blocks and never raises:
the exchange goes on a bounded queue, or is dropped and counted (``queue_full``) when
``queue_records`` already wait.

A thread per ``Capture`` takes them from the queue. Turning an exchange into a record line takes
tens of microseconds of Python, and a thread doing it holds the interpreter's lock the serving
thread needs; so with ``writer_process`` (what the router and the gate run) the thread only
hands the exchanges, as bytes, to a writer process of its own
(``specfleet_runtime.capture.child``: it builds, batches, writes and reports back what it wrote
and dropped, on CPU time serving does not want). Without it (the tests' seam, with a store
of their own) the thread does that work itself. Either way the work is
``specfleet_runtime.capture.batches``: records built, cut to size, batched and written, a batch
the store refuses dropped and counted. A writer process that falls behind fills its pipe, then
the queue, whose overflow is dropped as ``queue_full``; one that dies has the records it held
counted as ``record_error``, and the next records start another. ``close`` writes what waits
(within a timeout) and stops the thread (and its process); ``stop`` asks the same without
waiting (a reloaded configuration replaces a capture so).

The hash key is ``SPECFLEET_CAPTURE_HASH_KEY`` (``specfleet.api.capture.HASH_KEY_ENV``) when
set, else drawn at random when the capture starts. The S3 credentials are boto3's to find (the
writer process inherits the environment). Created by the router's and the gate's apps;
``pod_name`` and ``load_config`` are their helpers.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pydantic
import yaml

from specfleet.api.capture import HASH_KEY_ENV, CaptureConfig
from specfleet_runtime.capture import child, record, sampling
from specfleet_runtime.capture import store as stores
from specfleet_runtime.capture.batches import Batches, MetricsReport, open_store
from specfleet_runtime.capture.metrics import CaptureMetrics

log = logging.getLogger(__name__)

POD_NAME_ENV = "POD_NAME"
"""The environment variable holding the pod's name (the downward API's ``metadata.name``);
unset, the host name stands in for it."""
CLOSE_TIMEOUT = 10.0
"""How long ``close`` waits for the last batch by default."""
RESTART_SECONDS = 10.0
"""A writer process is started at most once per this many seconds: records that come sooner
after one died are dropped as ``record_error``."""
GATHER_SECONDS = 0.05
"""How long the thread, woken by an exchange, lets more gather before it takes them: one
wake-up per this long under load, not one per request. Each costs the serving thread a switch
of the interpreter's lock, which on a busy machine waits on the OS scheduler."""


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
    """One component's capture: sampling, the queue and its thread (started here)."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        pod: str,
        metrics: CaptureMetrics,
        environ: Mapping[str, str] = os.environ,
        writer_process: bool = False,
        store: stores.Store | None = None,
        seq_offset: int = 0,
        seq_step: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``writer_process``: build and write in a writer process rather than on the thread;
        ``store`` (the thread's only) defaults to the one the configuration names, opened where
        the writing happens. Batch numbers as ``Batches`` has them."""
        if writer_process and store is not None:
            raise ValueError("a writer process opens its own store")
        self.config = config
        self.pod = pod
        self.metrics = metrics
        self._key = hash_key(environ)
        self._store = store
        self._seq_offset, self._seq_step = seq_offset, seq_step
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[record.Exchange] = collections.deque()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._hand_over if writer_process else self._write_here,
            name=f"capture-{config.source.component}",
            daemon=True,
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
                    if len(self._waiting) == 1:  # the thread may wait for one; then it gathers
                        self._wake.notify()
            if accepted:
                self.metrics.queued.inc()
            else:
                self.metrics.dropped_by["queue_full"].inc()
        except Exception:  # the request path must never fail for capture's sake
            log.exception("capture: cannot queue request %s", exchange.request_id)

    @property
    def writing(self) -> bool:
        """Whether the thread is still running (after ``stop``: still writing)."""
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
    # The thread.

    def _take(self, most: int, due: float | None) -> tuple[list[record.Exchange], bool]:
        """Up to ``most`` exchanges once some wait, ``due`` (``time.monotonic``) passes or
        ``stop`` is asked; and whether this is the last take. Woken by an exchange, the thread
        lets more gather for ``GATHER_SECONDS`` before it takes them."""
        with self._lock:
            slept = False
            while not self._waiting and not self._stopping:
                slept = True
                if due is None:
                    self._wake.wait()
                    continue
                left = due - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            if slept and self._waiting and not self._stopping:
                self._wake.wait(GATHER_SECONDS)  # ``stop`` cuts it short
            taken = [self._waiting.popleft() for _ in range(min(len(self._waiting), most))]
            finishing = self._stopping and not self._waiting
        if taken:
            self.metrics.queued.dec(len(taken))
        return taken, finishing

    def _write_here(self) -> None:
        batches = Batches(
            self.config,
            self.pod,
            self._key,
            self._store if self._store is not None else open_store(self.config),
            MetricsReport(self.metrics),
            seq_offset=self._seq_offset,
            seq_step=self._seq_step,
            clock=self._clock,
        )
        while True:
            taken, finishing = self._take(self.config.flush_records, batches.due)
            for exchange in taken:
                batches.add(exchange)
            if batches.due is not None and (finishing or time.monotonic() >= batches.due):
                batches.flush()
            if finishing:
                return

    def _hand_over(self) -> None:
        process: child.WriterProcess | None = None
        setup = child.Setup(
            config=self.config,
            pod=self.pod,
            key=self._key.hex(),
            seq_offset=self._seq_offset,
            seq_step=self._seq_step,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        report = MetricsReport(self.metrics)
        next_start = 0.0
        while True:
            taken, finishing = self._take(self.config.queue_records, None)
            if taken:
                if process is not None and not process.running:
                    process.finish()  # counts what it lost
                    process = None
                if process is None and time.monotonic() >= next_start:
                    # One that dies at once is not restarted in a loop.
                    next_start = time.monotonic() + RESTART_SECONDS
                    try:
                        process = child.WriterProcess(setup, report)
                    except Exception:
                        log.exception("capture: cannot start a writer process")
                if process is None:
                    report.dropped("record_error", len(taken))
                else:
                    process.send(taken)
            if finishing:
                if process is not None:
                    process.finish()
                return
