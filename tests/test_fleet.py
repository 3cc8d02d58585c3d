"""The local fleet's reading of rendered pods (e2e/fleet.py): the simulator simulates what the
vLLM container would serve, and the gate and the router run with their own arguments made
local, the router's backends rewritten to the local gates. Every command line goes through the
real parsers, and the rewritten router configuration through the router's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e import fleet
from specfleet import api, plan
from specfleet.api.inferencemodel import InferenceModel
from specfleet.api.routingpolicy import ApiKeys, RoutingPolicy
from specfleet.config import Config
from specfleet.render import inferencemodel as render
from specfleet.render import routingpolicy as render_policy
from specfleet_runtime.gate import cli as gate_cli
from specfleet_runtime.router import cli as router_cli
from specfleet_runtime.router import config as router_config
from specfleet_runtime.sim import cli as sim_cli
from tests.corpus import ROOT


def _pod(path: Path, limit: int | None = None) -> dict[str, Any]:
    (model,) = [m for m in api.load(path.read_text()) if isinstance(m, InferenceModel)]
    result = plan.plan(model.metadata.name, model.spec)
    (deployment,) = [
        m for m in render.manifests(model, result, Config(), limit) if m["kind"] == "Deployment"
    ]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_the_simulator_serves_what_the_vllm_container_would() -> None:
    args = sim_cli.parser().parse_args(
        fleet.sim_args(_pod(ROOT / "examples" / "llama-70b-speculative.yaml", limit=40))
    )
    assert args.architecture == "meta-llama/Llama-3.1-70B-Instruct"
    assert args.model == "llama-70b"
    assert args.gpu == "H100-80GB"
    assert args.tensor_parallel_size == 4
    assert args.quantization == "fp8"
    assert args.draft == "meta-llama/Llama-3.2-3B-Instruct"
    assert args.num_speculative_tokens == 5
    # Live mode: vLLM runs at batching.max, the gate admits the limit.
    assert args.max_num_seqs == 256


def test_a_model_without_a_draft_or_fp8_simulates_neither() -> None:
    pod = _pod(ROOT / "examples" / "llama-3b.yaml")
    (vllm,) = [c for c in pod["containers"] if c["name"] == "vllm"]
    args = sim_cli.parser().parse_args(fleet.sim_args(pod))
    assert args.draft is None
    assert args.quantization == ("fp8" if "fp8" in vllm["args"] else "none")


def test_the_gate_runs_its_own_arguments_locally(tmp_path: Path) -> None:
    pod = _pod(ROOT / "examples" / "llama-70b-speculative.yaml")
    args = gate_cli.parse_args(fleet.gate_args(pod, "http://127.0.0.1:9", tmp_path))
    assert args.upstream == "http://127.0.0.1:9"
    assert (args.host, args.port) == ("127.0.0.1", 0)
    assert args.limit_file == tmp_path / "limit"
    (gate,) = [c for c in pod["containers"] if c["name"] == "gate"]
    rendered = [*gate["command"], *gate.get("args", [])]
    assert args.max_queue == int(rendered[rendered.index("--max-queue") + 1])
    assert fleet.gate_config_name(pod) == "llama-70b-gate"


def test_a_pod_it_cannot_simulate_is_refused_with_the_reason() -> None:
    pod = _pod(ROOT / "examples" / "llama-70b-speculative.yaml")
    pod["nodeSelector"] = {}
    with pytest.raises(fleet.FleetError, match=r"nvidia\.com/gpu\.product"):
        fleet.sim_args(pod)
    (vllm,) = [c for c in pod["containers"] if c["name"] == "vllm"]
    vllm["args"][0] = "someone/unknown-model"
    with pytest.raises(fleet.FleetError, match="unknown-model"):
        fleet.sim_args(pod)


def test_the_template_hash_follows_the_template() -> None:
    pod = _pod(ROOT / "examples" / "llama-70b-speculative.yaml")
    again = json.loads(json.dumps(pod))
    assert fleet.template_hash(pod) == fleet.template_hash(again)
    (vllm,) = [c for c in again["containers"] if c["name"] == "vllm"]
    vllm["args"][vllm["args"].index("--max-num-seqs") + 1] = "32"
    assert fleet.template_hash(pod) != fleet.template_hash(again)


def test_a_config_map_is_projected_key_by_key(tmp_path: Path) -> None:
    fleet.project({"data": {"limit": "12"}}, tmp_path)
    assert (tmp_path / "limit").read_text() == "12"
    fleet.project({"data": {"limit": "6"}}, tmp_path)
    assert (tmp_path / "limit").read_text() == "6"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["limit"]


def _policy(**spec: Any) -> RoutingPolicy:
    (policy,) = [
        r
        for r in api.load((ROOT / "examples" / "routing-policy.yaml").read_text())
        if isinstance(r, RoutingPolicy)
    ]
    return policy.model_copy(
        update={
            "metadata": policy.metadata.model_copy(update={"namespace": "ml"}),
            "spec": policy.spec.model_copy(update=spec),
        }
    )


def _router_pod(**spec: Any) -> dict[str, Any]:
    deployment = render_policy.deployment(_policy(**spec), Config())
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_the_router_runs_its_own_arguments_on_its_projected_file(tmp_path: Path) -> None:
    pod = _router_pod()
    mounts = fleet.router_mounts(pod, tmp_path)
    args = router_cli.parse_args(fleet.router_args(pod, mounts))
    assert (args.host, args.port) == ("127.0.0.1", 0)
    assert args.config == tmp_path / "config" / render_policy.CONFIG_KEY


def test_a_router_of_several_workers_runs_locally_with_them(tmp_path: Path) -> None:
    pod = _router_pod(workers=3)
    mounts = fleet.router_mounts(pod, tmp_path)
    args = router_cli.parse_args(fleet.router_args(pod, mounts))
    assert args.workers == 3
    assert args.config == tmp_path / "config" / render_policy.CONFIG_KEY
    assert list(mounts) == [render_policy.CONFIG_DIR]  # the scratch /tmp stays this machine's


def test_backends_are_rewritten_to_the_local_gates_of_their_models(tmp_path: Path) -> None:
    policy = _policy()
    models = {
        "llama-3b": render_policy.ModelState(ready=True),
        "llama-8b": render_policy.ModelState(ready=True, served_model_name="l8"),
    }
    text = render_policy.config_text(policy, models)
    gates = {"llama-3b": "http://127.0.0.1:4001", "llama-70b": "http://127.0.0.1:4003"}
    mounts = {render_policy.API_KEYS_DIR: tmp_path / "keys"}
    local = router_config.parse_config(
        fleet.localize_router_config(text, "ml", gates, mounts, "http://127.0.0.1:9")
    )
    assert local.backends == {
        "llama-3b": router_config.Backend(url="http://127.0.0.1:4001", ready=True),
        # Ready in the cluster, but no local pod: an address that refuses, like a Service
        # without endpoints; the router falls back.
        "llama-8b": router_config.Backend(
            url="http://127.0.0.1:9", ready=True, served_model_name="l8"
        ),
        # Missing in the cluster: stays without a URL.
        "llama-70b": router_config.Backend(url=None, ready=False),
    }
    keyed = _policy(api_keys=ApiKeys(secret_name="k"))
    text = render_policy.config_text(keyed, models)
    local = router_config.parse_config(
        fleet.localize_router_config(text, "ml", gates, mounts, "http://127.0.0.1:9")
    )
    assert local.api_keys_file == str(tmp_path / "keys")


def test_a_secret_is_projected_decoded(tmp_path: Path) -> None:
    fleet.project({"kind": "Secret", "data": {"team-a": "c2stYQ=="}}, tmp_path)
    assert (tmp_path / "team-a").read_text() == "sk-a"
