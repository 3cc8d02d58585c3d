"""What `spec.learning` adds to a RoutingPolicy's objects: the CronJob that runs the learning
loop, and the policy manifest it reads.

`cron_job` runs `specfleet router learn` (`specfleet.learn.router_learn`) on the spec's
schedule in the learn image, one pass at a time (`concurrencyPolicy: Forbid`): it reads what the
router captured since the last pass from the capture store, asks the tiers and the judge for
labels through the models' Services (their gates, so serving comes first, paced at
`judge.requestsPerSecond`), trains a candidate once `minNewLabels` arrived, and records the
promotion decision in the store; under `Apply` a promotion moves the store's classifier in
force, which the routers follow. It mounts the router's ConfigMap, which holds the capture file
(`specfleet.render.capture.CONFIG_KEY`: the store, no credential) and, with learning, the
policy itself (`POLICY_KEY`, written by `policy_text`: its tiers, costs and overrides are what
training and evaluation route by). It gets the store's credentials as the router does, from
the Secret the spec names, and needs nothing from the Kubernetes API.

The pass writes a compact JSON report as its termination message (a failed pass: the tail of
its log, `FallbackToLogsOnError`), which the operator reads into `status.learning`
(`specfleet.reconcile.learning`). Its pods carry no selector label of the policy, so no Service
or Deployment counts them as its own.

Pure. Called by `specfleet.render.routingpolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from specfleet.api import labels
from specfleet.api.capture import S3_CREDENTIAL_ENV
from specfleet.api.manifests import Manifest
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.render import capture

POLICY_KEY = "policy.yaml"
"""The ConfigMap key, and file name, of the policy manifest the learning Job reads."""
CONFIG_DIR = "/etc/specfleet/learning"
COMPONENT = "router-learning"
LEARNING_OF = "specfleet.dev/learning-of"
"""On a learning Job's pods: the name of the RoutingPolicy it learns for."""
DEADLINE_SECONDS = 4 * 3600
"""How long one pass may run: labelling is paced, so a large backlog takes a while; a pass cut
short keeps the labels it wrote, and the next one goes on from its cursor."""


def name(policy: str) -> str:
    """The learning CronJob's name."""
    return f"{policy}-learning"


def pods(policy: str) -> dict[str, str]:
    """The label selector of one policy's learning pods."""
    return {labels.COMPONENT: COMPONENT, LEARNING_OF: policy}


def policy_text(policy: RoutingPolicy) -> str:
    """The policy as a manifest file (`specfleet router learn --policy FILE`): its name,
    namespace and spec, no status."""
    metadata = {"name": policy.metadata.name}
    if policy.metadata.namespace:
        metadata["namespace"] = policy.metadata.namespace
    body = {
        "apiVersion": policy.api_version,
        "kind": policy.kind,
        "metadata": metadata,
        "spec": policy.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
    return yaml.safe_dump(body, sort_keys=False, width=100)


def command(
    policy: RoutingPolicy, tier_urls: Mapping[str, str], judge_url: str | None
) -> list[str]:
    """`specfleet router learn` for the policy: its files, each tier's server, the judge's
    (None: the last tier's), and the spec's pacing, objective, mode and pin."""
    learning = policy.spec.learning
    assert learning is not None
    judge, objective = learning.judge, learning.objective
    found = [
        "specfleet",
        "router",
        "learn",
        "--policy",
        f"{CONFIG_DIR}/{POLICY_KEY}",
        "--store-config",
        f"{CONFIG_DIR}/{capture.CONFIG_KEY}",
    ]
    for tier in policy.spec.tiers:
        found += ["--tier", f"{tier.name}={tier_urls[tier.name]}"]
    if judge_url is not None:
        found += ["--judge", judge_url]
    found += [
        "--sample",
        _number(judge.share),
        "--rate",
        _number(judge.requests_per_second),
        "--max-tokens",
        str(judge.max_tokens),
        "--min-new-labels",
        str(learning.min_new_labels),
        "--mode",
        learning.mode,
        "--quality-target",
        _number(objective.quality_target),
        "--quality-tolerance",
        _number(objective.quality_tolerance),
        "--cost-margin",
        _number(objective.cost_margin),
    ]
    if learning.pin is not None:
        found += ["--pin", learning.pin]
    return found


def _number(value: float) -> str:
    """A number as the spec would write it (0.1, not 0.10000000000000001)."""
    return repr(value)


def cron_job(
    policy: RoutingPolicy,
    metadata: Manifest,
    config_map: str,
    image: str,
    tier_urls: Mapping[str, str],
    judge_url: str | None,
    placement: Manifest | None = None,
) -> Manifest:
    """The CronJob of the policy's learning loop. `metadata` is the policy's children's (name,
    labels, owner); `config_map` holds the capture file and the policy; `tier_urls` each tier's
    Service; `placement` the router pods' nodeSelector and tolerations."""
    learning, spec = policy.spec.learning, policy.spec.capture
    assert learning is not None and spec is not None  # the spec's rule: learning needs capture
    mounts, pvc_volumes = capture.volumes(spec)
    owner = policy.metadata.name
    pod_labels = {
        labels.NAME: "specfleet-router-learning",
        labels.INSTANCE: owner,
        labels.PART_OF: labels.MANAGER,
        labels.MANAGED_BY: labels.MANAGER,
        **pods(owner),
    }
    container = {
        "name": "learn",
        "image": image,
        "command": command(policy, tier_urls, judge_url),
        "env": [e for e in capture.env(spec) if e["name"] in S3_CREDENTIAL_ENV],
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            # scikit-learn's and the SDK's scratch space (HOME is /tmp in the image).
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "securityContext": capture.CONTAINER_SECURITY,
        # The report (one JSON object) is what status reads; a pass that failed before
        # writing one leaves the end of its log instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return capture.store_cron_job(
        {**metadata, "name": name(owner)},
        learning.schedule,
        pod_labels,
        container,
        [
            {"name": "config", "configMap": {"name": config_map}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            *pvc_volumes,
        ],
        placement,
        # A pass that failed is not run again at once: its cursor stays, and the next
        # scheduled pass asks the same requests again.
        backoff_limit=0,
        deadline_seconds=DEADLINE_SECONDS,
    )
