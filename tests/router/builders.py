"""Small builders the router's unit tests share: a three-tier configuration like the example
RoutingPolicy's, and learned classifiers for its tiers, written as the trainer writes them
(parsed requests come from ``tests.routing.builders``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from specfleet.api.routerconfig import RouterConfig
from specfleet.routing import features, learned
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


TIERS = ("simple", "medium", "complex")
"""The example's tiers."""


def classifier(
    sends: Mapping[str, int],
    tiers: Sequence[str] = TIERS,
    threshold: float = 0.5,
    intercept: float = -1.0,
) -> bytes:
    """The file of a learned classifier that sends a request holding one of ``sends``' terms to
    that term's tier (by index; the highest of several), and any other request to the first
    tier: boundary j weighs a term 10 if it sends requests above tier j, over an intercept of
    -1 (p = 0.27 with no such term, 0.9999 with one). Without ``sends``, every boundary's
    probability is the intercept's alone."""
    vocabulary = list(sends)
    boundaries = [
        {
            "intercept": intercept,
            "weights": [10.0 if sends[term] > j else 0.0 for term in vocabulary],
            "dense": [0.0] * len(features.DENSE),
        }
        for j in range(len(tiers) - 1)
    ]
    artifact = learned.Artifact.model_validate(
        {
            "tiers": list(tiers),
            "vocabulary": vocabulary,
            "boundaries": boundaries,
            "threshold": threshold,
            "qualityTarget": 0.95,
            "training": {
                "sha256": "0" * 64,
                "count": 1,
                "labels": {tiers[0]: 1},
                "sources": {"tests": 1},
            },
            "trainedAt": "2026-01-01T00:00:00Z",
        }
    )
    return learned.dumps(artifact)


def content_hash(file: bytes) -> str:
    """The content hash a classifier's file states."""
    return learned.loads(file).content_hash


def replace(path: Path, content: bytes) -> None:
    """Put ``content`` at ``path`` in one step, as a ConfigMap update does (a new file, never a
    half-written one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.new")
    staged.write_bytes(content)
    staged.replace(path)
