"""The operator's own settings: images, ports and where Prometheus is.

A frozen dataclass with documented defaults; `from_env` reads overrides from SPECFLEET_*
environment variables (the Helm chart sets them). Rendering and reconciliation take a Config
rather than reading the environment themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Config:
    """Settings shared by every resource the operator manages."""

    vllm_image: str = "vllm/vllm-openai:v0.33.0"
    """The vLLM server image (SPECFLEET_VLLM_IMAGE); an InferenceModel's `image` overrides it."""
    runtime_image: str = "specfleet/runtime:0.1.0"
    """The image of the gate sidecar and the router (SPECFLEET_RUNTIME_IMAGE)."""
    learn_image: str = "specfleet/learn:0.1.0"
    """The image of a RoutingPolicy's learning Job, `specfleet router learn` with scikit-learn
    and the OpenAI SDK (SPECFLEET_LEARN_IMAGE)."""
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Where the autoscaler reads metrics (SPECFLEET_PROMETHEUS_URL); empty turns autoscaling
    off: no decisions are made or recorded."""
    gate_max_queue: int = 1024
    """Requests a gate queues beyond its limit before answering 429 (SPECFLEET_GATE_MAX_QUEUE)."""
    gate_queue_timeout_seconds: float = 60.0
    """How long a request may wait at the gate before a 503
    (SPECFLEET_GATE_QUEUE_TIMEOUT_SECONDS); a router's request waits at most its
    RoutingPolicy's timeouts.firstByteSeconds less one second, so the router hears the 503."""
    gate_first_byte_timeout_seconds: float = 300.0
    """How long a gate waits for vLLM's response headers to an admitted request before a 504
    (SPECFLEET_GATE_FIRST_BYTE_TIMEOUT_SECONDS); a whole answer's, not streamed, come with its
    end. 0: no limit."""
    resync_seconds: float = 30.0
    """How often every resource is passed over again to put back children someone changed
    (SPECFLEET_RESYNC_SECONDS). Status follows each Deployment's watch, and autoscaling
    decisions each model's own `autoscaling.interval`, without waiting for it."""
    startup_budget_seconds: int = 1800
    """How long vLLM may take to load before its container is restarted: a 70B model from a
    cold cache takes many minutes (SPECFLEET_STARTUP_BUDGET_SECONDS)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Defaults, overridden by SPECFLEET_<FIELD> variables."""
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(f"SPECFLEET_{field.name.upper()}")
            if raw is None:
                continue
            default = getattr(cls, field.name)
            try:
                values[field.name] = type(default)(raw)
            except ValueError as exc:
                raise ValueError(
                    f"SPECFLEET_{field.name.upper()}={raw!r}: expected a {type(default).__name__}"
                ) from exc
        return cls(**values)  # type: ignore[arg-type]
