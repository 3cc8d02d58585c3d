"""What `spec.capture` adds to the objects of a RoutingPolicy (the router captures) or an
InferenceModel (its gates capture): the capture file the pods read, their environment and
volume, and the CronJob that enforces retention.

- The file (`configuration`, a `specfleet.api.capture.CaptureConfig`) names the resource and
  the component, the sample rate, what to keep, the redaction patterns and where the store is.
  It holds no credential.
- The pods get the credentials from the Secrets the spec names, as environment variables
  (`env`), and the pod's own name (records say which pod wrote them); a PVC store is mounted
  at `VOLUME_DIR` (`volumes`).
- `retention_cron_job` runs `specfleet capture retain` hourly in the runtime image with the
  same file, credentials and volume; it prints its report as the pod's termination message,
  which the operator reads into status (`specfleet.reconcile.capture`). Its pods carry no
  selector label of the resource, so no Service or Deployment ever counts them as its own.

Pure. Called by `specfleet.render.routingpolicy` and `specfleet.render.inferencemodel`.
"""

from __future__ import annotations

import yaml

from specfleet.api import labels
from specfleet.api.capture import (
    HASH_KEY_ENV,
    KINDS,
    S3_CREDENTIAL_ENV,
    CaptureConfig,
    CaptureSource,
    CaptureSpec,
    S3Location,
    StoreLocation,
)
from specfleet.api.manifests import Manifest

CONFIG_KEY = "capture.yaml"
"""The ConfigMap key, and file name, of the capture file (beside the component's own)."""
VOLUME_DIR = "/var/lib/specfleet/capture"
"""Where a PVC store is mounted in the pods that write or prune it."""
WRITER_MEMORY_MIB = 96
"""What a capturing serving process's writer process (``specfleet_runtime.capture.child``) adds
to the memory its container needs: about 55 MiB resident with a directory store, 76 with
boto3's S3 client (in the demo's router pod), and room to build a batch."""
POD_NAME_ENV = "POD_NAME"
RETENTION_SCHEDULE = "17 * * * *"
"""Hourly, off the hour (when every other hourly job starts)."""
RETENTION_COMPONENT = "capture-retention"
CAPTURE_OF = "specfleet.dev/capture-of"
"""On a retention Job's pods: `<kind>.<name>` of the resource whose records it prunes."""


def configuration(
    spec: CaptureSpec, kind: str, namespace: str | None, name: str, component: str
) -> CaptureConfig:
    """The capture file of one component of one resource."""
    s3 = spec.store.s3
    if s3 is not None:
        store = StoreLocation(
            s3=S3Location(
                bucket=s3.bucket, prefix=s3.prefix, endpoint=s3.endpoint, region=s3.region
            )
        )
    else:
        assert spec.store.pvc is not None  # Store's rule: exactly one
        prefix = spec.store.pvc.prefix
        store = StoreLocation(directory=f"{VOLUME_DIR}/{prefix}" if prefix else VOLUME_DIR)
    source = CaptureSource.model_validate(
        {"kind": kind, "namespace": namespace or "default", "name": name, "component": component}
    )
    return CaptureConfig(
        source=source,
        sample_rate=spec.sample_rate,
        keep=spec.keep,
        store=store,
        patterns=spec.redaction.patterns,
        max_record_bytes=spec.max_record_bytes,
        queue_records=spec.queue_records,
    )


def text(config: CaptureConfig) -> str:
    """The capture file, YAML."""
    body = config.model_dump(by_alias=True, exclude_none=True, mode="json")
    return yaml.safe_dump(body, sort_keys=False, width=100)


def env(spec: CaptureSpec) -> list[Manifest]:
    """The capturing container's environment: its pod's name, and the Secrets' values."""
    found: list[Manifest] = [
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]
    s3 = spec.store.s3
    if s3 is not None and s3.credentials_secret is not None:
        found += [
            {
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": s3.credentials_secret, "key": variable}},
            }
            for variable in S3_CREDENTIAL_ENV
        ]
    hash_key = spec.redaction.hash_key_secret
    if hash_key is not None:
        found.append(
            {
                "name": HASH_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": hash_key.name, "key": hash_key.key}},
            }
        )
    return found


def volumes(spec: CaptureSpec) -> tuple[list[Manifest], list[Manifest]]:
    """The mounts and volumes a PVC store needs (none for S3)."""
    pvc = spec.store.pvc
    if pvc is None:
        return [], []
    return (
        [{"name": "capture", "mountPath": VOLUME_DIR}],
        [{"name": "capture", "persistentVolumeClaim": {"claimName": pvc.claim_name}}],
    )


def retention_name(name: str) -> str:
    return f"{name}-retention"


def retention_pods(kind: str, name: str) -> dict[str, str]:
    """The label selector of the retention Jobs' pods of one resource."""
    return {labels.COMPONENT: RETENTION_COMPONENT, CAPTURE_OF: f"{KINDS[kind]}.{name}"}


def retention_cron_job(
    spec: CaptureSpec,
    kind: str,
    metadata: Manifest,
    config_map: str,
    image: str,
    placement: Manifest | None = None,
) -> Manifest:
    """The CronJob that prunes the resource's records older than `spec.retention` every hour.
    `metadata` is the resource's children's (name, labels, owner); `config_map` holds the
    capture file under `CONFIG_KEY`; `placement` is the pods' nodeSelector and tolerations
    (a RoutingPolicy's routers'; none for a model's, which need no GPU)."""
    mounts, pvc_volumes = volumes(spec)
    config_dir = "/etc/specfleet/capture"
    name = metadata["name"]
    pod_labels = {
        labels.NAME: "specfleet-capture-retention",
        labels.INSTANCE: name,
        labels.PART_OF: labels.MANAGER,
        labels.MANAGED_BY: labels.MANAGER,
        **retention_pods(kind, name),
    }
    container = {
        "name": "retain",
        "image": image,
        "command": [
            "specfleet",
            "capture",
            "retain",
            "--store-config",
            f"{config_dir}/{CONFIG_KEY}",
            "--retention",
            str(spec.retention),
        ],
        "env": [e for e in env(spec) if e["name"] in S3_CREDENTIAL_ENV],
        "volumeMounts": [
            {"name": "config", "mountPath": config_dir, "readOnly": True},
            *mounts,
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": CONTAINER_SECURITY,
        # The report (one JSON line) is what status reads.
        "terminationMessagePolicy": "File",
    }
    return store_cron_job(
        {**metadata, "name": retention_name(name)},
        RETENTION_SCHEDULE,
        pod_labels,
        container,
        [{"name": "config", "configMap": {"name": config_map}}, *pvc_volumes],
        placement,
        backoff_limit=2,
        deadline_seconds=3000,
    )


CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}
"""The container security context of the Jobs that read and write the store."""


def store_cron_job(
    metadata: Manifest,
    schedule: str,
    pod_labels: dict[str, str],
    container: Manifest,
    volumes: list[Manifest],
    placement: Manifest | None,
    *,
    backoff_limit: int,
    deadline_seconds: int,
) -> Manifest:
    """A CronJob of one Job at a time whose pod runs `container` as an unprivileged user
    without the Kubernetes API (retention's, and a policy's learning): what the two share."""
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata,
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": backoff_limit,
                    "activeDeadlineSeconds": deadline_seconds,
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "restartPolicy": "Never",
                            "automountServiceAccountToken": False,
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 1000,
                                "runAsGroup": 1000,
                                "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "containers": [container],
                            **(placement or {}),
                            "volumes": volumes,
                        },
                    },
                }
            },
        },
    }


def memory(mebibytes: int, spec: CaptureSpec | None, processes: int = 1) -> str:
    """The memory quantity of a container of ``processes`` serving processes that each need
    ``mebibytes``, and a writer process each when ``spec`` captures; written as the API server
    writes it back ("1Gi", not "1024Mi"), so the live object holds the rendering."""
    total = processes * (mebibytes + (WRITER_MEMORY_MIB if spec is not None else 0))
    return f"{total // 1024}Gi" if total % 1024 == 0 else f"{total}Mi"
