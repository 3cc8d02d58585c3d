"""The Kubernetes objects that serve one RoutingPolicy: the router and its configuration.

For a policy and what is known of the InferenceModels it names: a ConfigMap holding the
router's configuration file (the format is `specfleet.api.routerconfig`, whose pydantic
model builds and checks it here, so the operator cannot render a file the router refuses), a
Deployment running `specfleet-router` with that file mounted, and a Service in front of it.

Each model a tier or override names becomes a backend: the URL of its Service (the gates) and
whether its InferenceModel is Ready. Readiness lives only in the ConfigMap, which the router
rereads without a restart; the Deployment's pod template depends on the spec alone, so a model
turning Ready or going away never rolls the routers.

Pure: the same inputs give the same manifests. Called by `specfleet.reconcile.routingpolicy`
(with what the operator observed) and by `specfleet render` (offline, with `models=None`:
readiness is unknown there, so every backend is written as not ready, with a message and a
comment in the file saying so; the operator fills it in once the policy is applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from specfleet.api import labels, routerconfig
from specfleet.api.capture import CaptureConfig
from specfleet.api.manifests import Manifest
from specfleet.api.routingpolicy import Placement, RoutingPolicy
from specfleet.config import Config
from specfleet.render import capture, learning
from specfleet.render.inferencemodel import SERVICE_PORT, Owner

ROUTER_PORT = 8080
"""The port the router serves clients (and its /metrics) on inside the pod."""
CONFIG_DIR = "/etc/specfleet/router"
CONFIG_KEY = "config.yaml"
"""The ConfigMap key, and file name in CONFIG_DIR, of the router's configuration."""
API_KEYS_DIR = "/etc/specfleet/api-keys"
"""Where the Secret named by spec.apiKeys is mounted, one file per key."""
PROBE_PERIOD_SECONDS = 10


@dataclass(frozen=True)
class ModelState:
    """What the operator knows of one InferenceModel a policy names."""

    ready: bool
    """Whether its Ready condition is True."""
    message: str = ""
    """Its Ready condition's message, for status when it is not ready."""
    served_model_name: str | None = None
    """spec.servedModelName, when set: what its backends expect in `model`."""


@dataclass(frozen=True)
class Backend:
    """Where one tier's (or override's) requests go, as rendered and reported in status."""

    tier: str
    """The tier's name, or `overrides[i]` for an override."""
    model: str
    url: str | None
    ready: bool
    message: str


def config_name(name: str) -> str:
    return f"{name}-router"


def selector(name: str) -> dict[str, str]:
    """The label selector of a policy's router pods (immutable once created)."""
    return {labels.ROUTING_POLICY: name}


def object_labels(name: str) -> dict[str, str]:
    return {
        labels.NAME: "specfleet-router",
        labels.INSTANCE: name,
        labels.COMPONENT: "router",
        labels.PART_OF: labels.MANAGER,
        labels.MANAGED_BY: labels.MANAGER,
        labels.ROUTING_POLICY: name,
    }


def service_url(name: str, namespace: str | None, port: int) -> str:
    """A Service's in-cluster URL; without a namespace (offline, a manifest that names none),
    the short name, which resolves from the same namespace."""
    host = f"{name}.{namespace}.svc" if namespace else name
    return f"http://{host}:{port}"


def endpoint(policy: RoutingPolicy) -> str:
    """The router's in-cluster URL: what clients of the policy connect to."""
    return service_url(policy.metadata.name, policy.metadata.namespace, policy.spec.service.port)


def backends(policy: RoutingPolicy, models: Mapping[str, ModelState] | None) -> list[Backend]:
    """One entry per tier, then per override, with its model's Service and readiness.
    `models` holds the InferenceModels of the policy's namespace that exist; None: unknown
    (offline)."""
    namespace = policy.metadata.namespace
    named = [(t.name, t.model) for t in policy.spec.tiers]
    named += [(f"overrides[{i}]", o.model) for i, o in enumerate(policy.spec.overrides)]
    result = []
    for tier, model in named:
        url = service_url(model, namespace, SERVICE_PORT)
        where = f"tier {tier}" if not tier.startswith("overrides[") else tier
        state = models.get(model) if models is not None else None
        if models is None:
            message = f"{where}: readiness of InferenceModel {model} is known only in the cluster"
            result.append(Backend(tier, model, url, False, message))
        elif state is None:
            message = f"{where}: InferenceModel {model} not found in namespace {namespace}"
            result.append(Backend(tier, model, None, False, message))
        elif not state.ready:
            why = f": {state.message}" if state.message else ""
            message = f"{where}: InferenceModel {model} is not Ready{why}"
            result.append(Backend(tier, model, url, False, message))
        else:
            result.append(Backend(tier, model, url, True, ""))
    return result


def configuration(
    policy: RoutingPolicy, models: Mapping[str, ModelState] | None
) -> routerconfig.RouterConfig:
    """The router's configuration: the spec's routing copied across, the backends resolved."""
    spec = policy.spec
    resolved: dict[str, routerconfig.Backend] = {}
    for backend in backends(policy, models):
        state = (models or {}).get(backend.model)
        resolved[backend.model] = routerconfig.Backend(
            url=backend.url,
            ready=backend.ready,
            served_model_name=state.served_model_name if state else None,
        )
    return routerconfig.RouterConfig(
        policy=policy.metadata.name,
        tiers=spec.tiers,
        overrides=spec.overrides,
        # A policy that learns routes with what its learning loop put in force.
        classifier=(
            spec.classifier
            if spec.learning is None
            else routerconfig.InForceClassifier(in_force=routerconfig.StorePolling())
        ),
        fallback=spec.fallback,
        timeouts=spec.timeouts,
        backends=resolved,
        api_keys_file=API_KEYS_DIR if spec.api_keys is not None else None,
        capture=capture_configuration(policy),
    )


def capture_configuration(policy: RoutingPolicy) -> CaptureConfig | None:
    """The router's capture file, when the policy captures."""
    if policy.spec.capture is None:
        return None
    metadata = policy.metadata
    return capture.configuration(
        policy.spec.capture, "RoutingPolicy", metadata.namespace, metadata.name, "router"
    )


def config_text(policy: RoutingPolicy, models: Mapping[str, ModelState] | None) -> str:
    """The configuration file, YAML, with a comment saying where it comes from."""
    body = configuration(policy, models).model_dump(by_alias=True, exclude_none=True, mode="json")
    if models is None:
        header = (
            "# Rendered offline (specfleet render): whether each InferenceModel is Ready is\n"
            "# known only in the cluster, so every backend is listed as not ready. The operator\n"
            "# rewrites this file from the live InferenceModels once the policy is applied.\n"
        )
    else:
        header = (
            f"# Rendered by the specfleet operator from RoutingPolicy {policy.metadata.name} and\n"
            "# the InferenceModels it names; edits are put back on the next pass.\n"
        )
    return header + yaml.safe_dump(body, sort_keys=False, width=100)


def _metadata(policy: RoutingPolicy, name: str, owner: Owner | None) -> Manifest:
    metadata: Manifest = {"name": name, "labels": object_labels(policy.metadata.name)}
    if policy.metadata.namespace:
        metadata["namespace"] = policy.metadata.namespace
    if owner is not None:
        metadata["ownerReferences"] = [owner.reference()]
    return metadata


def config_map(
    policy: RoutingPolicy, models: Mapping[str, ModelState] | None, owner: Owner | None = None
) -> Manifest:
    """The router's configuration file; the only object that changes with backend readiness.
    When the policy captures, the capture file too, for the retention CronJob; when it learns,
    the policy itself, for the learning CronJob."""
    data = {CONFIG_KEY: config_text(policy, models)}
    captured = capture_configuration(policy)
    if captured is not None:
        data[capture.CONFIG_KEY] = capture.text(captured)
    if policy.spec.learning is not None:
        data[learning.POLICY_KEY] = learning.policy_text(policy)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(policy, config_name(policy.metadata.name), owner),
        "data": data,
    }


def _probe(period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _cpu(millicores: int) -> str:
    """A CPU quantity as the API server writes it back ("1", not "1000m"), so the live object
    holds the rendering and a resync finds nothing to write."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def deployment(policy: RoutingPolicy, config: Config, owner: Owner | None = None) -> Manifest:
    """The routers: stateless, rolled with a surge so one always serves. Depends on the spec
    only (see the module docstring)."""
    name = policy.metadata.name
    command = [
        "specfleet-router",
        "--config",
        f"{CONFIG_DIR}/{CONFIG_KEY}",
        "--host",
        "0.0.0.0",
        "--port",
        str(ROUTER_PORT),
    ]
    mounts: list[Manifest] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    volumes: list[Manifest] = [{"name": "config", "configMap": {"name": config_name(name)}}]
    workers = policy.spec.workers
    if workers > 1:
        command += ["--workers", str(workers)]
        # The workers add up their metrics in files (the root filesystem is read-only).
        mounts.append({"name": "tmp", "mountPath": "/tmp"})
        volumes.append({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}})
    if policy.spec.api_keys is not None:
        # Mounted as a directory (not subPath), so a rotated key reaches the router.
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        volumes.append(
            {"name": "api-keys", "secret": {"secretName": policy.spec.api_keys.secret_name}}
        )
    pod_security: Manifest = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    env: list[Manifest] = []
    if policy.spec.capture is not None:
        env = capture.env(policy.spec.capture)
        capture_mounts, capture_volumes = capture.volumes(policy.spec.capture)
        mounts += capture_mounts
        volumes += capture_volumes
        if capture_volumes:
            pod_security["fsGroup"] = 1000  # the claim's files are the router's to write
    router: Manifest = {
        "name": "router",
        "image": config.runtime_image,
        "command": command,
        "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
        "readinessProbe": _probe(5, 3),
        "livenessProbe": _probe(PROBE_PERIOD_SECONDS, 6),
        "resources": {
            "requests": {
                "cpu": _cpu(500 * workers),
                "memory": capture.memory(128, policy.spec.capture, workers),
            },
            "limits": {"memory": capture.memory(512, policy.spec.capture, workers)},
        },
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    if env:
        router["env"] = env
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(policy, name, owner),
        "spec": {
            "replicas": policy.spec.replicas,
            "selector": {"matchLabels": selector(name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": object_labels(name)},
                "spec": {
                    # The router needs nothing from the Kubernetes API.
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security,
                    # Streams in flight get time to finish after the router stops accepting.
                    "terminationGracePeriodSeconds": 60,
                    "containers": [router],
                    "volumes": volumes,
                    **_placement(policy.spec.placement),
                },
            },
        },
    }


def _placement(placement: Placement) -> Manifest:
    """The pod spec's nodeSelector and tolerations, each only when set."""
    found: Manifest = {}
    if placement.node_selector:
        found["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        found["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in placement.tolerations
        ]
    return found


def service(policy: RoutingPolicy, owner: Owner | None = None) -> Manifest:
    """The policy's endpoint (spec.service) in front of the routers."""
    name = policy.metadata.name
    port = policy.spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(policy, name, owner),
        "spec": {
            "type": port.type,
            "selector": selector(name),
            "ports": [{"name": "http", "port": port.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def manifests(
    policy: RoutingPolicy,
    config: Config,
    models: Mapping[str, ModelState] | None,
    owner: Owner | None = None,
) -> list[Manifest]:
    """Every object of one RoutingPolicy, ConfigMap first (the pods mount it), the retention
    CronJob when it captures, and the learning CronJob when it learns."""
    found = [
        config_map(policy, models, owner),
        deployment(policy, config, owner),
        service(policy, owner),
    ]
    if policy.spec.capture is not None:
        name = policy.metadata.name
        found.append(
            capture.retention_cron_job(
                policy.spec.capture,
                "RoutingPolicy",
                _metadata(policy, name, owner),
                config_name(name),
                config.runtime_image,
                _placement(policy.spec.placement),
            )
        )
    if policy.spec.learning is not None:
        found.append(learning_cron_job(policy, config, owner))
    return found


def learning_cron_job(policy: RoutingPolicy, config: Config, owner: Owner | None) -> Manifest:
    """The learning CronJob, asking each tier's model and the judge through their Services
    (whether they are Ready or not: the Job counts a server's errors, and the CronJob does not
    change with readiness)."""
    namespace, name = policy.metadata.namespace, policy.metadata.name
    assert policy.spec.learning is not None
    judge = policy.spec.learning.judge.model
    return learning.cron_job(
        policy,
        _metadata(policy, name, owner),
        config_name(name),
        config.learn_image,
        {t.name: service_url(t.model, namespace, SERVICE_PORT) for t in policy.spec.tiers},
        None if judge is None else service_url(judge, namespace, SERVICE_PORT),
        _placement(policy.spec.placement),
    )
