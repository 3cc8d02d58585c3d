"""specfleet's API client against the real API server: what it makes of the answers the
operator must tell apart."""

from __future__ import annotations

import json
import uuid
from typing import Any

import kubernetes
import pytest

from e2e import harness
from specfleet import kube

HOLD = "specfleet.dev/e2e-hold"


def test_a_namespace_being_deleted_is_told_apart_from_a_missing_permission(
    cluster: harness.Cluster,
) -> None:
    client = kube.Kube.from_kubeconfig(str(cluster.kubeconfig))
    name = f"terminating-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    held: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": name},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {**held, "metadata": {**held["metadata"], "finalizers": [HOLD]}}
    ))  # fmt: skip
    try:
        # The finalizer keeps the namespace Terminating while the test writes into it.
        cluster.kubectl("delete", "namespace", name, "--wait=false")
        harness.wait_for(
            lambda: (
                cluster.kubectl_json("get", "namespace", name)["status"]["phase"] == "Terminating"
            ),
            timeout=30,
            what=f"namespace {name} to turn Terminating",
        )
        with pytest.raises(kube.ApiError) as refused:
            client.apply({**held, "metadata": {"name": "new", "namespace": name}})
        assert refused.value.namespace_terminating and not refused.value.transient
        assert "403" in str(refused.value) and name in str(refused.value)
    finally:
        cluster.kubectl(
            "patch", "configmap", "held", "-n", name, "--type=json",
            "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False,
        )  # fmt: skip

    # A 403 that is only a missing permission is not mistaken for it.
    config = str(cluster.kubeconfig)
    nobody = kubernetes.config.new_client_from_config(config_file=config)  # type: ignore[no-untyped-call]
    nobody.set_default_header("Impersonate-User", "system:serviceaccount:default:nobody")
    with pytest.raises(kube.ApiError) as forbidden:
        kube.Kube(nobody).apply({**held, "metadata": {"name": "x", "namespace": "default"}})
    assert "403" in str(forbidden.value) and not forbidden.value.namespace_terminating
