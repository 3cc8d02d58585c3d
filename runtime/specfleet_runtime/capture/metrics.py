"""Capture's Prometheus metrics (``specfleet_capture_*``), served beside the router's or the
gate's own on their ``/metrics``.

What an on-call engineer and the operator read: how many records reached the store, how many
did not and why (``queue_full``: the writer fell behind; ``store_error``: the store refused a
batch; ``too_large``: a record over ``maxRecordBytes`` even cut; ``record_error``: a record that
could not be built, which is a bug; ``capture_off``: a request sampled before a reload turned
the router's capture off and answered after), and how many wait to be written. They are
registered in the registry of the component that captures (one set per process, kept when a
reloaded configuration rebuilds the capture); under the router's workers the counts add up
across them as the router's do (``specfleet_runtime.router.metrics``), the queue depth too.

Called by ``specfleet_runtime.capture.writer``, created by the router's and the gate's apps.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

DROP_REASONS = ("queue_full", "store_error", "too_large", "record_error", "capture_off")


class CaptureMetrics:
    """The metric families, registered in the capturing component's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "specfleet_capture_records_written",
            "Captured records written to the store.",
            registry=registry,
        )
        self.dropped = Counter(
            "specfleet_capture_records_dropped",
            "Sampled records not written, by why (queue_full, store_error, too_large, "
            "record_error, capture_off).",
            ["reason"],
            registry=registry,
        )
        self.queued = Gauge(
            "specfleet_capture_queue_records",
            "Captured records waiting to be written.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        # Zero-valued series from the start; children looked up once, not per record.
        self.dropped_by = {reason: self.dropped.labels(reason) for reason in DROP_REASONS}
