"""The real node: pods that tolerate it run for real, Services and cluster DNS reach them, and
``down`` leaves nothing behind.

Every later claim about pods (probes, volumes, the gate reading its ConfigMap as the kubelet
updates it, RBAC on the operator's ServiceAccount) rests on these.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from typing import Any

from e2e import harness, node

SERVER_PORT = 8000


def server_pod(name: str, namespace: str, *, tolerate_real_node: bool = True) -> dict[str, Any]:
    """A simulated vLLM server from the runtime image, asking for a GPU, hardened as the
    operator's pods are: non-root, read-only root, a ConfigMap volume, an HTTP readiness probe."""
    spec: dict[str, Any] = {
        # The real node's pool when it may go there (kwok's H100s have the same product).
        "nodeSelector": (
            {harness.NODE_POOL_LABEL: node.POOL}
            if tolerate_real_node
            else {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        ),
        "tolerations": node.TOLERATIONS if tolerate_real_node else node.TOLERATIONS[1:],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
        "containers": [
            {
                "name": "server",
                "image": harness.RUNTIME_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["specfleet-sim", "--host", "0.0.0.0", "--port", str(SERVER_PORT)],
                "args": ["--model", "/etc/served/name"],
                "ports": [{"name": "http", "containerPort": SERVER_PORT}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi", "nvidia.com/gpu": "1"},
                    "limits": {"memory": "256Mi", "nvidia.com/gpu": "1"},
                },
                "securityContext": {
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "served", "mountPath": "/etc/served"}],
            }
        ],
        "volumes": [{"name": "served", "configMap": {"name": name}}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": spec,
    }


def client_pod(name: str, namespace: str, script: str) -> dict[str, Any]:
    """A pod that runs ``script`` with the runtime image's Python once and exits."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "tolerations": node.TOLERATIONS,
            "nodeSelector": {"kubernetes.io/hostname": node.NODE_NAME},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "containers": [
                {
                    "name": "client",
                    "image": harness.RUNTIME_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", script],
                }
            ],
        },
    }


def get_pod(cluster: harness.Cluster, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = cluster.kubectl_json("get", "pod", name, "-n", namespace)
    return pod


def wait_ready(cluster: harness.Cluster, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod = get_pod(cluster, namespace, name)
        conditions = pod.get("status", {}).get("conditions", [])
        is_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return pod if is_ready else None

    return harness.wait_for(
        ready,
        timeout=120,
        what=f"pod {name} to be Ready",
        describe=lambda: json.dumps(get_pod(cluster, namespace, name).get("status")),
    )


def run_to_completion(cluster: harness.Cluster, namespace: str, name: str) -> str:
    """Wait for a client pod to end; return its log, failing with it unless it succeeded."""
    phase = harness.wait_for(
        lambda: (
            get_pod(cluster, namespace, name)["status"].get("phase") in ("Succeeded", "Failed")
            and get_pod(cluster, namespace, name)["status"]["phase"]
        ),
        timeout=120,
        what=f"pod {name} to finish",
        describe=lambda: json.dumps(get_pod(cluster, namespace, name).get("status")),
    )
    logs = cluster.kubectl("logs", name, "-n", namespace)
    assert phase == "Succeeded", f"pod {name} {phase}: {logs}"
    return logs


def test_the_real_node_is_ready_with_gpus_labels_and_taints(cluster: harness.Cluster) -> None:
    real = cluster.kubectl_json("get", "node", node.NODE_NAME)
    assert harness.node_is_schedulable(real)
    assert real["status"]["allocatable"]["nvidia.com/gpu"] == node.GPUS
    labels = real["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels[harness.NODE_POOL_LABEL] == node.POOL
    taints = [{k: t[k] for k in ("key", "value", "effect")} for t in real["spec"]["taints"]]
    assert node.REAL_NODE_TAINT in taints
    # A kubelet runs it, not kwok: kwok leaves nodes without its annotation alone.
    assert harness.KWOK_NODE_ANNOTATION not in real["metadata"].get("annotations", {})
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")


def test_a_gpu_pod_runs_and_serves_through_its_service_and_dns(
    cluster: harness.Cluster, namespace: str
) -> None:
    cluster.kubectl(
        "create", "configmap", "sim", "-n", namespace, "--from-literal=name=tiny-served"
    )
    cluster.apply([server_pod("sim", namespace)])
    cluster.kubectl("expose", "pod", "sim", "-n", namespace, "--port=80", "--target-port=http")
    pod = wait_ready(cluster, namespace, "sim")

    assert pod["spec"]["nodeName"] == node.NODE_NAME
    pod_ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node.POD_CIDR)
    # From this host, straight to the pod's address over the bridge.
    with urllib.request.urlopen(f"http://{pod_ip}:{SERVER_PORT}/v1/models", timeout=10) as reply:
        models = json.load(reply)
    assert [m["id"] for m in models["data"]] == ["/etc/served/name"]

    # From another pod, by the Service's DNS name, through kube-proxy's rules. kube-proxy
    # refuses connections to a Service until it has seen the pod among its endpoints, which
    # takes longer on a loaded node: the client retries a refused connection for a while.
    script = (
        "import json, time, urllib.error, urllib.request\n"
        f"url = 'http://sim.{namespace}.svc/v1/models'\n"
        "deadline = time.monotonic() + 60\n"
        "while True:\n"
        "    try:\n"
        "        reply = urllib.request.urlopen(url, timeout=10)\n"
        "        break\n"
        "    except urllib.error.URLError as exc:\n"
        "        if not isinstance(exc.reason, ConnectionRefusedError):\n"
        "            raise\n"
        "        if time.monotonic() > deadline:\n"
        "            raise\n"
        "        time.sleep(0.5)\n"
        "print(json.load(reply)['data'][0]['id'])\n"
    )
    cluster.apply([client_pod("client", namespace, script)])
    assert run_to_completion(cluster, namespace, "client").strip() == "/etc/served/name"


def test_pods_reach_the_api_server_with_their_service_account(
    cluster: harness.Cluster, namespace: str
) -> None:
    # As in-cluster clients (kopf, client-go) do: the Service's address from the environment,
    # checked against the API server's certificate; and its DNS name.
    script = (
        "import json, os, ssl, urllib.request\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "token = open(sa + '/token').read()\n"
        "context = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
        "address = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']\n"
        "for host in ('%s:%s' % address, 'kubernetes.default.svc'):\n"
        "    request = urllib.request.Request('https://' + host + '/version',\n"
        "        headers={'Authorization': 'Bearer ' + token})\n"
        "    print(json.load(urllib.request.urlopen(request, context=context))['gitVersion'])\n"
    )
    cluster.apply([client_pod("api", namespace, script)])
    version = harness.read_versions()["KUBERNETES_VERSION"]
    assert run_to_completion(cluster, namespace, "api").split() == [version, version]


def test_a_pod_without_the_real_node_toleration_stays_on_kwok(
    cluster: harness.Cluster, namespace: str
) -> None:
    cluster.kubectl("create", "configmap", "fake", "-n", namespace, "--from-literal=name=x")
    cluster.apply([server_pod("fake", namespace, tolerate_real_node=False)])
    scheduled = harness.wait_for(
        lambda: get_pod(cluster, namespace, "fake")["spec"].get("nodeName"),
        timeout=60,
        what="pod fake to be scheduled",
    )
    assert scheduled != node.NODE_NAME
    assert scheduled.startswith("h100-")


def test_down_leaves_nothing_and_up_brings_the_node_back(cluster: harness.Cluster) -> None:
    handle = harness.real_node(cluster)
    assert all(handle.running().values())
    handle.down()
    assert handle.leftovers() == []
    harness.ensure_real_node(cluster)
    assert all(handle.running().values())
