"""What the operator applies for an InferenceModel: placement, GPUs, probes, the gate, and
the property the live batch limit rests on (changing it touches only the gate's ConfigMap)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import api, plan
from specfleet.api.inferencemodel import InferenceModel
from specfleet.config import Config
from specfleet.render import inferencemodel as render
from specfleet_runtime.gate import cli as gate_cli
from tests.corpus import ROOT

CONFIG = Config()
EXAMPLE_70B = ROOT / "examples" / "llama-70b-speculative.yaml"


def _model(**spec: Any) -> InferenceModel:
    spec.setdefault("model", {"name": "meta-llama/Llama-3.1-70B-Instruct"})
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": "InferenceModel",
        "metadata": {"name": "llama", "namespace": "serving"},
        "spec": spec,
    }
    model = api.parse(doc)
    assert isinstance(model, InferenceModel)
    return model


def _objects(
    model: InferenceModel, limit: int | None = None, owner: render.Owner | None = None
) -> dict[str, dict[str, Any]]:
    result = plan.plan(model.metadata.name, model.spec)
    return {m["kind"]: m for m in render.manifests(model, result, CONFIG, limit, owner)}


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == name]
    found: dict[str, Any] = container
    return found


def test_every_object_of_a_model() -> None:
    objects = render.manifests(_model(), plan.plan("llama", _model().spec), CONFIG)
    assert [o["kind"] for o in objects] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    for o in objects:
        assert o["metadata"]["namespace"] == "serving"
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "specfleet"
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == "llama"


def test_pods_ask_for_the_planned_gpus_on_the_gpu_product_nodes() -> None:
    model = _model(draft={"model": {"name": "meta-llama/Llama-3.2-3B-Instruct"}})
    deployment = _objects(model)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    gpus = str(plan.plan("llama", model.spec).tensor_parallel_size)
    resources = _container(deployment, "vllm")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == gpus
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nvidia.com/gpu" not in _container(deployment, "gate").get("resources", {}).get(
        "limits", {}
    )


def test_placement_can_be_overridden() -> None:
    model = _model(
        gpu={
            "product": "A100-80GB",
            "nodeSelector": {"pool": "a100-spot"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
        }
    )
    pod = _objects(model)["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100-spot"}
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists"}]


def test_a_rollout_needs_no_spare_gpus() -> None:
    strategy = _objects(_model())["Deployment"]["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_probes_give_a_big_model_time_to_load() -> None:
    server = _container(_objects(_model())["Deployment"], "vllm")
    startup = server["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "vllm"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert (
        server["livenessProbe"]["failureThreshold"] * server["livenessProbe"]["periodSeconds"] < 600
    )


def test_volumes_shared_memory_and_model_cache() -> None:
    deployment = _objects(_model())["Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment, "vllm")["volumeMounts"]}
    assert mounts["/dev/shm"] == "shm"
    assert mounts["/models"] == "model-cache"
    env = {e["name"]: e for e in _container(deployment, "vllm")["env"]}
    assert env["HF_HOME"]["value"] == "/models"


def test_the_token_comes_from_the_secret_and_never_inline() -> None:
    model = _model(
        model={
            "name": "meta-llama/Llama-3.1-8B-Instruct",
            "credentials": {"name": "hf", "key": "token"},
        }
    )
    env = {e["name"]: e for e in _container(_objects(model)["Deployment"], "vllm")["env"]}
    secret = {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": secret}


def test_containers_run_without_privileges() -> None:
    pod = _objects(_model())["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_service_reaches_vllm_only_through_the_gate() -> None:
    objects = _objects(_model())
    service, deployment = objects["Service"], objects["Deployment"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(service["spec"]["selector"].items()) <= set(
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    gate_ports = {p["name"]: p["containerPort"] for p in _container(deployment, "gate")["ports"]}
    assert port["targetPort"] in gate_ports
    gate = _container(deployment, "gate")["command"]
    assert gate[gate.index("--upstream") + 1] == "http://127.0.0.1:8000"


def test_the_gate_reads_the_limit_from_its_configmap() -> None:
    objects = _objects(_model(batching={"max": 256, "initial": 64}))
    config_map, deployment = objects["ConfigMap"], objects["Deployment"]
    assert config_map["data"] == {"limit": "64"}
    gate = _container(deployment, "gate")
    limit_file = gate["command"][gate["command"].index("--limit-file") + 1]
    (mount,) = gate["volumeMounts"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert limit_file == f"{mount['mountPath']}/limit"


def test_live_mode_changes_only_the_configmap_when_the_limit_moves() -> None:
    model = _model(batching={"max": 256, "mode": "Live"})
    before, after = _objects(model, limit=64), _objects(model, limit=128)
    assert before["Deployment"] == after["Deployment"]
    assert before["ConfigMap"]["data"] != after["ConfigMap"]["data"]
    args = _container(after["Deployment"], "vllm")["args"]
    assert args[args.index("--max-num-seqs") + 1] == "256"


def test_restart_mode_gives_vllm_the_limit_itself() -> None:
    model = _model(batching={"max": 256, "mode": "Restart"})
    before, after = _objects(model, limit=64), _objects(model, limit=128)
    args = _container(after["Deployment"], "vllm")["args"]
    assert args[args.index("--max-num-seqs") + 1] == "128"
    assert before["Deployment"]["spec"]["template"] != after["Deployment"]["spec"]["template"]


def test_extra_args_come_last_and_env_is_added() -> None:
    model = _model(
        extraArgs=["--enable-chunked-prefill"],
        env=[{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
    )
    server = _container(_objects(model)["Deployment"], "vllm")
    assert server["args"][-1] == "--enable-chunked-prefill"
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"} in server["env"]


def test_user_resources_are_kept_beside_the_gpus() -> None:
    model = _model(resources={"requests": {"cpu": 16, "memory": "128Gi"}})
    resources = _container(_objects(model)["Deployment"], "vllm")["resources"]
    assert resources["requests"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"}


def test_owner_references_make_deletion_collect_the_children() -> None:
    owner = render.Owner("llama", "0b6f5c5e-1111-2222-3333-444455556666")
    for manifest in _objects(_model(), owner=owner).values():
        (reference,) = manifest["metadata"]["ownerReferences"]
        assert reference["uid"] == owner.uid and reference["controller"] is True
        assert reference["kind"] == "InferenceModel"
    assert all("ownerReferences" not in m["metadata"] for m in _objects(_model()).values())


def test_rendering_is_deterministic() -> None:
    assert _objects(_model()) == _objects(_model())


def test_the_budget_lets_one_replica_go_at_a_time() -> None:
    objects = _objects(_model())
    budget = objects["PodDisruptionBudget"]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"] == objects["Deployment"]["spec"]["selector"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "specfleet"
    return subprocess.run([str(script), *args], capture_output=True, text=True, check=False)


def test_cli_renders_a_manifest_file_without_a_cluster() -> None:
    result = _cli("render", str(EXAMPLE_70B))
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
    assert kinds == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    # Plain YAML a person can read and edit: no anchors and aliases for repeated parts.
    assert not re.search(r"[&*]id\d+", result.stdout), result.stdout


def test_cli_render_refuses_a_spec_that_does_not_fit(tmp_path: Path) -> None:
    manifest = tmp_path / "big.yaml"
    manifest.write_text(
        "apiVersion: specfleet.dev/v1alpha1\nkind: InferenceModel\nmetadata: {name: big}\n"
        "spec:\n  model: {name: meta-llama/Llama-3.1-405B}\n  gpu: {count: 1}\n"
    )
    result = _cli("render", str(manifest))
    assert result.returncode == 1
    assert "InferenceModel big: needs" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("variable", ["SPECFLEET_VLLM_IMAGE", "SPECFLEET_RUNTIME_IMAGE"])
def test_images_come_from_the_operator_settings(variable: str) -> None:
    config = Config.from_env({variable: "mirror.internal/x:1"})
    deployment = render.deployment(_model(), plan.plan("llama", _model().spec), config, 64)
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert "mirror.internal/x:1" in images


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(ValueError, match="SPECFLEET_GATE_MAX_QUEUE"):
        Config.from_env({"SPECFLEET_GATE_MAX_QUEUE": "many"})


def test_the_rendered_gate_command_is_one_the_gate_accepts() -> None:
    gate = _container(_objects(_model())["Deployment"], "gate")
    program, *argv = gate["command"]
    assert program == "specfleet-gate"
    args = gate_cli.parse_args(argv)
    assert args.port == render.GATE_PORT
    assert str(args.limit_file) == f"{render.GATE_CONFIG_DIR}/{render.LIMIT_KEY}"
    assert args.upstream == "http://127.0.0.1:8000"
    assert args.max_queue == CONFIG.gate_max_queue
