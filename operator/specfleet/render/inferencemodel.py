"""The Kubernetes objects that serve one InferenceModel.

For a spec, its plan and the current batch limit: a Deployment (vLLM plus the gate sidecar on
the planned GPUs), a Service in front of the gates, the gate's ConfigMap holding the live batch
limit, and a PodDisruptionBudget. Pure: the same inputs give the same manifests, so the
operator can apply them on every pass and the API server sees no change when there is none.
Called by `reconcile` and by `specfleet render`.
"""

from __future__ import annotations

from dataclasses import dataclass

from specfleet.api import labels
from specfleet.api.crdinfo import API_VERSION
from specfleet.api.inferencemodel import InferenceModel

# Re-exported while render.routingpolicy still imports it from here.
from specfleet.api.manifests import Manifest
from specfleet.config import Config
from specfleet.plan import Plan
from specfleet.render import capture, vllm

GATE_PORT = 8080
"""The port the gate sidecar serves clients (and its own /metrics) on."""
SERVICE_PORT = 80
"""The port of the model's Service (it forwards to the gates); routers send requests here."""
GATE_CONFIG_DIR = "/etc/specfleet/gate"
LIMIT_KEY = "limit"
"""The ConfigMap key, and file name in GATE_CONFIG_DIR, that holds the batch limit."""
MODEL_CACHE_DIR = "/models"
SHM_SIZE = "16Gi"
"""Shared memory for NCCL between tensor-parallel workers."""
PROBE_PERIOD_SECONDS = 10


@dataclass(frozen=True)
class Owner:
    """The resource the objects belong to, for owner references (garbage collection)."""

    name: str
    uid: str
    kind: str = "InferenceModel"

    def reference(self) -> Manifest:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector(name: str) -> dict[str, str]:
    """The label selector of an InferenceModel's pods (immutable once created)."""
    return {labels.INFERENCE_MODEL: name}


def object_labels(name: str, component: str) -> dict[str, str]:
    return {
        labels.NAME: "vllm",
        labels.INSTANCE: name,
        labels.COMPONENT: component,
        labels.PART_OF: labels.MANAGER,
        labels.MANAGED_BY: labels.MANAGER,
        labels.INFERENCE_MODEL: name,
    }


def _metadata(model: InferenceModel, name: str, owner: Owner | None) -> Manifest:
    metadata: Manifest = {
        "name": name,
        "labels": object_labels(model.metadata.name, "model-server"),
    }
    if model.metadata.namespace:
        metadata["namespace"] = model.metadata.namespace
    if owner is not None:
        metadata["ownerReferences"] = [owner.reference()]
    return metadata


def gate_config_name(name: str) -> str:
    return f"{name}-gate"


def served_name(model: InferenceModel) -> str:
    return model.spec.served_model_name or model.metadata.name


def _probe(path: str, port: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _vllm_env(model: InferenceModel) -> list[Manifest]:
    env: list[Manifest] = [{"name": "HF_HOME", "value": MODEL_CACHE_DIR}]
    credentials = model.spec.model.credentials
    if credentials is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": credentials.name, "key": credentials.key}},
            }
        )
    env += [e.model_dump(by_alias=True, exclude_none=True) for e in model.spec.env]
    return env


def _vllm_resources(model: InferenceModel, plan: Plan) -> Manifest:
    gpus = str(plan.tensor_parallel_size)
    custom = model.spec.resources
    requests = {k: str(v) for k, v in ((custom.requests if custom else None) or {}).items()}
    limits = {k: str(v) for k, v in ((custom.limits if custom else None) or {}).items()}
    return {
        "requests": {**requests, labels.GPU_RESOURCE: gpus},
        "limits": {**limits, labels.GPU_RESOURCE: gpus},
    }


def _flags(flags: dict[str, object]) -> list[str]:
    return [part for flag, value in flags.items() for part in (flag, str(value))]


def _containers(model: InferenceModel, plan: Plan, config: Config, limit: int) -> list[Manifest]:
    spec = model.spec
    max_num_seqs = limit if spec.batching.mode == "Restart" else spec.batching.max
    startup_failures = max(1, config.startup_budget_seconds // PROBE_PERIOD_SECONDS)

    def dropped() -> Manifest:
        # A fresh object per container: shared ones become YAML anchors in `specfleet render`.
        return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    server = {
        "name": "vllm",
        "image": spec.image or config.vllm_image,
        "command": ["vllm", "serve"],
        "args": vllm.serve_args(
            spec, plan, served_name(model), max_num_seqs, vllm.schedule_ranges(spec, plan)
        ),
        "env": _vllm_env(model),
        "ports": [{"name": "vllm", "containerPort": vllm.PORT}],
        "resources": _vllm_resources(model, plan),
        "startupProbe": _probe("/health", "vllm", PROBE_PERIOD_SECONDS, startup_failures),
        "readinessProbe": _probe("/health", "vllm", 5, 3),
        "livenessProbe": _probe("/health", "vllm", 15, 6),
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": dropped(),
        # A crash's last log lines become the container's termination message, which the
        # operator quotes in status and in the CrashLooping Event (specfleet.diagnose).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    gate_flags = {
        "--upstream": f"http://127.0.0.1:{vllm.PORT}",
        "--host": "0.0.0.0",
        "--port": GATE_PORT,
        "--limit-file": f"{GATE_CONFIG_DIR}/{LIMIT_KEY}",
        "--max-queue": config.gate_max_queue,
        "--queue-timeout": config.gate_queue_timeout_seconds,
        "--first-byte-timeout": config.gate_first_byte_timeout_seconds,
    }
    gate_mounts: list[Manifest] = [
        {"name": "gate-config", "mountPath": GATE_CONFIG_DIR, "readOnly": True}
    ]
    gate_env: list[Manifest] = []
    if spec.capture is not None:
        gate_flags["--capture-config"] = f"{GATE_CONFIG_DIR}/{capture.CONFIG_KEY}"
        gate_env = capture.env(spec.capture)
        gate_mounts += capture.volumes(spec.capture)[0]
    gate: Manifest = {
        "name": "gate",
        "image": config.runtime_image,
        "command": ["specfleet-gate", *_flags(gate_flags)],
        "ports": [{"name": "http", "containerPort": GATE_PORT}],
        "readinessProbe": _probe("/health", "http", 5, 3),
        "resources": {
            "requests": {"cpu": "250m", "memory": capture.memory(128, spec.capture)},
            "limits": {"memory": capture.memory(512, spec.capture)},
        },
        "volumeMounts": gate_mounts,
        "securityContext": {**dropped(), "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if gate_env:
        gate["env"] = gate_env
    return [server, gate]


def deployment(
    model: InferenceModel, plan: Plan, config: Config, limit: int, owner: Owner | None = None
) -> Manifest:
    """vLLM and its gate on the planned GPUs, rolled one pod at a time without spare GPUs."""
    name = model.metadata.name
    spec = model.spec
    node_selector = spec.gpu.node_selector or {
        labels.GPU_PRODUCT: labels.GPU_PRODUCT_LABELS[spec.gpu.product]
    }
    tolerations = (
        [t.model_dump(by_alias=True, exclude_none=True) for t in spec.gpu.tolerations]
        if spec.gpu.tolerations is not None
        else [{"key": labels.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(model, name, owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(name)},
            # A new pod needs GPUs an old one frees: take one down first rather than needing
            # a spare node's worth of GPUs.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {
                "metadata": {"labels": object_labels(name, "model-server")},
                "spec": {
                    "nodeSelector": node_selector,
                    "tolerations": tolerations,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    # Streams in flight get time to finish after the gate stops admitting.
                    "terminationGracePeriodSeconds": 120,
                    "containers": _containers(model, plan, config, limit),
                    "volumes": [
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
                        {"name": "model-cache", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "gate-config", "configMap": {"name": gate_config_name(name)}},
                        *(capture.volumes(spec.capture)[1] if spec.capture else []),
                    ],
                },
            },
        },
    }


def service(model: InferenceModel, owner: Owner | None = None) -> Manifest:
    """The model's endpoint: every client request goes through a gate."""
    name = model.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(model, name, owner),
        "spec": {
            "selector": selector(name),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def gate_config(model: InferenceModel, limit: int, owner: Owner | None = None) -> Manifest:
    """The live batch limit the gates read (changing it restarts nothing), and the capture
    file when the model captures."""
    data = {LIMIT_KEY: str(limit)}
    if model.spec.capture is not None:
        metadata = model.metadata
        captured = capture.configuration(
            model.spec.capture, "InferenceModel", metadata.namespace, metadata.name, "gate"
        )
        data[capture.CONFIG_KEY] = capture.text(captured)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(model, gate_config_name(model.metadata.name), owner),
        "data": data,
    }


def disruption_budget(model: InferenceModel, owner: Owner | None = None) -> Manifest:
    """Voluntary evictions (node drains) take one replica at a time."""
    name = model.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(model, name, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}},
    }


def initial_limit(model: InferenceModel) -> int:
    """The batch limit before any autoscaling decision."""
    return model.spec.batching.initial or model.spec.batching.max


ROLLOUT_KINDS = frozenset({"ConfigMap", "Deployment"})
"""What a model's pods need to start: the Deployment, and the gate's ConfigMap they mount."""


def manifests(
    model: InferenceModel,
    plan: Plan,
    config: Config,
    limit: int | None = None,
    owner: Owner | None = None,
) -> list[Manifest]:
    """Every object of one InferenceModel, ConfigMap first (the pods mount it), and the
    retention CronJob when it captures."""
    current = limit if limit is not None else initial_limit(model)
    found = [
        gate_config(model, current, owner),
        deployment(model, plan, config, current, owner),
        service(model, owner),
        disruption_budget(model, owner),
    ]
    if model.spec.capture is not None:
        name = model.metadata.name
        found.append(
            capture.retention_cron_job(
                model.spec.capture,
                "InferenceModel",
                _metadata(model, name, owner),
                gate_config_name(name),
                config.runtime_image,
            )
        )
    return found
