"""The router learning from its own traffic, end to end: three InferenceModels of different
strength (the vllm-sim image's capability seam, `specfleet_runtime.sim.capability`; the
strongest also judges) run as real pods on the real node behind a RoutingPolicy that captures
every request into the local S3 server and learns (`spec.learning`, mode Apply). The test sends
a team's traffic through the router with the official OpenAI SDK, runs the policy's learning
CronJob now (as an on-call engineer would, `kubectl create job --from`), and checks:

- the learning Job, in the learn image, labelled the captured requests with the judge, trained
  a classifier and promoted it: the store holds the artifact under its content hash and the
  in-force pointer names it;
- the policy's status says so (the classifier in force, the labels, the decision with its
  figures), its `Learning` condition is True and a `ClassifierPromoted` Event was posted;
- the router pod loads the promoted classifier from the store without a restart, and routes
  new requests of the same team with it: they land at or above the tier the judge would give
  them far more often than the heuristic's routing did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from e2e import harness, s3, traffic
from e2e.release import Release, sim_env, small_model
from specfleet import capturestore
from specfleet.api import storelayout
from specfleet.api.capture import resource_root
from specfleet.learn import router_learn
from specfleet_runtime.sim import capability
from tests.learn import traffic as team

TIMEOUT = 300.0
POLICY = "assistant"
TIERS = {"simple": 0.3, "medium": 0.6, "complex": 1.0}
"""Each tier's model's capability: a question is answered well by a model at least as capable
as it is difficult."""
MODELS = {
    "simple": ("learn-small", "meta-llama/Llama-3.2-1B-Instruct"),
    "medium": ("learn-medium", "meta-llama/Llama-3.2-3B-Instruct"),
    "complex": ("learn-large", "meta-llama/Llama-3.1-8B-Instruct"),
}
CAPTURED = 700
"""Requests sent before learning: about a fifth are held out, and the default objective needs
119 held-out labels to judge on."""
CHECKED = 240


def expected(text: str) -> str:
    """The label the simulated judge gives: the cheapest tier that answers it well."""
    hard = capability.difficulty(text)
    return next(tier for tier, strength in TIERS.items() if strength >= hard or tier == "complex")


def quality(routed: list[traffic.Routed]) -> float:
    """The share of requests a tier served that went to a tier at or above their label."""
    order = list(TIERS)
    tiered = [r for r in routed if r.tier is not None]
    good = sum(order.index(str(r.tier)) >= order.index(expected(r.text)) for r in tiered)
    return good / len(tiered)


class Learning:
    """The chart's operator, the store's Secret, and the bucket."""

    def __init__(self, release: Release, store: s3.S3Store) -> None:
        self.release = release
        self.store = store
        self.namespace = release.namespace
        self.prefix = f"e2e/{self.namespace}"
        self.bucket = store.capture_store(self.prefix)
        """The bucket as `specfleet capture` reads it (one client for the test)."""

    def policy(self) -> dict[str, Any]:
        limits = {"simple": 0.3, "medium": 0.6}
        tiers: list[dict[str, Any]] = [
            {"name": tier, "model": MODELS[tier][0], "cost": cost}
            for tier, cost in zip(TIERS, (1, 3, 20), strict=True)
        ]
        for tier in tiers:
            if tier["name"] in limits:
                tier["when"] = {"maxComplexity": limits[tier["name"]]}
        return harness.on_the_real_node(
            {
                "apiVersion": "specfleet.dev/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": POLICY},
                "spec": {
                    "tiers": tiers,
                    "capture": {
                        "sampleRate": 1.0,
                        "store": {
                            "s3": {
                                "bucket": self.store.bucket,
                                "prefix": self.prefix,
                                "endpoint": self.store.pod_endpoint,
                                "credentialsSecret": s3.SECRET_NAME,
                            }
                        },
                    },
                    "learning": {
                        "mode": "Apply",
                        # Run by hand below; the schedule would run it on the first of January.
                        "schedule": "0 0 1 1 *",
                        "judge": {"share": 1.0, "requestsPerSecond": 50},
                        "minNewLabels": 0,
                    },
                },
            }
        )

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.release.get("rp", POLICY).get("status", {})
        return found

    def condition(self, type: str) -> dict[str, Any]:
        found = [c for c in self.status().get("conditions", []) if c["type"] == type]
        return found[0] if found else {}

    def wait(self, check: Any, what: str) -> Any:
        return harness.wait_for(
            check,
            timeout=TIMEOUT,
            what=what,
            interval=1.0,
            describe=lambda: (
                json.dumps(self.status(), indent=1) + "\n" + self.release.operator_log(30)
            ),
        )

    def stored(self, key: str) -> bool:
        """Whether the bucket holds ``key``."""
        folder = key.rsplit("/", 1)[0]
        return any(path == key for path, _ in self.bucket.objects(folder))

    def read_json(self, key: str) -> Any:
        return router_learn.read_json(self.bucket, key)

    @property
    def root(self) -> str:
        return resource_root(self.prefix, "RoutingPolicy", self.namespace, POLICY)


@pytest.fixture
def learning(crds: harness.Cluster, namespace: str, s3_store: s3.S3Store) -> Iterator[Learning]:
    release = Release(crds, namespace)
    try:
        release.install()
        release.apply(s3_store.secret_manifest(namespace))
        yield Learning(release, s3_store)
    finally:
        release.uninstall()


def _serve(learning: Learning) -> str:
    """The models and the policy applied; the router's URL once it routes to every tier."""
    learning.release.apply(
        *(
            small_model(
                name,
                architecture,
                autoscaling={"enabled": False},
                env=sim_env(time_factor=0.02, capability=TIERS[tier]),
            )
            for tier, (name, architecture) in MODELS.items()
        ),
        learning.policy(),
    )
    learning.wait(lambda: learning.condition("Ready").get("status") == "True", "the policy Ready")
    for name, _ in MODELS.values():
        learning.release.serving_pod(name)
    url = learning.release.service_url(POLICY)
    learning.wait(
        lambda: set(traffic.health(url).get("readyTiers", ())) == set(TIERS), "every tier"
    )
    return url


def test_the_router_learns_from_its_captured_traffic_and_serves_the_promoted_classifier(
    learning: Learning,
) -> None:
    url = _serve(learning)
    assert learning.condition("Learning").get("reason") == "NoPassYet"
    before = traffic.send_team(url, POLICY, team.requests(CAPTURED, seed=5))
    assert {r.classifier for r in before if r.tier is not None} == {"heuristic"}

    # Every request is in the store before the pass reads it (the router writes a batch at
    # most ten seconds after its first record).
    def captured() -> int:
        return sum(1 for _ in _records(learning))

    learning.wait(lambda: captured() >= CAPTURED, f"{CAPTURED} records in the bucket")

    learning.release.cluster.kubectl(
        "create", "job", "learn-now", f"--from=cronjob/{POLICY}-learning", "-n", learning.namespace
    )

    def promoted() -> str | None:
        found = learning.status().get("learning", {})
        in_force = found.get("inForce", "heuristic")
        return None if in_force == "heuristic" else str(in_force)

    hashed = learning.wait(promoted, "the learning pass's promotion in status")
    status = learning.status()["learning"]
    (decision,) = status["decisions"]
    assert (decision["verdict"], decision["applied"], decision["mode"]) == (
        "Promote",
        True,
        "Apply",
    ), decision
    assert decision["candidate"]["classifier"] == hashed
    assert decision["inForce"]["classifier"] == "heuristic"
    assert decision["labels"] >= 119
    assert status["labels"] >= CAPTURED * 0.9, status
    assert learning.condition("Learning")["status"] == "True"
    reasons = [e["reason"] for e in learning.release.events(POLICY)]
    assert "ClassifierPromoted" in reasons, reasons

    # The store: the artifact under its own hash, and the pointer naming it.
    assert learning.read_json(storelayout.in_force(learning.root))["classifier"] == hashed
    assert learning.stored(storelayout.classifier(learning.root, hashed))

    # The router takes it from the store, and routes the team's requests by it.
    learning.wait(
        lambda: traffic.health(url).get("classifier", {}).get("contentHash") == hashed,
        "the router serving the promoted classifier",
    )
    after = traffic.send_team(url, POLICY, team.requests(CHECKED, seed=11))
    assert {r.classifier for r in after if r.tier is not None} == {f"learned {hashed}"}
    assert quality(after) >= 0.9 > quality(before), (quality(after), quality(before))


def _records(learning: Learning) -> Iterator[bytes]:
    """The policy's captured records in the bucket, as `specfleet capture` reads them."""
    store = learning.bucket
    for line, _ in capturestore.records(store, capturestore.list_batches(store, learning.root)):
        yield line
