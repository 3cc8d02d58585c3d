"""Capture: an opt-in, redacted, deterministic sample of the traffic the router and the gates
serve, written off the request path to a bucket or a volume (``specfleet.api.capture`` is the
configuration, the record's schema and the store's layout).

``writer.Capture`` is what the router and the gate hold; ``record.Exchange`` and
``record.RouteDecision`` what they hand it; the other modules are its parts: ``sampling``,
``redaction``, ``stream`` (SSE reassembly), ``record``, ``batches`` (records into the store),
``child`` (the writer process that does that off the serving process), ``store``, ``metrics``.
"""

from specfleet_runtime.capture.metrics import CaptureMetrics
from specfleet_runtime.capture.record import Exchange, RouteDecision
from specfleet_runtime.capture.writer import Capture, load_config, pod_name

__all__ = ["Capture", "CaptureMetrics", "Exchange", "RouteDecision", "load_config", "pod_name"]
