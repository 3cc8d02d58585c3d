"""What the operator applies for a RoutingPolicy: a configuration file the router accepts with
each model resolved to its Service, a router Deployment that never rolls when only readiness
changes, the API-key Secret mounted as a directory, and the Service clients use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from specfleet import api
from specfleet.api import routerconfig
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.routingpolicy import RoutingPolicy
from specfleet.config import Config
from specfleet.render import inferencemodel as render_model
from specfleet.render import routingpolicy as render
from specfleet.render.routingpolicy import ModelState
from specfleet_runtime.router import app as routing_app
from specfleet_runtime.router import cli as router_cli
from specfleet_runtime.router import routing
from tests.corpus import ROOT

CONFIG = Config()
EXAMPLE = ROOT / "examples" / "routing-policy.yaml"
READY = {
    "llama-3b": ModelState(ready=True),
    "llama-8b": ModelState(ready=True, served_model_name="llama-3.1-8b"),
    "llama-70b": ModelState(ready=True),
}


def _policy(namespace: str | None = "ml", **spec: Any) -> RoutingPolicy:
    (example,) = yaml.safe_load_all(EXAMPLE.read_text())
    example["spec"].update(spec)
    if namespace is not None:
        example["metadata"]["namespace"] = namespace
    policy = api.parse(example)
    assert isinstance(policy, RoutingPolicy)
    return policy


def _objects(
    policy: RoutingPolicy, models: dict[str, ModelState] | None
) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render.manifests(policy, CONFIG, models)}


def _file(policy: RoutingPolicy, models: dict[str, ModelState] | None) -> routerconfig.RouterConfig:
    """The ConfigMap's file, read as the router reads it."""
    data = _objects(policy, models)["ConfigMap"]["data"]
    return routerconfig.parse_config(data[render.CONFIG_KEY])


def test_every_backend_is_its_models_service_as_the_router_reads_it() -> None:
    config = _file(_policy(), READY)
    model = api.parse(
        {
            "apiVersion": api.API_VERSION,
            "kind": "InferenceModel",
            "metadata": {"name": "llama-8b", "namespace": "ml"},
            "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}},
        }
    )
    assert isinstance(model, InferenceModel)
    service = render_model.service(model)
    port = service["spec"]["ports"][0]
    assert port["targetPort"] == "http"  # the gate's port
    url = f"http://{service['metadata']['name']}.ml.svc:{port['port']}"
    assert config.backends["llama-8b"] == routerconfig.Backend(
        url=url, ready=True, served_model_name="llama-3.1-8b"
    )
    assert set(config.backends) == {"llama-3b", "llama-8b", "llama-70b"}
    assert config.policy == "assistant"
    assert config.tiers == _policy().spec.tiers and config.overrides == _policy().spec.overrides


def test_a_missing_or_unready_model_is_written_as_not_ready_and_the_router_skips_it() -> None:
    models = {"llama-3b": ModelState(ready=True), "llama-70b": ModelState(ready=False)}
    config = _file(_policy(), models)
    assert config.backends["llama-8b"] == routerconfig.Backend(url=None, ready=False)
    assert config.backends["llama-70b"].ready is False
    assert config.backends["llama-70b"].url == "http://llama-70b.ml.svc:80"
    assert routing.Table(config).ready_tiers == ["simple"]
    messages = {(b.tier, b.message) for b in render.backends(_policy(), models) if not b.ready}
    assert messages == {
        ("medium", "tier medium: InferenceModel llama-8b not found in namespace ml"),
        ("complex", "tier complex: InferenceModel llama-70b is not Ready"),
        ("overrides[0]", "overrides[0]: InferenceModel llama-8b not found in namespace ml"),
    }


def test_readiness_changes_only_the_configmap() -> None:
    ready, down = _objects(_policy(), READY), _objects(_policy(), {})
    assert ready["ConfigMap"] != down["ConfigMap"]
    assert ready["Deployment"] == down["Deployment"]
    assert ready["Service"] == down["Service"]


def test_the_rendered_router_command_reads_the_mounted_file() -> None:
    deployment = _objects(_policy(), READY)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    program, *argv = router["command"]
    assert program == "specfleet-router"
    args = router_cli.parse_args(argv)
    assert args.port == render.ROUTER_PORT and args.host == "0.0.0.0"
    (mount,) = [m for m in router["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert args.config == Path(mount["mountPath"]) / render.CONFIG_KEY
    assert (
        volume["configMap"]["name"] == _objects(_policy(), READY)["ConfigMap"]["metadata"]["name"]
    )
    assert router["ports"] == [{"name": "http", "containerPort": render.ROUTER_PORT}]
    assert router["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert deployment["spec"]["replicas"] == 2
    assert router["image"] == CONFIG.runtime_image


def test_workers_run_in_each_router_with_room_for_their_shared_metrics() -> None:
    def router(policy: RoutingPolicy) -> tuple[dict[str, Any], dict[str, Any]]:
        pod = _objects(policy, READY)["Deployment"]["spec"]["template"]["spec"]
        return pod["containers"][0], pod

    one, one_pod = router(_policy())
    assert router_cli.parse_args(one["command"][1:]).workers == 1
    assert "tmp" not in {v["name"] for v in one_pod["volumes"]}

    four, four_pod = router(_policy(workers=4))
    assert router_cli.parse_args(four["command"][1:]).workers == 4
    # The workers write their metric files under the temp directory on a read-only root.
    (mount,) = [m for m in four["volumeMounts"] if m["name"] == "tmp"]
    (volume,) = [v for v in four_pod["volumes"] if v["name"] == "tmp"]
    assert mount["mountPath"] == "/tmp" and "emptyDir" in volume
    # Written as the API server writes quantities back, so a resync finds them equal.
    assert four["resources"]["requests"] == {"cpu": "2", "memory": "512Mi"}
    assert four["resources"]["limits"]["memory"] == "2Gi"
    assert one["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}
    three = router(_policy(workers=3))[0]["resources"]
    assert three == {
        "requests": {"cpu": "1500m", "memory": "384Mi"},
        "limits": {"memory": "1536Mi"},
    }


def test_the_router_runs_without_privileges_or_api_access() -> None:
    pod = _objects(_policy(), READY)["Deployment"]["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert router["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def test_api_keys_are_a_mounted_secret_directory_the_file_points_at() -> None:
    policy = _policy(apiKeys={"secretName": "assistant-keys"})
    objects = _objects(policy, READY)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"] == {"secretName": "assistant-keys"}
    assert "subPath" not in mount  # a subPath mount would never see a rotated key
    assert _file(policy, READY).api_keys_file == mount["mountPath"]
    # No key material anywhere in what the operator renders.
    assert "assistant-keys" not in objects["ConfigMap"]["data"][render.CONFIG_KEY]
    without = _objects(_policy(), READY)
    assert [v["name"] for v in without["Deployment"]["spec"]["template"]["spec"]["volumes"]] == [
        "config"
    ]
    assert _file(_policy(), READY).api_keys_file is None


def test_the_service_takes_the_specs_port_and_type_to_the_router() -> None:
    policy = _policy(service={"port": 8000, "type": "LoadBalancer"})
    service = _objects(policy, READY)["Service"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == render.selector("assistant")
    assert render.endpoint(policy) == "http://assistant.ml.svc:8000"


def test_router_pods_go_where_the_placement_says_and_anywhere_without_one() -> None:
    cpu_pool = {"specfleet.dev/node-pool": "cpu"}
    toleration = {
        "key": "dedicated",
        "operator": "Equal",
        "value": "routers",
        "effect": "NoSchedule",
    }
    placed = _policy(placement={"nodeSelector": cpu_pool, "tolerations": [toleration]})
    pod = _objects(placed, READY)["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == cpu_pool
    assert pod["tolerations"] == [toleration]
    anywhere = _objects(_policy(), READY)["Deployment"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in anywhere and "tolerations" not in anywhere


def test_objects_carry_the_recommended_labels_and_an_owner() -> None:
    owner = render_model.Owner("assistant", "u-9", "RoutingPolicy")
    for manifest in render.manifests(_policy(), CONFIG, READY, owner):
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "router"
        assert labels["app.kubernetes.io/managed-by"] == "specfleet"
        assert labels["specfleet.dev/routingpolicy"] == "assistant"
        (reference,) = manifest["metadata"]["ownerReferences"]
        assert (reference["kind"], reference["uid"], reference["controller"]) == (
            "RoutingPolicy",
            "u-9",
            True,
        )
    pod_labels = _objects(_policy(), READY)["Deployment"]["spec"]["template"]["metadata"]
    # The chart's PodMonitor and NetworkPolicy select routers by these two.
    assert pod_labels["labels"]["app.kubernetes.io/component"] == "router"


def test_offline_every_backend_is_unknown_and_the_file_says_why() -> None:
    policy = _policy(namespace=None)
    config = _file(policy, None)
    assert {name: (b.url, b.ready) for name, b in config.backends.items()} == {
        "llama-3b": ("http://llama-3b:80", False),
        "llama-8b": ("http://llama-8b:80", False),
        "llama-70b": ("http://llama-70b:80", False),
    }
    text = _objects(policy, None)["ConfigMap"]["data"][render.CONFIG_KEY]
    assert text.startswith("# Rendered offline")


def test_cli_renders_a_routing_policy_beside_models() -> None:
    script = Path(sys.executable).parent / "specfleet"
    result = subprocess.run(
        [str(script), "render", str(EXAMPLE), str(ROOT / "examples" / "llama-8b.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert kinds[:3] == [
        ("ConfigMap", "assistant-router"),
        ("Deployment", "assistant"),
        ("Service", "assistant"),
    ]
    assert ("Deployment", "llama-8b") in kinds
    # The file is a readable block, and one the router accepts.
    assert "config.yaml: |" in result.stdout
    routerconfig.parse_config(documents[0]["data"][render.CONFIG_KEY])


def test_the_first_byte_timeout_reaches_the_router_with_a_default() -> None:
    assert _file(_policy(), READY).timeouts.first_byte_seconds == 120
    custom = _file(_policy(timeouts={"firstByteSeconds": 30}), READY)
    assert custom.timeouts.first_byte_seconds == 30
    # The gate behind it is asked to queue a second less, so its busy answer comes first.
    assert routing_app.queue_timeout(30) == 29
