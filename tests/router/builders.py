"""Small builders the router's unit tests share: a three-tier configuration like the example
RoutingPolicy's (parsed requests come from ``tests.routing.builders``)."""

from __future__ import annotations

from typing import Any

from specfleet.api.routerconfig import RouterConfig
from tests.routing.builders import POLICY


def config_data(**changes: Any) -> dict[str, Any]:
    """The example policy (simple, medium, complex; SQL to the medium model), every backend
    ready; ``changes`` replace top-level keys."""
    data: dict[str, Any] = {
        "policy": POLICY,
        "tiers": [
            {
                "name": "simple",
                "model": "small",
                "when": {"maxComplexity": 0.3, "maxExpectedTokens": 256},
                "cost": 1,
            },
            {
                "name": "medium",
                "model": "medium",
                "when": {"maxComplexity": 0.6, "maxExpectedTokens": 1024},
                "cost": 3,
            },
            {"name": "complex", "model": "large", "cost": 20},
        ],
        "overrides": [{"match": {"category": "sql"}, "model": "medium", "reason": "no draft"}],
        "backends": {
            "small": {"url": "http://small:80", "ready": True},
            "medium": {"url": "http://medium:80", "ready": True, "servedModelName": "med-8b"},
            "large": {"url": "http://large:80", "ready": True},
        },
    }
    data.update(changes)
    return data


def config(**changes: Any) -> RouterConfig:
    return RouterConfig.model_validate(config_data(**changes))


def backends(**ready: bool) -> dict[str, Any]:
    """The example's backends with the readiness of some changed."""
    result: dict[str, Any] = config_data()["backends"]
    for model, is_ready in ready.items():
        result[model] = {**result[model], "ready": is_ready}
    return result
